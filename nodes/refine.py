"""Refinement for the nodes: the ViTMatte model's lifetime and the Sa2VA Refine Mask logic.

The ViTMatte model is loaded on the first VITMatte use into one module-level slot (like the Segmentation node's own
model slot), freed by ``clean_vram_after``; it is small (~100 MB) and shared by every node that needs it.
"""
from __future__ import annotations

import gc
import logging

import torch
import torch.nn.functional as F

from ..sa2va.download import DownloadCancelled, download, is_complete
from ..sa2va.errors import InputError
from ..sa2va.matting import VITMATTE_NAME, VITMATTE_REPO, Matter, load_matter
from ..sa2va.refine import RefineSettings, refine
from . import comfy

logger = logging.getLogger(__name__)

VITMATTE_FILES = ("config.json", "preprocessor_config.json")
_MATTER: dict[str, Matter] = {}


def vitmatte_folder():
    """A complete ViTMatte folder: found under a registered vitmatte folder, else downloaded."""
    for base in comfy.model_dirs(comfy.MATTING_FOLDER_NAME):
        if is_complete(base / VITMATTE_NAME, VITMATTE_FILES):
            return base / VITMATTE_NAME
    target = comfy.model_dirs(comfy.MATTING_FOLDER_NAME)[0] / VITMATTE_NAME
    bar = comfy.Progress(1, "download ViTMatte")
    try:
        download(VITMATTE_REPO, target, progress=lambda done, total: bar.set(done, total),
                 cancelled=comfy.interrupted, required=VITMATTE_FILES)
    except DownloadCancelled:
        comfy.throw_if_interrupted()
        raise
    finally:
        bar.close()
    return target


def matter() -> Matter:
    """The shared ViTMatte model, loaded on first use."""
    if "model" not in _MATTER:
        _MATTER["model"] = load_matter(vitmatte_folder(), device=comfy.torch_device())
    return _MATTER["model"]


def release_matter() -> None:
    _MATTER.clear()
    gc.collect()
    comfy.soft_empty_cache()


def sanitize(image: torch.Tensor) -> torch.Tensor:
    """A ComfyUI IMAGE ``[B, H, W, C]`` as float32 RGB in 0..1 on the CPU: NaN -> 0, +Inf -> 1, -Inf -> 0, values
    clamped, greyscale repeated to 3 channels, alpha dropped."""
    rgb = image[..., :3] if image.shape[-1] >= 3 else image[..., :1].expand(-1, -1, -1, 3)
    return torch.nan_to_num(rgb.float(), nan=0.0, posinf=1.0, neginf=0.0).clamp(0, 1).cpu()


def refine_batch(image: torch.Tensor, probabilities: list[torch.Tensor],
                 settings: RefineSettings) -> list[torch.Tensor]:
    """Refine per-image probability stacks (``[N_i, H, W]``) of a sanitised IMAGE batch ``[B, H, W, 3]``."""
    settings.validate()
    shared = matter() if settings.needs_matter and any(p.shape[0] for p in probabilities) else None
    return [refine(image[i], p, settings, shared) for i, p in enumerate(probabilities)]


def refine_mask(image: torch.Tensor, mask: torch.Tensor, settings: RefineSettings,
                clean_vram_after: bool = False) -> torch.Tensor:
    """The Sa2VA Refine Mask node: refine any MASK ``[B or 1, h, w]`` on an IMAGE ``[B or 1, H, W, 3]``.

    A mask of another size is resized (bilinear) to the image; a single mask or image is repeated over the other's
    batch. Returns MASK ``[max(B), H, W]``."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        raise InputError(f"Expected a ComfyUI IMAGE [B, H, W, 3], got {getattr(image, 'shape', type(image))}.")
    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3):
        raise InputError(f"Expected a ComfyUI MASK [B, H, W], got {getattr(mask, 'shape', type(mask))}.")
    mask = mask.unsqueeze(0) if mask.ndim == 2 else mask
    batch = max(image.shape[0], mask.shape[0])
    if image.shape[0] not in (1, batch) or mask.shape[0] not in (1, batch):
        raise InputError(f"IMAGE batch {image.shape[0]} and MASK batch {mask.shape[0]} do not match; use equal "
                         f"batches or a single image/mask.")
    height, width = image.shape[1], image.shape[2]
    mask = torch.nan_to_num(mask.float(), nan=0.0).clamp(0, 1)
    if mask.shape[1:] != (height, width):
        mask = F.interpolate(mask.unsqueeze(1), size=(height, width), mode="bilinear", align_corners=False)[:, 0]
    image = sanitize(image)
    image = image.expand(batch, -1, -1, -1) if image.shape[0] == 1 else image
    mask = mask.expand(batch, -1, -1) if mask.shape[0] == 1 else mask
    try:
        out = refine_batch(image, [mask[i:i + 1] for i in range(batch)], settings)
    finally:
        if clean_vram_after:
            release_matter()
    return torch.cat(out).to(comfy.output_device())
