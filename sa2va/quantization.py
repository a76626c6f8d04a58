"""bitsandbytes settings shared by every family: which modules are quantised and which stay in the compute dtype."""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from .errors import DependencyError
from .hub.keymap import SAM2_PREFIX

QUANTIZATION_MODES = (None, "8bit", "4bit")
#: bitsandbytes is optional (pyproject's "quantization" extra); this is the version the extra asks for
BITSANDBYTES_REQUIREMENT = "bitsandbytes>=0.45"
#: modules never quantised (prefixes of runtime names): the output head, the vision tower, InternVL's projector
SKIP_MODULES = ["lm_head", "model.visual", "model.vision_tower", "model.multi_modal_projector"]


def require_bitsandbytes(mode: str) -> None:
    """Raise :class:`DependencyError` naming the install command when ``mode`` needs bitsandbytes and it is missing."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise DependencyError(f"bitsandbytes is required for quantization={mode!r} and is not installed (it is "
                              f"optional): pip install '{BITSANDBYTES_REQUIREMENT}' in the Python that runs ComfyUI, "
                              f"or load without quantization.") from exc


def quantization_config(mode: str, dtype: torch.dtype, extra_skip: Iterable[str] = ()):
    """bitsandbytes settings: the language model quantised; lm_head and the vision tower kept in ``dtype``, and the
    modules named in ``extra_skip`` (module names or name prefixes) too."""
    require_bitsandbytes(mode)
    from transformers import BitsAndBytesConfig

    skip = list(SKIP_MODULES) + list(extra_skip)
    if mode == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    if mode == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype,
                                  llm_int8_skip_modules=skip)
    raise ValueError(f"quantization must be None, '8bit' or '4bit', not {mode!r}")




#: release-name parts of tensors that stay in the compute dtype when quantising (vision, projector, head, embeddings,
#: and InternLM2's fused ``attention.wqkv``, whose q/k/v are filled after loading and are never quantised)
_KEPT_PARTS = ("visual", "vision", "lm_head", "embed", "mlp1", "multi_modal_projector", "merger", "attention.wqkv")


def estimated_bytes(shapes: Iterable[tuple[str, tuple[int, ...]]], mode: str | None, dtype: torch.dtype) -> int:
    """Bytes a model will take once loaded, from its release tensors' names and shapes (before loading, to make room).

    Linear weights of the language model's layers (2-D ``...layers...weight``) take 1 byte per value at 8-bit (plus
    a float32 scale per row) and half a byte at 4-bit (plus a float32 absmax per 64 values); every other tensor
    (vision tower, projector, lm_head, embeddings, norms, SAM2 -- whose memory attention and mask decoder have
    ``layers`` too -- and the [SEG] projection) stays in ``dtype``. After loading,
    :meth:`~sa2va.model.Sa2VAModel.memory_bytes` gives the exact figure (bench/bench_load.py compares the two)."""
    size = torch.empty(0, dtype=dtype).element_size()
    total = 0
    for name, shape in shapes:
        numel = math.prod(shape)
        quantised = (mode is not None and len(shape) == 2 and name.endswith(".weight") and ".layers." in name
                     and not name.startswith(SAM2_PREFIX) and not any(part in name for part in _KEPT_PARTS))
        if not quantised:
            total += numel * size
        elif mode == "8bit":
            total += numel + shape[0] * 4
        else:
            total += numel // 2 + math.ceil(numel / 64) * 4
    return total
