"""Sa2VA Segmentation logic: every image of a batch -> masks, merged masks, previews, text, phrases.

Plain functions (no ComfyUI import); the V3 node class in nodes/v3.py only forwards to :func:`segment`.
The probabilities go through the refinement stack of :mod:`sa2va.refine` (black/white points, detail method,
erode/dilate, threshold). Threshold semantics: with ``apply_mask_threshold`` a pixel is 1 when its refined value
is at least ``mask_threshold`` and 0 otherwise; without it the masks stay soft (0..1).
"""
from __future__ import annotations

import dataclasses
import gc
import logging
from dataclasses import dataclass

import torch

from ..sa2va import catalog
from ..sa2va.errors import InputError
from ..sa2va.masks import draw_labels, overlay
from ..sa2va.refine import RefineSettings
from . import comfy
from .loader import Sa2VAHandle, load_handle
from .refine import refine_batch, release_matter, sanitize

logger = logging.getLogger(__name__)

DEFAULT_PROMPT = "Please segment the main subject."
# The seed README's defaults
DEFAULT_MASK_THRESHOLD = 0.30
DEFAULT_MAX_NEW_TOKENS = 512
_INSTRUCTION_WORDS = {"please", "segment", "what", "where", "which", "who", "why", "how", "describe", "is", "are",
                      "can", "could", "would", "find", "show", "highlight", "mask", "select", "identify", "tell",
                      "give", "list", "count", "locate", "outline", "detect", "explain", "answer", "do", "does"}
_ARTICLES = {"the", "a", "an", "this", "that", "these", "those", "all", "every", "each", "my", "his", "her", "their"}

#: the single module-level slot for the Segmentation node used without a loader (DESIGN.md)
_SLOT: dict[str, object] = {}


@dataclass
class SegmentationResult:
    """masks [sum N, H, W]; merged [B, H, W]; mask_images [sum N, H, W, 3]; overlay [B, H, W, 3]; float32 0..1."""

    masks: torch.Tensor
    merged: torch.Tensor
    mask_images: torch.Tensor
    overlay: torch.Tensor
    text: str
    phrases: str


def as_segmentation_request(prompt: str) -> str:
    """Turn a bare noun phrase ("hair", "red car") into "Please segment the hair."; leave requests alone."""
    text = prompt.replace("<image>", "").strip()
    words = text.split()
    if not words or len(words) > 4 or text.endswith(("?", ".", "!")) or words[0].lower() in _INSTRUCTION_WORDS:
        return prompt
    article = "" if words[0].lower() in _ARTICLES else "the "
    return f"Please segment {article}{text}."


class _TokenProgress:
    """A stopping criterion that reports each generated token to the progress bar and stops on Cancel."""

    def __init__(self, bar: comfy.Progress, offset: int) -> None:
        self.bar, self.offset, self.count = bar, offset, 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        self.count += 1
        self.bar.set(self.offset + self.count)
        return torch.full((input_ids.shape[0],), comfy.interrupted(), dtype=torch.bool, device=input_ids.device)


def _to_uint8(image: torch.Tensor):
    """A sanitised ``[H, W, 3]`` float image -> uint8 numpy."""
    return (image * 255).round().to(torch.uint8).numpy()


def slot_handle(model_name: str) -> Sa2VAHandle:
    """The Segmentation node's own model when no loader is connected (one slot, replaced on a new choice)."""
    if _SLOT.get("name") != model_name:
        release_slot()
        _SLOT["handle"] = load_handle(model_name)
        _SLOT["name"] = model_name
    return _SLOT["handle"]  # type: ignore[return-value]


def release_slot() -> None:
    """Drop the slot's model and give its memory back."""
    _SLOT.clear()
    gc.collect()
    comfy.soft_empty_cache()


def segment(image: torch.Tensor, segmentation_prompt: str, model: Sa2VAHandle | None = None,
            model_name: str = catalog.DEFAULT_MODEL, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
            mask_threshold: float = DEFAULT_MASK_THRESHOLD, apply_mask_threshold: bool = True,
            clean_vram_after: bool = False, refinement: RefineSettings | None = None) -> SegmentationResult:
    """Segment every image of a ComfyUI IMAGE batch ``[B, H, W, 3]`` with one prompt.

    ``refinement`` holds the refinement controls (defaults: the seed README's); the threshold arguments override
    its threshold fields."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
        raise InputError(f"Expected a ComfyUI IMAGE [B, H, W, 3], got {getattr(image, 'shape', type(image))}.")
    settings = dataclasses.replace(refinement or RefineSettings(), mask_threshold=mask_threshold,
                                   apply_mask_threshold=apply_mask_threshold)
    settings.validate()
    prompt = as_segmentation_request(segmentation_prompt or "")
    if not prompt.replace("<image>", "").strip():
        raise InputError("The segmentation prompt is empty: describe what to segment, e.g. 'the red car'.")
    handle = model if model is not None else slot_handle(model_name)
    batch, height, width = image.shape[0], image.shape[1], image.shape[2]
    rgb = sanitize(image)
    bar = comfy.Progress(batch * max_new_tokens, "Sa2VA")
    predictions = []
    try:
        for i in range(batch):
            comfy.throw_if_interrupted()
            handle.prepare()
            predictions.append(handle.model.predict(_to_uint8(rgb[i]), prompt, max_new_tokens=max_new_tokens,
                                                    stopping_criteria=[_TokenProgress(bar, i * max_new_tokens)]))
            comfy.throw_if_interrupted()
            bar.set((i + 1) * max_new_tokens)
        refined = refine_batch(rgb, [p.masks for p in predictions], settings)
    finally:
        bar.close()
        if clean_vram_after:
            release_matter()
            if model is None:
                release_slot()
            else:
                handle.release_vram()
    masks, merged, overlays, texts, phrases = [], [], [], [], []
    for i, (pred, chosen) in enumerate(zip(predictions, refined)):
        overlays.append(draw_labels(overlay(rgb[i], chosen, threshold=0.5), chosen, pred.phrases))
        if chosen.shape[0] == 0:
            chosen = torch.zeros(1, height, width)
            phrases.append(f"{i}: (none)")
        else:
            phrases.extend(f"{i}: {p}" for p in pred.phrases)
        masks.append(chosen)
        merged.append(chosen.amax(0))
        texts.append(pred.text)
    out = comfy.output_device()
    all_masks = torch.cat(masks).to(out)
    return SegmentationResult(masks=all_masks, merged=torch.stack(merged).to(out),
                              mask_images=all_masks.unsqueeze(-1).expand(-1, -1, -1, 3).contiguous(),
                              overlay=torch.stack(overlays).to(out), text="\n\n".join(texts),
                              phrases="\n".join(phrases))
