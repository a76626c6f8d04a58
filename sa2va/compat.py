"""Version checks of the libraries Sa2VA runs on, with one actionable message each."""
from __future__ import annotations

import importlib.metadata as metadata

from .errors import DependencyError

MIN_TRANSFORMERS = (5, 0)


def _major_minor(version: str) -> tuple[int, int]:
    parts = (version.split("+")[0].split(".") + ["0", "0"])[:2]
    return tuple(int("".join(ch for ch in p if ch.isdigit()) or 0) for p in parts)  # type: ignore[return-value]


def transformers_problem() -> str | None:
    """Why the installed transformers cannot run Sa2VA, or None when it can."""
    try:
        version = metadata.version("transformers")
    except metadata.PackageNotFoundError:
        return "transformers is not installed: pip install 'transformers>=5.0'"
    if _major_minor(version) < MIN_TRANSFORMERS:
        return (f"transformers {version} is too old for Sa2VA (needs 5.0 or newer for native Qwen3-VL and SAM2): "
                f"pip install -U 'transformers>=5.0'")
    return None


def require_transformers() -> None:
    """Raise :class:`DependencyError` when transformers is missing or too old."""
    problem = transformers_problem()
    if problem:
        raise DependencyError(problem[0].upper() + problem[1:])
