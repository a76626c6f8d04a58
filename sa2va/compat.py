"""Minimum versions of what Sa2VA runs on (the one source of truth), the transformers check, and the few places where
the supported transformers versions' APIs differ.

``requirements.txt`` and ``pyproject.toml`` repeat :data:`MINIMUM_VERSIONS` for pip; a test keeps them equal.
``python -m sa2va doctor`` (:mod:`sa2va.doctor`), ``install.py`` and ``test_sa2va.py`` check against this table.

Supported: transformers 4.57.x and 5.x. Every difference between those versions that the library meets is handled
here, so the rest of the code calls one function whatever is installed:

* ``no_init_weights`` lives in ``transformers.initialization`` in 5.x, in ``transformers.modeling_utils`` in 4.57;
* ``Sam2VideoModel.get_image_features`` returns an output object in 5.x, a plain tuple in 4.57;
* ``InternVLModel.get_image_features`` returns an output object in 5.x (``return_dict=True``), the tensor in 4.57;
* the Qwen-VL image processor of 4.57 lets the folder's ``min_pixels`` / ``max_pixels`` override the ``size`` of a
  call (5.x reads ``size`` and deprecates the two keywords).

This module imports only the standard library at import time, so it works without torch or transformers installed.
"""
from __future__ import annotations

import importlib.metadata as metadata
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from .errors import DependencyError

if TYPE_CHECKING:
    import torch

T = TypeVar("T")

MIN_PYTHON = (3, 10)


@dataclass(frozen=True)
class Requirement:
    """One distribution: its pip name, the module it is imported as, its minimum version, whether the pack needs it
    (False: only an optional feature does), and what it is for."""

    name: str
    module: str
    minimum: str
    required: bool
    purpose: str


#: every distribution the pack uses, with its minimum version. torch is not in requirements.txt (ComfyUI, or you,
#: installed the build that fits the GPU); its minimum is the one transformers 5.x declares.
REQUIREMENTS: tuple[Requirement, ...] = (
    Requirement("torch", "torch", "2.6", True, "tensors and models"),
    Requirement("transformers", "transformers", "4.57", True, "native Qwen-VL, InternVL and SAM2 models"),
    Requirement("accelerate", "accelerate", "1.0", True, "loading on a device"),
    Requirement("bitsandbytes", "bitsandbytes", "0.45", False, "8-bit / 4-bit quantization only"),
    Requirement("safetensors", "safetensors", "0.4", True, "reading the weights"),
    Requirement("huggingface_hub", "huggingface_hub", "0.34", True, "downloads"),
    Requirement("numpy", "numpy", "1.24", True, "arrays"),
    Requirement("pillow", "PIL", "10.0", True, "images"),
    Requirement("tqdm", "tqdm", "4.66", False, "progress bars outside ComfyUI"),
    Requirement("sentencepiece", "sentencepiece", "0.2.0", False, "the tokenizer of Sa2VA-8B / Sa2VA-26B only"),
)
#: pip name -> minimum version
MINIMUM_VERSIONS: dict[str, str] = {r.name: r.minimum for r in REQUIREMENTS}
#: the oldest supported transformers: the first release with native Qwen3-VL, InternVL and SAM2 video
MIN_TRANSFORMERS_TEXT = MINIMUM_VERSIONS["transformers"]
#: the requirement string every message, requirements.txt and pyproject.toml use
TRANSFORMERS_REQUIREMENT = f"transformers>={MIN_TRANSFORMERS_TEXT}"


def version_tuple(version: str) -> tuple[int, ...]:
    """``"5.0.0rc1+cu130"`` -> ``(5, 0, 0)``: the leading numbers of a version, for comparisons."""
    numbers = []
    for part in version.split("+")[0].split("."):
        digits = ""
        for ch in part:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        numbers.append(int(digits))
        if digits != part:
            break
    return tuple(numbers)


#: (major, minor) of :data:`MIN_TRANSFORMERS_TEXT`
MIN_TRANSFORMERS = version_tuple(MIN_TRANSFORMERS_TEXT)[:2]


def at_least(version: str, minimum: str) -> bool:
    """Whether ``version`` is ``minimum`` or newer (pre-releases of the minimum count as the minimum)."""
    have, need = version_tuple(version), version_tuple(minimum)
    width = max(len(have), len(need))
    return have + (0,) * (width - len(have)) >= need + (0,) * (width - len(need))


