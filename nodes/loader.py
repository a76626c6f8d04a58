"""Sa2VA Loader: model choices, folder resolution, download, and the SA2VA_MODEL handle.

:func:`load_handle` is the loader's work (also used by the Segmentation and Video nodes without a loader);
:class:`Sa2VALoader` is the node.
"""
from __future__ import annotations

import gc
import logging
import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..sa2va.hub import catalog
from ..sa2va.hub.download import DownloadCancelled, download, is_complete, missing_files, required_files
from ..sa2va.errors import InputError, ModelFolderError
from ..sa2va.hub.checkpoint import read_index
from ..sa2va.activations import MemoryProfile
from ..sa2va.loading import DEVICE_MAPS, DTYPES, load_model, resolve_dtype
from ..sa2va.model import Sa2VAModel
from ..sa2va.quantization import estimated_bytes, require_bitsandbytes
from . import comfy
from .common import MODEL_TOOLTIP, advanced, model_socket

logger = logging.getLogger(__name__)

#: extra words the node search finds this node by (ComfyUI versions with search aliases)
SEARCH_ALIASES = ["sa2va", "load vlm", "segmentation model", "sam2 loader"]

QUANTIZATIONS = {"none": None, "8bit": "8bit", "4bit": "4bit"}
#: the Loader's gpu_split choices: off, or an accelerate device map over every visible GPU
GPU_SPLITS = ("off",) + DEVICE_MAPS
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def attention_choices() -> list[str]:
    """sdpa (default), eager, and flash_attention_2 when the flash-attn package is installed."""
    choices = ["sdpa", "eager"]
    try:
        import flash_attn  # noqa: F401

        choices.append("flash_attention_2")
    except ImportError:
        pass
    return choices


