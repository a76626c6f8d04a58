"""What the node classes share: defaults, schema pieces, ComfyUI tensor conversion, progress, and model slots.

Plain helpers (the node API comes from the bridge, :mod:`.comfy`); each node module holds one node class with its
schema and ``execute``.
"""
from __future__ import annotations

import gc
import logging
from collections.abc import Callable

import torch

from ..sa2va.errors import InputError
from ..sa2va.outputs.matting import DEFAULT_MAX_MEGAPIXELS
from ..sa2va.outputs.refine import DEFAULT_GUIDED_EPS, DEFAULT_GUIDED_RADIUS, DETAIL_METHODS, RefineSettings
from ..sa2va.tasks import DEFAULT_TASK, TASKS
from . import comfy

logger = logging.getLogger(__name__)

CATEGORY = "Sa2VA"
MODEL_TYPE = "SA2VA_MODEL"
#: the nodes' mask threshold default (docs/design.md, "Node defaults"); the request defaults are sa2va.requests'
DEFAULT_MASK_THRESHOLD = RefineSettings.mask_threshold
MODEL_TOOLTIP = ("Official models are downloaded into models/sa2va/<name>/ on first use (progress on the node, "
                 "Cancel stops it, the next run resumes). Folders you place there yourself are listed too.")


# ------------------------------------------------------------------------------------------ schema pieces
def model_socket(io):
    """The SA2VA_MODEL socket type."""
    return io.Custom(MODEL_TYPE)


def advanced(factory) -> dict:
    """``advanced=True`` for an input of a ComfyUI whose inputs have it (collapsed under "advanced"), else nothing."""
    return comfy.supported(factory, advanced=True)


def boxes_socket(io):
    """ComfyUI's BOUNDING_BOX type where the running version has it (as :func:`.comfy.bounding_box_type` decides for
    the values), else STRING (the boxes as JSON text)."""
    return getattr(io, "BoundingBox", None) or io.String


def task_input(io):
    """The optional ``task`` choice of the Segmentation and Video nodes (:mod:`sa2va.tasks`), last among the inputs
    so that workflows saved before it keep their widget values."""
    return io.Combo.Input("task", options=list(TASKS), default=DEFAULT_TASK, optional=True,
                          tooltip="segment: the prompt says what to segment (default). describe with masks: the "
                                  "model describes the picture and gives one labelled mask per phrase it grounds "
                                  "(the prompt is not used). describe: text only, no masks (the prompt is not "
                                  "used). ask: the prompt as a free question; masks only if the answer has them.")


def refine_inputs(io) -> list:
    """The refinement controls shared by Sa2VA Segmentation and Sa2VA Refine Mask (advanced ones optional); their
    names are the keyword arguments of :func:`refine_settings`."""
    defaults = RefineSettings()
    return [
        io.Boolean.Input("process_details", default=defaults.process_details,
                         tooltip="Run the refinement stack (black/white points, detail method, erode/dilate). "
                                 "Off: the model's probabilities go straight to the threshold."),
        io.Float.Input("black_point", default=defaults.black_point, min=0.0, max=0.99, step=0.01,
                       tooltip="Probabilities at or below this become 0 (and are sure background for VITMatte)."),
        io.Float.Input("white_point", default=defaults.white_point, min=0.01, max=1.0, step=0.01,
                       tooltip="Probabilities at or above this become 1 (and are sure foreground for VITMatte)."),
        io.Combo.Input("detail_method", options=list(DETAIL_METHODS), default=defaults.detail_method,
                       tooltip="FastMatte: guided filter that snaps soft edges to the image's edges (fast, no "
                               "weights). VITMatte: ViTMatte matting for hair and fur (downloads ~100 MB once). "
                               "none: no edge refinement."),
        io.Int.Input("detail_erode", default=defaults.detail_erode, min=0, max=10,
                     tooltip="Shrink the masks by this many pixels (round kernel). With VITMatte: widen the "
                             "uncertain band inward instead."),
        io.Int.Input("detail_dilate", default=defaults.detail_dilate, min=0, max=10,
                     tooltip="Grow the masks by this many pixels (round kernel), after eroding. With VITMatte: "
                             "widen the uncertain band outward instead."),
        io.Int.Input("guided_radius", default=DEFAULT_GUIDED_RADIUS, min=1, max=64, optional=True,
                     **advanced(io.Int.Input),
                     tooltip="FastMatte window radius in pixels (larger follows edges from farther away)."),
        io.Float.Input("guided_eps", default=DEFAULT_GUIDED_EPS, min=0.00001, max=1.0, step=0.001, optional=True,
                       **advanced(io.Float.Input),
                       tooltip="FastMatte smoothing: image variation below this (variance, 0..1 units) counts as "
                               "flat; smaller follows finer edges."),
        io.Float.Input("vitmatte_max_megapixels", default=DEFAULT_MAX_MEGAPIXELS, min=0.1, max=16.0, step=0.1,
                       optional=True, **advanced(io.Float.Input),
                       tooltip="VITMatte works at most at this size; its alpha is upscaled back."),
    ]


_DEFAULT_REFINE = RefineSettings()


