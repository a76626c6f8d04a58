"""The refinement stack applied to Sa2VA's probabilities, in a fixed order:

probabilities -> black/white points -> detail method -> erode/dilate -> threshold.

* black/white points: ``(p - black) / (white - black)`` clamped (:func:`sa2va.outputs.masks.remap_levels`);
* detail method: ``FastMatte`` = guided filter on the image (edge-aware, weight-free), ``VITMatte`` = ViTMatte
  matting from a trimap (fg ``p >= white``, bg ``p <= black``; ``detail_erode`` / ``detail_dilate`` widen its
  unknown band instead of reshaping the alpha afterwards), ``none``;
* erode/dilate: grey erosion then dilation by N pixels with a round kernel (FastMatte and none);
* threshold: ``p >= mask_threshold`` becomes 1, else 0 -- only when ``apply_mask_threshold`` is on, so the soft
  alpha survives otherwise. ``process_details`` off skips everything but the threshold.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import masks as M
from ..errors import InputError
from .matting import DEFAULT_MAX_MEGAPIXELS, Matter, matte

DETAIL_METHODS = ("FastMatte", "VITMatte", "none")
#: guided-filter window radius in pixels: ~1% of a 1024-px image, wide enough to pull an upsampled SAM2 boundary
#: (256 -> 1024 px, 4-px steps) onto the image edge
DEFAULT_GUIDED_RADIUS = 8
#: guided-filter regularisation, a variance in 0..1 intensity units: image structure with less than ~0.1 standard
#: deviation in a window counts as flat, stronger edges steer the mask
DEFAULT_GUIDED_EPS = 0.01


@dataclass
class RefineSettings:
    """The refinement controls of the Segmentation and Refine Mask nodes (defaults: docs/design.md, "Node defaults")."""

    process_details: bool = True
    black_point: float = 0.05
    white_point: float = 0.95
    detail_method: str = "FastMatte"
    detail_erode: int = 0
    detail_dilate: int = 0
    guided_radius: int = DEFAULT_GUIDED_RADIUS
    guided_eps: float = DEFAULT_GUIDED_EPS
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS
    mask_threshold: float = 0.30
    apply_mask_threshold: bool = True

    def validate(self) -> None:
        if not 0.0 <= self.black_point < self.white_point <= 1.0:
            raise InputError(f"black_point must be below white_point, both within 0..1; got {self.black_point} "
                             f"and {self.white_point}.")
        if self.detail_method not in DETAIL_METHODS:
            raise InputError(f"detail_method must be one of {', '.join(DETAIL_METHODS)}, got "
                             f"{self.detail_method!r}.")
        for name in ("detail_erode", "detail_dilate"):
            if not 0 <= int(getattr(self, name)) <= 10:
                raise InputError(f"{name} must be an integer from 0 to 10, got {getattr(self, name)}.")
        if not 0.0 <= self.mask_threshold <= 1.0:
            raise InputError(f"mask_threshold must be between 0 and 1, got {self.mask_threshold}.")
        if self.guided_radius < 1 or self.guided_eps <= 0 or self.max_megapixels <= 0:
            raise InputError("guided_radius must be at least 1, and guided_eps and max_megapixels above 0.")

    @property
    def needs_matter(self) -> bool:
        return self.process_details and self.detail_method == "VITMatte"


def refine(image: torch.Tensor, probabilities: torch.Tensor, settings: RefineSettings,
           matter: Matter | None = None) -> torch.Tensor:
    """Refine ``[N, H, W]`` probabilities of one image ``[H, W, 3]`` (0..1); returns ``[N, H, W]`` in 0..1."""
    settings.validate()
    x = probabilities.float().clamp(0, 1)
    if x.shape[0] and settings.process_details:
        if settings.detail_method == "VITMatte":
            if matter is None:
                raise InputError("detail_method VITMatte needs the ViTMatte model; it was not loaded.")
            tri = M.trimap(x, settings.black_point, settings.white_point, settings.detail_erode,
                           settings.detail_dilate)
            x = matte(matter, image.float(), tri, settings.max_megapixels)
        else:
            x = M.remap_levels(x, settings.black_point, settings.white_point)
            if settings.detail_method == "FastMatte":
                x = M.guided_filter(image.float().to(x.device), x, settings.guided_radius, settings.guided_eps)
            x = M.dilate(M.erode(x, settings.detail_erode), settings.detail_dilate)
    if settings.apply_mask_threshold:
        x = M.threshold(x, settings.mask_threshold)
    return x