def device_choices() -> list[str]:
    """auto (ComfyUI's device), cpu, and every visible CUDA device."""
    return ["auto", "cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]


def local_models() -> list[str]:
    """Names of the sub-folders of every registered sa2va folder that hold a config.json (sorted, unique)."""
    names: set[str] = set()
    for base in comfy.model_dirs():
        if base.is_dir():
            names.update(p.name for p in base.iterdir() if (p / "config.json").is_file() and _SAFE_NAME.match(p.name))
    return sorted(names)


def model_choices() -> list[str]:
    """The official models (the default first), then every other local model folder."""
    official = [entry.name for entry in catalog.CATALOG]
    return official + [name for name in local_models() if name not in official]


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _SAFE_NAME.match(name) or name in (".", ".."):
        raise InputError(f"Model name {name!r} is not a plain folder name; pick a model from the list (folders "
                         f"live in the sa2va models folder).")


def find_local(name: str) -> Path | None:
    """The folder ``name`` under a registered sa2va folder. The name must be a plain folder name (no '..', no
    separator, not absolute); the folder itself, or the sa2va folder, may be a symlink the user created (models
    on another drive), and is used as it is."""
    _check_name(name)
    for base in comfy.model_dirs():
        candidate = base / name
        if candidate.is_dir():
            return candidate
    return None


def ensure_model_folder(name: str, progress_factory=comfy.Progress) -> Path:
    """A complete local folder for ``name``: found locally (no network), else downloaded if it is official."""
    folder = find_local(name)
    entry = catalog.find(name)
    required = required_files(entry.family, entry.tokenizer) if entry else required_files(_local_family(folder))
    if folder is not None and is_complete(folder, required):
        return folder
    if entry is None:
        if folder is not None:
            missing = ", ".join(missing_files(folder, required)[:5])
            raise ModelFolderError(f"Incomplete model folder {folder}: {missing} "
                                   f"missing, and it is not an official model the loader can download; copy the "
                                   f"missing files.")
        dirs = ", ".join(str(d) for d in comfy.model_dirs())
        raise ModelFolderError(f"Model {name!r} not found in {dirs}; pick one of the listed models.")
    target = folder if folder is not None else comfy.model_dirs()[0] / entry.name
    logger.info("Downloading %s into %s", entry.repo_id, target)
    bar = progress_factory(1, f"download {entry.name}")
    try:
        download(entry.repo_id, target, progress=lambda done, total: bar.set(done, total),
                 cancelled=comfy.interrupted, required=required)
    except DownloadCancelled:
        comfy.throw_if_interrupted()
        raise
    finally:
        bar.close()
    return target


def _local_family(folder: Path | None) -> str:
    """The family of a hand-placed folder from its config.json ("" when it cannot be told)."""
    from ..sa2va.hub.checkpoint import detect_family, read_config

    if folder is None:
        return ""
    try:
        return detect_family(read_config(folder), folder)
    except ModelFolderError:
        return ""


@dataclass
class Sa2VAHandle:
    """What travels on an SA2VA_MODEL socket: the loaded model plus how ComfyUI manages its memory.

    Unquantised models are registered with ComfyUI's memory manager through ``patcher`` and moved onto the run
    device by :meth:`prepare` before each use, so "Unload Models" frees their VRAM. Quantised models cannot move
    (bitsandbytes): they are registered through a resident stand-in of their actual size (``size_bytes``), so
    ComfyUI counts them and evicts other models for them; "Unload Models" and ``clean_vram_after`` drop them
    (``model`` becomes None) and :meth:`prepare` loads them again (``reload``) on the next use."""

    model: Sa2VAModel | None
    name: str
    quantization: str | None
    device: torch.device
    patcher: object | None = None
    options: dict = field(default_factory=dict)
    size_bytes: int = 0
    profile: MemoryProfile | None = None
    reload: Callable[[], Sa2VAModel] | None = field(default=None, repr=False)
    #: the accelerate device map the vision-language model was spread with (``gpu_split``), or None
    split: str | None = None

    @property
    def resident(self) -> bool:
        """True for a model that cannot move (quantised, or spread over several GPUs): it is dropped and loaded
        again instead of being offloaded."""
        return self.quantization is not None or self.split is not None

    def activation_bytes(self, height: int, width: int, max_new_tokens: int, images: int = 1) -> int:
        """The activation memory one prediction will use (:class:`~sa2va.activations.MemoryProfile`); 0 when unknown."""
        if self.profile is None:
            return 0
        return self.profile.activation_bytes(height, width, max_new_tokens, images)

    def prepare(self, activation_bytes: int = 0) -> None:
        """Make the model ready on its run device (call right before each use): ComfyUI evicts other models until
        the weights (if not resident) and ``activation_bytes`` fit; a dropped quantised model is loaded again."""
        if not self.resident:
            comfy.load_patcher(self.patcher, activation_bytes)
            return
        if self.patcher is not None:
            comfy.load_patcher(self.patcher, activation_bytes)
        else:
            comfy.free_memory(activation_bytes, self.device)
        if self.model is None and self.reload is not None:
            comfy.free_memory(self.size_bytes + activation_bytes, self.device)
            logger.info("Loading %s again (it was unloaded)", self.name)
            self.model = self.reload()
            if self.patcher is not None:
                comfy.load_patcher(self.patcher, activation_bytes)  # resident again in ComfyUI's list

    def cache_bytes(self) -> int:
        """Bytes held by the model's encoder cache (sa2va/cache.py), on the run device: ComfyUI counts them with the
        model, and they go when the model is offloaded or dropped."""
        return self.model.encoder_cache.nbytes if self.model is not None else 0

    def drop(self) -> None:
        """Let go of a resident model's weights (they cannot move off the GPU); :meth:`prepare` reloads them."""
        if self.model is None or self.reload is None:
            return
        self.model = None
        gc.collect()
        comfy.soft_empty_cache()

    def release_vram(self) -> None:
        """``clean_vram_after``: move an unquantised model off the GPU now; drop a quantised one (reloaded on the
        next use). The model's encoder cache (sa2va/cache.py) is emptied either way."""
        if self.model is not None:
            self.model.encoder_cache.clear()
        if not self.resident:
            comfy.unload_patcher(self.patcher)
        elif self.patcher is not None:
            comfy.unload_patcher(self.patcher)  # ComfyUI calls drop() through the stand-in
            self.drop()
        else:
            self.drop()


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return comfy.torch_device()
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"Unknown device name {device!r}; use auto, cpu or cuda:N.") from exc
    return resolved


def load_handle(*, model: str = catalog.DEFAULT_MODEL, dtype: str = "auto", quantization: str = "none",
                attention: str = "sdpa", device: str = "auto", gpu_split: str = "off") -> Sa2VAHandle:
    """Load (downloading first when needed) a Sa2VA model and wrap it for ComfyUI's memory manager.

    gpu_split: "off", or an accelerate device map name (:data:`GPU_SPLITS`) that spreads the vision-language model
    over every visible GPU (SAM2 and the projection stay on ``device``); such a model is resident, like a quantised
    one (:attr:`Sa2VAHandle.resident`)."""
    if dtype not in DTYPES:
        raise InputError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}.")
    if quantization not in QUANTIZATIONS:
        raise InputError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, got {quantization!r}.")
    if gpu_split not in GPU_SPLITS:
        raise InputError(f"gpu_split must be one of {', '.join(GPU_SPLITS)}, got {gpu_split!r}.")
    run_device = resolve_device(device)
    quant = QUANTIZATIONS[quantization]
    split = None if gpu_split == "off" else gpu_split
    if quant and run_device.type not in ("cuda", "cpu"):
        raise InputError(f"{quantization} quantization needs a CUDA device or the CPU, got {run_device}.")
    if quant:
        require_bitsandbytes(quant)  # before any download or eviction, not after
    folder = ensure_model_folder(model)
    comfy.throw_if_interrupted()
    if quant or split:
        return _resident_handle(folder, model, quant, run_device, dtype, attention, split)
    offload = comfy.offload_device() if comfy.IN_COMFY else run_device
    loaded = load_model(folder, device=offload, dtype=resolve_dtype(dtype, run_device), attn_implementation=attention)
    cache = loaded.encoder_cache  # counted with the model and emptied whenever ComfyUI moves it off the GPU
    patcher = comfy.make_patcher({"vlm": loaded.vlm, "projection": loaded.projection,
                                  "sam2": loaded.grounding.model}, run_device, offload,
                                 extra_bytes=lambda: cache.nbytes, on_offload=cache.clear)
    return Sa2VAHandle(loaded, model, None, run_device, patcher, {"dtype": dtype, "attention": attention},
                       size_bytes=loaded.memory_bytes(), profile=loaded.memory_profile())


