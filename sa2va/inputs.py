"""What the engine accepts: images, frame sequences and requests, checked and converted in one place.

Every entry point (``segment``, ``predict``, ``predict_video``, the ``answer`` seam, the nodes) validates with
these functions, so a bad input gives the same one-line :class:`~sa2va.errors.InputError` wherever it comes in.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from .errors import InputError

#: longest prompt accepted, in characters (about 4k tokens): segmentation requests are short, and a runaway
#: prompt (e.g. a whole document wired into the prompt input) would only burn memory and time
MAX_PROMPT_CHARS = 16384


def to_pil(image: Image.Image | np.ndarray) -> Image.Image:
    """Accept a PIL image or an HxW / HxWxC uint8 array; return an RGB PIL image (alpha composited on white)."""
    if isinstance(image, Image.Image):
        if image.mode in ("RGBA", "LA", "P"):
            image = image.convert("RGBA")
            background = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, image)
        return image.convert("RGB")
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise InputError(f"Image must be HxW or HxWxC with 1, 3 or 4 channels, got shape {list(array.shape)}.")
    if array.dtype != np.uint8:
        raise InputError(f"Image arrays must be uint8 (0..255), got {array.dtype}; convert with "
                         f"(x * 255).round().clip(0, 255).astype(np.uint8).")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise InputError(f"Image is empty (shape {list(array.shape)}).")
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    if array.shape[2] == 4:
        return to_pil(Image.fromarray(array, "RGBA"))
    return Image.fromarray(np.ascontiguousarray(array), "RGB")


def check_prompt(prompt: str) -> None:
    """Raise :class:`InputError` for an empty (``<image>`` aside) or over-long prompt."""
    if not isinstance(prompt, str) or not prompt.replace("<image>", "").strip():
        raise InputError("The prompt is empty: describe what to segment, e.g. 'Please segment the person.'")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InputError(f"The prompt is too long ({len(prompt)} characters, at most {MAX_PROMPT_CHARS}); Sa2VA "
                         f"needs a short request such as 'Please segment the red car.'")


def check_request(prompt: str, max_new_tokens: int) -> None:
    """:func:`check_prompt`, and raise :class:`InputError` for a useless token budget."""
    check_prompt(prompt)
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be at least 1, got {max_new_tokens}.")


class FrameSource:
    """Random access to the frames of a clip, each converted to an RGB PIL image only when asked for.

    frames: a ``[T, H, W, 3]`` uint8 numpy array or torch tensor, a list of PIL images / HxWx3 uint8 arrays, or any
    object with ``__len__`` and ``__getitem__`` returning one such image (e.g. a lazy video reader)."""

    def __init__(self, frames: Sequence | np.ndarray | torch.Tensor) -> None:
        if isinstance(frames, (Image.Image, str, bytes)) or not hasattr(frames, "__len__") or \
                not hasattr(frames, "__getitem__") or \
                (isinstance(frames, (np.ndarray, torch.Tensor)) and frames.ndim != 4):
            raise InputError("predict_video takes a sequence of frames (a list of images or a [T, H, W, 3] uint8 "
                             "array); use predict for one image.")
        self.frames = frames

    def __len__(self) -> int:
        return len(self.frames)

    def pil(self, index: int) -> Image.Image:
        """Frame ``index`` as an RGB PIL image."""
        frame = self.frames[index]
        if isinstance(frame, torch.Tensor):
            frame = frame.detach().cpu().numpy()
        return to_pil(frame)
