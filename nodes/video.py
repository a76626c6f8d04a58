"""Sa2VA Video Segmentation logic: the frames of one clip -> one mask track per object, merged masks, overlay, text.

Plain functions (no ComfyUI import); the V3 node class in nodes/v3.py only forwards to :func:`segment_video`.
The IMAGE batch is one clip; frames are converted to uint8 one at a time as the library asks for them, so the
node holds no second copy of the clip. Threshold semantics as the Segmentation node: with ``apply_mask_threshold``
a pixel is 1 when its probability is at least ``mask_threshold`` and 0 otherwise; without it masks stay soft.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..sa2va import catalog
from ..sa2va.errors import Cancelled, InputError
from ..sa2va.masks import draw_labels, overlay, threshold
from ..sa2va.video import DEFAULT_KEY_FRAMES, KEY_FRAME_SPACINGS, VIDEO_MODES
from . import comfy
from .loader import Sa2VAHandle
from .refine import sanitize
from .segmentation import (DEFAULT_MASK_THRESHOLD, DEFAULT_MAX_NEW_TOKENS, _TokenProgress, _to_uint8,
                           as_segmentation_request, release_slot, slot_handle)

logger = logging.getLogger(__name__)

DEFAULT_VIDEO_PROMPT = "Please segment the main subject."


@dataclass
class VideoSegmentationResult:
    """masks ``[N*T, H, W]`` (object-major: object 0's T frames, then object 1's; T empty masks when N = 0);
    merged ``[T, H, W]``; overlay ``[T, H, W, 3]``; all float32 0..1. phrases: one line per object."""

    masks: torch.Tensor
    merged: torch.Tensor
    overlay: torch.Tensor
    text: str
    phrases: str
    count: int


class ClipFrames:
    """The frames of a ComfyUI IMAGE ``[T, H, W, C]`` as uint8 ``[H, W, 3]`` arrays, each made when indexed."""

    def __init__(self, image: torch.Tensor) -> None:
        self.image = image

    def __len__(self) -> int:
        return int(self.image.shape[0])

    def __getitem__(self, index: int):
        return _to_uint8(sanitize(self.image[index:index + 1])[0])


def phrase_lines(phrases: list[str], num_frames: int) -> str:
    """One line per object saying which masks of the flattened output are its track."""
    if not phrases:
        return "(none)"
    return "\n".join(f"{k}: {p or '(no phrase)'} (masks {k * num_frames}-{(k + 1) * num_frames - 1})"
                     for k, p in enumerate(phrases))


def segment_video(frames: torch.Tensor, prompt: str, model: Sa2VAHandle | None = None,
                  model_name: str = catalog.DEFAULT_MODEL, key_frames: int = DEFAULT_KEY_FRAMES,
                  key_frame_spacing: str = "first", mode: str = "memory", offload_frames: bool = False,
                  offload_state: bool = False, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                  mask_threshold: float = DEFAULT_MASK_THRESHOLD, apply_mask_threshold: bool = True,
                  clean_vram_after: bool = False) -> VideoSegmentationResult:
    """Segment the objects ``prompt`` asks for through the clip ``frames`` (a ComfyUI IMAGE ``[T, H, W, 3]``)."""
    if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[-1] not in (1, 3, 4):
        raise InputError(f"Expected a ComfyUI IMAGE batch [T, H, W, 3] holding the frames of one clip, got "
                         f"{getattr(frames, 'shape', type(frames))}.")
    if not 0.0 <= mask_threshold <= 1.0:
        raise InputError(f"mask_threshold must be between 0 and 1, got {mask_threshold}.")
    if key_frame_spacing not in KEY_FRAME_SPACINGS or mode not in VIDEO_MODES:
        raise InputError(f"key_frame_spacing must be one of {', '.join(KEY_FRAME_SPACINGS)} and mode one of "
                         f"{', '.join(VIDEO_MODES)}; got {key_frame_spacing!r} and {mode!r}.")
    request = as_segmentation_request(prompt or "")
    if not request.replace("<image>", "").strip():
        raise InputError("The segmentation prompt is empty: describe what to segment, e.g. 'the red car'.")
    handle = model if model is not None else slot_handle(model_name)
    total = int(frames.shape[0])
    bar = comfy.Progress(max_new_tokens + total, "Sa2VA video")
    try:
        comfy.throw_if_interrupted()
        handle.prepare()
        try:
            prediction = handle.model.predict_video(
                ClipFrames(frames), request, max_new_tokens=max_new_tokens, key_frames=key_frames,
                key_frame_spacing=key_frame_spacing, mode=mode, offload_frames=offload_frames,
                offload_state=offload_state, stopping_criteria=[_TokenProgress(bar, 0)],
                progress=lambda done, _: bar.set(max_new_tokens + done), cancelled=comfy.interrupted)
        except Cancelled:
            comfy.throw_if_interrupted()
            raise
        comfy.throw_if_interrupted()
    finally:
        bar.close()
        if clean_vram_after:
            if model is None:
                release_slot()
            else:
                handle.release_vram()
    probabilities = prediction.masks                                    # [N, T, H, W]
    chosen = threshold(probabilities, mask_threshold) if apply_mask_threshold else probabilities
    count, height, width = chosen.shape[0], chosen.shape[2], chosen.shape[3]
    overlays = []
    for t in range(total):
        rgb = sanitize(frames[t:t + 1])[0]
        overlays.append(draw_labels(overlay(rgb, chosen[:, t], threshold=0.5), chosen[:, t], prediction.phrases))
    merged = chosen.amax(0) if count else torch.zeros(total, height, width)
    flat = chosen.reshape(count * total, height, width) if count else torch.zeros(total, height, width)
    out = comfy.output_device()
    return VideoSegmentationResult(masks=flat.to(out), merged=merged.to(out), overlay=torch.stack(overlays).to(out),
                                   text=prediction.text, phrases=phrase_lines(prediction.phrases, total),
                                   count=count)
