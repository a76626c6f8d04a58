"""Minimum versions of what Sa2VA runs on (the one source of truth), and the transformers check with its message.

``requirements.txt`` and ``pyproject.toml`` repeat :data:`MINIMUM_VERSIONS` for pip; a test keeps them equal.
``python -m sa2va doctor`` (:mod:`sa2va.doctor`), ``install.py`` and ``test_sa2va.py`` check against this table.
This module imports nothing heavy, so it works without torch or transformers installed.
"""
from __future__ import annotations

import importlib.metadata as metadata
from dataclasses import dataclass

from .errors import DependencyError

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
    Requirement("transformers", "transformers", "5.0", True, "native Qwen-VL, InternVL and SAM2 models"),
    Requirement("accelerate", "accelerate", "1.0", True, "loading on a device"),
    Requirement("bitsandbytes", "bitsandbytes", "0.45", False, "8-bit / 4-bit quantization only"),
    Requirement("safetensors", "safetensors", "0.4", True, "reading the weights"),
    Requirement("huggingface_hub", "huggingface_hub", "0.34", True, "downloads"),
    Requirement("qwen_vl_utils", "qwen_vl_utils", "0.0.14", False, "the reference's image resizing, not imported"),
    Requirement("numpy", "numpy", "1.24", True, "arrays"),
    Requirement("pillow", "PIL", "10.0", True, "images"),
    Requirement("tqdm", "tqdm", "4.66", False, "progress bars outside ComfyUI"),
)
#: pip name -> minimum version
MINIMUM_VERSIONS: dict[str, str] = {r.name: r.minimum for r in REQUIREMENTS}
MIN_TRANSFORMERS = MINIMUM_VERSIONS["transformers"]


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
        return f"transformers is not installed: pip install 'transformers>={MIN_TRANSFORMERS}'"
    if not at_least(version, MIN_TRANSFORMERS):
        return (f"transformers {version} is too old for Sa2VA (needs {MIN_TRANSFORMERS} or newer for native Qwen3-VL "
                f"and SAM2): pip install -U 'transformers>={MIN_TRANSFORMERS}'")
    return None


def require_transformers() -> None:
    """Raise :class:`DependencyError` when transformers is missing or too old."""
    problem = transformers_problem()
    if problem:
        raise DependencyError(problem[0].upper() + problem[1:])
