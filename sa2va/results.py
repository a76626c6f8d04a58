"""What a prediction returns: :class:`Prediction`, the answer and the masks of one request on one image."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .answer import Answer
from .outputs.objects import ObjectMasks, object_score


@dataclass
class Prediction:
    """Result of :meth:`Sa2VAModel.predict` for one image.

    text: the answer without special tokens and [SEG] markers; raw_text: the decoded answer with special tokens
    (as the reference returns it); token_ids: generated ids, 1-D LongTensor; masks: float32 ``[N, H, W]``
    sigmoid probabilities at the input resolution, one per [SEG] that was fed back into the model;
    phrases: N labels naming what each mask shows (:func:`sa2va.outputs.labels.object_labels`); iou_scores, object_scores:
    float32 ``[N]`` probabilities from the SAM2 decoder (:mod:`sa2va.outputs.objects`); ``scores`` is their product."""

    text: str
    raw_text: str
    token_ids: torch.Tensor
    masks: torch.Tensor
    phrases: list[str] = field(default_factory=list)
    iou_scores: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    object_scores: torch.Tensor = field(default_factory=lambda: torch.zeros(0))

    @property
    def scores(self) -> torch.Tensor:
        """``[N]`` the score of each object: predicted IoU times object probability (near 0 for an absent one)."""
        return object_score(self.iou_scores, self.object_scores)

    @classmethod
    def of(cls, answer: Answer, masks: torch.Tensor | ObjectMasks) -> "Prediction":
        """The prediction made of an answer and the masks (with their scores, given an
        :class:`~sa2va.outputs.objects.ObjectMasks`) of its [SEG] states."""
        if isinstance(masks, torch.Tensor):  # masks without scores: the scores stay empty
            masks = ObjectMasks(masks, torch.zeros(0), torch.zeros(0))
        return cls(text=answer.text, raw_text=answer.raw_text, token_ids=answer.token_ids, masks=masks.masks,
                   phrases=answer.phrases, iou_scores=masks.iou_scores, object_scores=masks.object_scores)
