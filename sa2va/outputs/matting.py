"""ViTMatte image matting (transformers' ``VitMatteForImageMatting``) driven by Sa2VA's probabilities.

The trimap comes from the probabilities (:func:`sa2va.outputs.masks.trimap`); large images are matted at a bounded size
(``max_megapixels``) and the predicted alpha is upsampled bilinearly to the input size. The alpha stays soft.
The checkpoint is ``hustvl/vitmatte-small-composition-1k`` (downloaded into ``<models>/vitmatte/<name>/``); its
folder holds ``config.json``, ``model.safetensors`` and ``preprocessor_config.json``.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import ModelFolderError

logger = logging.getLogger(__name__)

VITMATTE_REPO = "hustvl/vitmatte-small-composition-1k"
VITMATTE_NAME = "vitmatte-small-composition-1k"
DEFAULT_MAX_MEGAPIXELS = 2.0


@dataclass
class Matter:
    """A loaded ViTMatte model and its image processor, owned by whoever loaded it (no global cache)."""

    model: torch.nn.Module
    processor: object

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


def load_matter(folder: str | os.PathLike, device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float32) -> Matter:
    """Load a ViTMatte folder (safetensors only; no remote code)."""
    from transformers import VitMatteForImageMatting, VitMatteImageProcessor

    from ..families.base import quiet_transformers

    folder = Path(folder)
    if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
        raise ModelFolderError(f"ViTMatte folder {folder} lacks config.json or its .safetensors weights; download "
                               f"{VITMATTE_REPO} again or copy config.json, model.safetensors and "
                               f"preprocessor_config.json there.")
    with quiet_transformers():
        model = VitMatteForImageMatting.from_pretrained(str(folder), dtype=dtype, use_safetensors=True)
        processor = VitMatteImageProcessor.from_pretrained(str(folder))
    return Matter(model.to(device).eval(), processor)


def _bounded_size(height: int, width: int, max_megapixels: float) -> tuple[int, int]:
    scale = min(1.0, math.sqrt(max_megapixels * 1e6 / (height * width)))
    return max(1, round(height * scale)), max(1, round(width * scale))


@torch.inference_mode()
def matte(matter: Matter, image: torch.Tensor, trimaps: torch.Tensor,
          max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> torch.Tensor:
    """Alpha mattes ``[N, H, W]`` in 0..1 for an image ``[H, W, 3]`` (0..1) and trimaps ``[N, H, W]`` (0/0.5/1).

    Above ``max_megapixels`` the image and trimaps are resized (bilinear / nearest) for the network and the alpha
    is resized back bilinearly. Known regions of the trimap are kept exactly (0 or 1)."""
    if trimaps.shape[0] == 0:
        return trimaps
    height, width = image.shape[:2]
    small = _bounded_size(height, width, max_megapixels)
    rgb = image.permute(2, 0, 1).unsqueeze(0).float()
    tri = trimaps.unsqueeze(1).float()
    if small != (height, width):
        rgb = F.interpolate(rgb, size=small, mode="bilinear", align_corners=False)
        tri = F.interpolate(tri, size=small, mode="nearest")
    alphas = []
    for t in tri:
        inputs = matter.processor(images=rgb[0].permute(1, 2, 0).cpu().numpy(), trimaps=t[0].cpu().numpy(),
                                  return_tensors="pt", do_rescale=False)
        pixels = inputs["pixel_values"].to(device=matter.device, dtype=matter.dtype)
        alpha = matter.model(pixel_values=pixels).alphas[:, :, : small[0], : small[1]]
        alphas.append(alpha.float().cpu())
    alpha = torch.cat(alphas).clamp(0, 1)
    if small != (height, width):
        alpha = F.interpolate(alpha, size=(height, width), mode="bilinear", align_corners=False)
    alpha = alpha[:, 0]
    known = trimaps.cpu()
    return torch.where(known == 1.0, 1.0, torch.where(known == 0.0, 0.0, alpha))
