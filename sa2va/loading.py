"""Loading a release folder: :func:`load_model` and the choices it takes (device, dtype, quantization, device map).

The family adapter builds the native vision-language model and its processor; the grounding head comes from
:mod:`sa2va.grounding.loading`, the [SEG] projection from here. Nothing is downloaded: :mod:`sa2va.hub.download`
does that, explicitly.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from .cache import EncoderCache
from .compat import require_accelerate, require_transformers
from .errors import InputError, ModelFolderError
from .families import adapter_for
from .families.base import LoadOptions
from .grounding.loading import load_grounding
from .hub import keymap
from .hub.checkpoint import ShardIndex, check_keys, check_shapes, detect_family, read_config, read_index
from .model import Sa2VAModel
from .quantization import QUANTIZATION_MODES, require_bitsandbytes

logger = logging.getLogger(__name__)

MODELS_DIR_ENV = "SA2VA_MODELS_DIR"
#: the dtype names the CLI, the nodes and the benchmarks offer; "auto" is :func:`default_dtype` of the device
DTYPES: dict[str, torch.dtype | None] = {"auto": None, "bf16": torch.bfloat16, "fp16": torch.float16,
                                         "fp32": torch.float32}
#: the named accelerate device maps :func:`load_model` accepts (a dict of module names to devices is accepted too)
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def _projection(hidden: int) -> torch.nn.Sequential:
    return torch.nn.Sequential(torch.nn.Linear(hidden, hidden), torch.nn.ReLU(inplace=True),
                               torch.nn.Linear(hidden, 256), torch.nn.Dropout(0.0))


def _load_projection(folder: Path, index: ShardIndex, hidden: int, dtype: torch.dtype,
                     device: torch.device) -> torch.nn.Module:
    expected = {f"{keymap.PROJECTION_PREFIX}{k}": s for k, s in
                (("0.weight", (hidden, hidden)), ("0.bias", (hidden,)), ("2.weight", (256, hidden)),
                 ("2.bias", (256,)))}
    check_keys(set(expected), set(index.names(keymap.PROJECTION_PREFIX)), folder, "[SEG] projection")
    check_shapes(expected, index, folder, "[SEG] projection")
    state = {k[len(keymap.PROJECTION_PREFIX):]: v for k, v in index.iter_tensors(keymap.PROJECTION_PREFIX, dtype)}
    module = _projection(hidden).to(dtype)
    module.load_state_dict(state, strict=True)
    return module.to(device).eval()


def resolve_folder(path_or_name: str | os.PathLike) -> Path:
    """A model folder path, or a folder name under ``$SA2VA_MODELS_DIR``."""
    path = Path(path_or_name).expanduser()
    if path.is_dir():
        return path
    base = os.environ.get(MODELS_DIR_ENV)
    if base and not path.is_absolute() and (Path(base) / path).is_dir():
        return Path(base) / path
    raise ModelFolderError(f"Model folder not found: {path_or_name}. Give the path of a downloaded Sa2VA model "
                           f"folder (or set {MODELS_DIR_ENV} to the folder that holds it).")


#: CUDA compute capability from which bfloat16 is native (Ampere); older GPUs only emulate it, slowly
BF16_MIN_CAPABILITY = (8, 0)


def default_dtype(device: str | torch.device) -> torch.dtype:
    """The compute dtype of ``dtype="auto"`` on ``device`` (docs/design.md): bf16 where that GPU runs it natively (CUDA
    compute capability 8.0 or newer, asked of that GPU, not of the current one), else fp16 on CUDA; fp32 on the CPU
    and every other device.

    ``torch.cuda.is_bf16_supported()`` is not used: it answers for the current device only and counts the slow
    emulation of pre-Ampere GPUs as support. On ROCm builds (no NVIDIA compute capability) torch's own answer for
    that GPU is used."""
    device = torch.device(device)
    if device.type != "cuda":
        return torch.float32
    index = device.index if device.index is not None else torch.cuda.current_device()
    if torch.version.hip:
        with torch.cuda.device(index):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if tuple(torch.cuda.get_device_capability(index)) >= BF16_MIN_CAPABILITY else torch.float16


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    """The compute dtype for ``dtype``: a torch floating dtype, a name of :data:`DTYPES`, or None / "auto" for
    :func:`default_dtype` of ``device``."""
    if isinstance(dtype, str) and dtype in DTYPES:
        dtype = DTYPES[dtype]
    if dtype is None:
        return default_dtype(device)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise InputError(f"dtype must be torch.float32, torch.bfloat16, torch.float16 or one of "
                         f"{', '.join(DTYPES)}, got {dtype!r}.")
    return dtype


def load_model(path_or_name: str | os.PathLike, device: str | torch.device = "cpu",
               dtype: torch.dtype | str | None = torch.bfloat16, quantization: str | None = None,
               attn_implementation: str | None = None, compile_sam2: bool | str = False,
               encoder_cache_mb: float | None = None, device_map: str | dict | None = None) -> Sa2VAModel:
    """Load a Sa2VA model folder in the release format onto ``device``.

    dtype: a torch dtype, a name of :data:`DTYPES` ("bf16", ...), or None / "auto" for :func:`default_dtype`. quantization: None, "8bit" or "4bit"
    (bitsandbytes; the language model only). attn_implementation: None means "sdpa"; "eager" for exact parity.
    compile_sam2: wrap the SAM2 image encoder in ``torch.compile`` (True for the default inductor backend, or a
    backend name); opt-in, worth it on CUDA for many images, as the first call compiles for minutes.
    encoder_cache_mb: byte limit of :attr:`Sa2VAModel.encoder_cache` in MiB (None: ``$SA2VA_ENCODER_CACHE_MB``, else
    :data:`sa2va.cache.DEFAULT_CACHE_MB`; 0 turns the cache off).
    device_map: None (the vision-language model on ``device``) or an accelerate device map for a model larger than
    one GPU (Sa2VA-26B): ``"auto"``, ``"balanced"``, ``"balanced_low_0"``, ``"sequential"`` or a dict of module-name
    prefixes to devices; SAM2 and the [SEG] projection stay on ``device``. The Sa2VA Loader node offers the named
    maps as ``gpu_split`` (such a model stays where it was placed).
    Never downloads: use :mod:`sa2va.hub.download` for that."""
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"Device {device} was requested but CUDA is not available to this PyTorch; use "
                             f"device='cpu' or install a CUDA build of PyTorch.")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    dtype = resolve_dtype(dtype, device)
    if quantization not in QUANTIZATION_MODES:
        raise InputError(f"quantization must be None, '8bit' or '4bit', got {quantization!r}.")
    compile_sam2 = False if compile_sam2 is None else compile_sam2
    if not isinstance(compile_sam2, (bool, str)) or compile_sam2 == "":
        raise InputError(f"compile_sam2 must be False, True or a torch.compile backend name such as 'inductor', "
                         f"got {compile_sam2!r}.")
    if encoder_cache_mb is not None and (isinstance(encoder_cache_mb, bool) or
                                         not isinstance(encoder_cache_mb, (int, float)) or encoder_cache_mb < 0):
        raise InputError(f"encoder_cache_mb must be a number of MiB >= 0 (0 turns the cache off), got "
                         f"{encoder_cache_mb!r}.")
    if not (device_map is None or isinstance(device_map, dict) or device_map in DEVICE_MAPS):
        raise InputError(f"device_map must be None, one of {', '.join(DEVICE_MAPS)} or a dict of module names to "
                         f"devices, got {device_map!r}.")
    require_transformers()
    if quantization:
        require_bitsandbytes(quantization)
    require_accelerate(device, quantization)
    folder = resolve_folder(path_or_name)
    config = read_config(folder)
    family = detect_family(config, folder)
    adapter = adapter_for(family)
    index = read_index(folder)
    options = LoadOptions(dtype=dtype, device=device, quantization=quantization,
                          attn_implementation=attn_implementation or "sdpa", device_map=device_map)
    processor = adapter.load_processor(folder, config)
    grounding = load_grounding(folder, config, index, dtype, device, compile_sam2)
    projection = _load_projection(folder, index, adapter.hidden_size(config), dtype, device)
    vlm = adapter.load_vlm(folder, config, index, options)
    logger.info("Loaded %s (%s) on %s as %s%s", folder.name, family, device, dtype,
                f", {quantization}" if quantization else "")
    cache = EncoderCache(None if encoder_cache_mb is None else int(encoder_cache_mb * 2**20))
    return Sa2VAModel(folder, config, adapter, vlm, processor, projection, grounding, options, cache)