def _call(method: weakref.WeakMethod) -> object:
    bound = method()
    return bound() if bound is not None else None


def _resident_handle(folder: Path, name: str, quant: str | None, run_device: torch.device, dtype: str,
                     attention: str, split: str | None) -> Sa2VAHandle:
    """A quantised or GPU-split model loaded on ``run_device`` (after ComfyUI made room there for its estimated
    size), registered with ComfyUI's memory manager at its actual size through a resident stand-in. (ComfyUI manages
    one device: a split model is counted on ``run_device`` in full, which over-asks there rather than under-asks.)"""
    compute = resolve_dtype(dtype, run_device)
    estimate = estimated_bytes(((n, t.shape) for n, t in read_index(folder).tensors.items()), quant, compute)

    def load() -> Sa2VAModel:
        return load_model(folder, device=run_device, dtype=dtype, quantization=quant, attn_implementation=attention,
                          device_map=split)

    comfy.free_memory(estimate, run_device)
    loaded = load()
    handle = Sa2VAHandle(loaded, name, quant, run_device, None,
                         {"dtype": dtype, "attention": attention, "gpu_split": split or "off"},
                         size_bytes=loaded.memory_bytes(), profile=loaded.memory_profile(), reload=load, split=split)
    drop = weakref.WeakMethod(handle.drop)  # the stand-in must not keep the handle alive
    cached = weakref.WeakMethod(handle.cache_bytes)
    handle.patcher = comfy.make_resident_patcher(handle.size_bytes, lambda: _call(drop), run_device,
                                                 comfy.offload_device(), extra_bytes=lambda: _call(cached) or 0)
    return handle


class Sa2VALoader(comfy.NodeBase):
    """Load a Sa2VA model once for every connected node (the SA2VA_MODEL handle, :class:`Sa2VAHandle`)."""

    @classmethod
    def define_schema(cls):
        io = comfy.schema_api()
        return io.Schema(
            node_id="Sa2VALoader",
            display_name="Sa2VA Loader",
            **comfy.supported(io.Schema, search_aliases=SEARCH_ALIASES),
            category="Sa2VA",
            description="Load a Sa2VA model (downloading it first when needed) for one or more Sa2VA "
                        "Segmentation nodes. The model is loaded once and shared by every connected node.",
            inputs=[
                io.Combo.Input("model", options=model_choices(), default=catalog.DEFAULT_MODEL, tooltip=MODEL_TOOLTIP),
                io.Combo.Input("dtype", options=list(DTYPES), default="auto",
                               tooltip="Compute precision. auto: bf16 on GPUs that support it, fp16 on older GPUs, "
                                       "fp32 on the CPU."),
                io.Combo.Input("quantization", options=list(QUANTIZATIONS), default="none",
                               tooltip="8bit / 4bit (bitsandbytes) shrink the language model about 2x / 4x; the "
                                       "vision tower and SAM2 stay in the compute dtype. Quantised models stay on "
                                       "the GPU until the workflow stops using them."),
                io.Combo.Input("attention", options=attention_choices(), default="sdpa",
                               tooltip="Attention kernel: sdpa (default), eager (exact reference numerics), "
                                       "flash_attention_2 (listed when flash-attn is installed)."),
                io.Combo.Input("device", options=device_choices(), default="auto",
                               tooltip="auto uses ComfyUI's device (the CPU when ComfyUI runs with --cpu)."),
                io.Combo.Input("gpu_split", options=list(GPU_SPLITS), default="off", optional=True,
                               **advanced(io.Combo.Input),
                               tooltip="Spread the language and vision model over every visible GPU (an accelerate "
                                       "device map: auto, balanced, ...) for a model larger than one GPU, e.g. "
                                       "Sa2VA-26B unquantised on two 32 GB cards; SAM2 stays on the device above. "
                                       "The model then stays where it was placed until it is unloaded."),
            ],
            outputs=[model_socket(io).Output(display_name="model", tooltip="A loaded Sa2VA model")],
        )

    @classmethod
    def execute(cls, *, model: str, dtype: str, quantization: str, attention: str, device: str,
                gpu_split: str = "off"):
        return comfy.node_output(load_handle(model=model, dtype=dtype, quantization=quantization,
                                             attention=attention, device=device, gpu_split=gpu_split))