def refine_settings(*, mask_threshold: float, apply_mask_threshold: bool,
                    process_details: bool = _DEFAULT_REFINE.process_details,
                    black_point: float = _DEFAULT_REFINE.black_point, white_point: float = _DEFAULT_REFINE.white_point,
                    detail_method: str = _DEFAULT_REFINE.detail_method,
                    detail_erode: int = _DEFAULT_REFINE.detail_erode, detail_dilate: int = _DEFAULT_REFINE.detail_dilate,
                    guided_radius: int = DEFAULT_GUIDED_RADIUS, guided_eps: float = DEFAULT_GUIDED_EPS,
                    vitmatte_max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> RefineSettings:
    """The validated :class:`RefineSettings` of the inputs declared by :func:`refine_inputs` plus the threshold
    (an input a grouped node does not show keeps its default, :mod:`.groups`)."""
    settings = RefineSettings(process_details=process_details, black_point=black_point, white_point=white_point,
                              detail_method=detail_method, detail_erode=detail_erode, detail_dilate=detail_dilate,
                              guided_radius=guided_radius, guided_eps=guided_eps,
                              max_megapixels=vitmatte_max_megapixels, mask_threshold=mask_threshold,
                              apply_mask_threshold=apply_mask_threshold)
    settings.validate()
    return settings


# ------------------------------------------------------------------------------------ ComfyUI tensors
def check_image(image: object, expected: str) -> None:
    """Raise :class:`~sa2va.errors.InputError` unless ``image`` is a ComfyUI IMAGE tensor ``[B, H, W, C]`` with 1, 3
    or 4 channels (``expected`` names what the input should hold)."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
        raise InputError(f"Expected a ComfyUI {expected}, got {getattr(image, 'shape', type(image))}.")


def sanitize(image: torch.Tensor) -> torch.Tensor:
    """A ComfyUI IMAGE ``[B, H, W, C]`` as float32 RGB in 0..1 on the CPU: NaN -> 0, +Inf -> 1, -Inf -> 0, values
    clamped, greyscale repeated to 3 channels, alpha dropped."""
    rgb = image[..., :3] if image.shape[-1] >= 3 else image[..., :1].expand(-1, -1, -1, 3)
    return torch.nan_to_num(rgb.float(), nan=0.0, posinf=1.0, neginf=0.0).clamp(0, 1).cpu()


def to_uint8(image: torch.Tensor):
    """A sanitised ``[H, W, 3]`` float image -> uint8 numpy."""
    return (image * 255).round().to(torch.uint8).numpy()


# ------------------------------------------------------------------------------------------ model slots
class ModelSlot:
    """The module-level place for models the nodes load themselves (docs/design.md, "No module-level model cache").

    Keyed by every load option, so two nodes asking for different models each keep theirs, and several models may
    be held at once: each is registered with ComfyUI's memory manager, whose eviction decides what stays in VRAM.
    A model is released as soon as no node uses it: each node (``user``: its node id) uses one key at a time; a
    node that asks for another key, runs with a Sa2VA Loader connected (:meth:`forget`), or is no longer in the
    queued workflow (:meth:`keep_only`: called by the nodes when they run, and by the prompt hook of
    :mod:`.queue_hook` when a workflow is queued) stops using its old one. Outside ComfyUI every caller is one
    anonymous user, so a new key replaces the old model."""

    def __init__(self, description: str) -> None:
        self.description = description
        self.values: dict[object, object] = {}
        self.users: dict[str, object] = {}

    @property
    def empty(self) -> bool:
        return not self.values

    def get(self, key: object, load: Callable[[], object], user: str | None = None) -> object:
        """The value held for ``key``, else ``load()``; ``user`` now uses ``key`` (and no longer its old key)."""
        self.users[user or ""] = key
        self._release_unused()
        if key not in self.values:
            logger.info("Loading %s (%s)", self.description, key)
            self.values[key] = load()
        return self.values[key]

    def forget(self, user: str | None) -> None:
        """``user`` uses none of the slot's models any more (e.g. a Sa2VA Loader is connected now)."""
        if self.users.pop(user or "", None) is not None:
            self._release_unused()

    def keep_only(self, users: set[str]) -> None:
        """Only ``users`` (the nodes of the queued workflow that may use the slot) still use their models."""
        for user in [u for u in self.users if u and u not in users]:
            del self.users[user]
        self._release_unused()

    def release(self, key: object = None) -> None:
        """Release ``key``'s model (every model when None) now, whoever uses it."""
        keys = list(self.values) if key is None else [key]
        for user in [u for u, k in self.users.items() if k in keys]:
            del self.users[user]
        self._drop([k for k in keys if k in self.values])

    def _release_unused(self) -> None:
        used = set(self.users.values())
        self._drop([k for k in self.values if k not in used])

    def _drop(self, keys: list) -> None:
        if not keys:
            return
        for key in keys:
            logger.info("Releasing %s (%s)", self.description, key)
            value = self.values.pop(key)
            release_vram = getattr(value, "release_vram", None)
            if release_vram is not None:
                release_vram()
            del value
        gc.collect()
        comfy.soft_empty_cache()


#: the Segmentation and Video nodes' model when no Sa2VA Loader is connected
MODEL_SLOT = ModelSlot("Sa2VA model of a node without a loader")