def installed_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or None when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def transformers_problem() -> str | None:
    """Why the installed transformers cannot run Sa2VA, or None when it can."""
    version = installed_version("transformers")
    if version is None:
        return f"transformers is not installed: pip install '{TRANSFORMERS_REQUIREMENT}'"
    if not at_least(version, MIN_TRANSFORMERS_TEXT):
        return (f"transformers {version} is too old for Sa2VA (needs {MIN_TRANSFORMERS_TEXT} or newer for native "
                f"Qwen3-VL, InternVL and SAM2): pip install -U '{TRANSFORMERS_REQUIREMENT}'")
    return None


def require_transformers() -> None:
    """Raise :class:`~sa2va.errors.DependencyError` when transformers is missing or too old."""
    problem = transformers_problem()
    if problem:
        raise DependencyError(problem[0].upper() + problem[1:])


def installed_transformers() -> tuple[int, int]:
    """(major, minor) of the installed transformers; (0, 0) when it is missing."""
    try:
        return version_tuple(metadata.version("transformers"))
    except metadata.PackageNotFoundError:
        return (0, 0)


def vision_cache_supported() -> bool:
    """Whether the vision tower's outputs can be served from the encoder cache: the wrappers of
    ``get_image_features`` build transformers 5.x's output objects; under 4.57 (tuples and bare tensors) the tower
    always runs and only the SAM2 image features are cached."""
    return installed_transformers() >= (5, 0)


def require_accelerate(device, quantization: str | None) -> None:
    """Raise :class:`~sa2va.errors.DependencyError` when accelerate is missing and transformers needs it for this
    load: bitsandbytes quantisation needs it in every version, a ``device_map`` (any device but the CPU) in 4.57."""
    if quantization:
        purpose = f"to quantise the language model ({quantization})"
    elif device.type != "cpu" and installed_transformers() < (5, 0):
        purpose = f"(version {metadata.version('transformers')}) to load a model onto {device}"
    else:
        return
    try:
        import accelerate  # noqa: F401
    except ImportError as exc:
        raise DependencyError(f"accelerate is not installed; transformers needs it {purpose}: pip install "
                              f"'accelerate>=1.0'") from exc


def no_init_weights():
    """transformers' context manager that skips weight initialisation while a model is built
    (``transformers.initialization`` in 5.x, ``transformers.modeling_utils`` in 4.57)."""
    try:
        from transformers.initialization import no_init_weights as skip
    except ImportError:  # transformers 4.57
        from transformers.modeling_utils import no_init_weights as skip
    return skip()


def build_uninitialised(build: Callable[[], T], dtype: torch.dtype) -> T:
    """``build()`` with ``dtype`` as torch's default dtype (restored afterwards) and weight initialisation skipped
    (:func:`no_init_weights`): a model created in ``dtype``, its parameters left to be filled from a checkpoint."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with no_init_weights():
            return build()
    finally:
        torch.set_default_dtype(previous)


def sam2_image_features(model, pixel_values) -> tuple[list, list]:
    """``Sam2VideoModel.get_image_features`` as (levels, position encodings): lists of ``[h*w, B, C]`` maps, high
    to low resolution, levels 0 and 1 through the mask decoder's ``conv_s0`` / ``conv_s1``.

    transformers 5.x returns an output object with ``fpn_hidden_states`` / ``fpn_position_encoding``; 4.57 returns
    the tuple ``(levels, positions, hidden_states, attentions)``."""
    out = model.get_image_features(pixel_values)
    if isinstance(out, tuple):  # transformers 4.57
        return list(out[0]), list(out[1])
    return list(out.fpn_hidden_states), list(out.fpn_position_encoding)


def internvl_image_features(model, pixel_values):
    """The projected image features ``[tiles, tokens, hidden]`` of ``InternVLModel.get_image_features``.

    transformers 5.x returns an output object whose ``pooler_output`` holds them (with ``return_dict=True``); 4.57
    returns the tensor itself."""
    out = model.get_image_features(pixel_values=pixel_values, return_dict=True)
    return out.pooler_output if hasattr(out, "pooler_output") else out


def qwen_pixel_budget(min_pixels: int, max_pixels: int) -> dict:
    """Keyword arguments of a Qwen-VL processor call that set the image pixel budget to [min_pixels, max_pixels].

    5.x takes ``size={"shortest_edge": ..., "longest_edge": ...}``. 4.57 also accepts ``size`` but lets the
    ``min_pixels`` / ``max_pixels`` of the folder's preprocessor_config.json (the Qwen2.5-VL releases write them)
    win over it, so there they are passed as well; 5.x warns that they are deprecated, so they are not passed there."""
    budget: dict = {"size": {"shortest_edge": min_pixels, "longest_edge": max_pixels}}
    if installed_transformers() < (5, 0):
        budget.update(min_pixels=min_pixels, max_pixels=max_pixels)
    return budget
