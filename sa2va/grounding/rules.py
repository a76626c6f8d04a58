"""What differs between the grounding encoders of the Sa2VA releases, as data the shared engine reads.

Every release prompts a SAM-family tracker with its [SEG] embeddings through the same engine (:mod:`sa2va.grounding.sam2`'s
:class:`~sa2va.grounding.sam2.GroundingHead`, :mod:`sa2va.grounding.memory`, :mod:`sa2va.video`). The SAM2 releases (Hiera-L v1.0
at 1024 px) and Sa2VA-Qwen3-VL-4B-SAM3 (SAM 3's tracker at 1008 px) differ in a few rules, listed here; the rest
(image size, memory sizes, whether object pointers carry a temporal encoding, whether an occlusion embedding is
added to memories, how many conditioning frames a tracked frame attends to) is read from the transformers config
of the loaded model (``Sam2VideoConfig`` / ``Sam3TrackerVideoConfig``).
"""
from __future__ import annotations

from dataclasses import dataclass

#: the mask logit SAM writes where its object-score head says "no object" (``NO_OBJ_SCORE`` upstream)
NO_OBJECT_SCORE = -1024.0


@dataclass(frozen=True)
class GroundingRules:
    """The release's decoding rules for its grounding encoder.

    name: ``"sam2"`` or ``"sam3"``; clamp_absent: masks whose object-score logit is <= 0 become
    :data:`NO_OBJECT_SCORE` everywhere (an empty mask), as SAM does natively (Sa2VA's SAM2 releases turned it off,
    the SAM3 release keeps it); binarize_conditioning_memory: a conditioning frame's memory is encoded from its
    mask thresholded at 0 (``logits > 0``) instead of from ``sigmoid(logits)``."""

    name: str
    clamp_absent: bool
    binarize_conditioning_memory: bool


#: Sa2VA's SAM2 v1.0 releases: no clamp, conditioning memory from sigmoid(logits)
SAM2_RULES = GroundingRules("sam2", clamp_absent=False, binarize_conditioning_memory=False)
#: Sa2VA-Qwen3-VL-4B-SAM3: SAM 3's own tracker settings
SAM3_RULES = GroundingRules("sam3", clamp_absent=True, binarize_conditioning_memory=True)
