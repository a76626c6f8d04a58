"""The one bridge to ComfyUI: the V3 node API, model folders, progress, interrupt, memory management.

Inside ComfyUI it uses the newest *versioned* ``comfy_api`` module it has (``comfy_api.v0_0_2`` since ComfyUI 0.3.48;
never ``comfy_api.latest``, which ComfyUI's maintainers ask packs not to import) for ``io`` and ``ComfyExtension``,
``folder_paths``,
``comfy.utils.ProgressBar``, ``comfy.model_management``, ``comfy.model_patcher`` and ``server.PromptServer`` (the
prompt hook and the queue). Outside ComfyUI (tests, scripts) it falls back to plain behaviour: node classes are plain
classes whose ``execute`` returns a tuple, the models folder comes from ``$SA2VA_MODELS_DIR`` (default
``./models/sa2va``), progress goes to tqdm, nothing is ever interrupted, no prompt is ever queued, and models live
on the device they were loaded to. No other module of the pack imports ComfyUI.
"""
from __future__ import annotations

import importlib
import inspect
import json
import logging
import os
import pkgutil
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import torch

logger = logging.getLogger(__name__)

FOLDER_NAME = "sa2va"
MATTING_FOLDER_NAME = "vitmatte"

try:  # ComfyUI's modules exist only inside a running ComfyUI
    import comfy.model_management as _mm
    import comfy.model_patcher as _patcher
    import comfy.utils as _cutils
    import folder_paths as _folder_paths

    IN_COMFY = True
except ImportError:
    _mm = _patcher = _cutils = _folder_paths = None
    IN_COMFY = False


#: versioned comfy_api modules (``v0_0_2``, ...); ``latest`` is never imported by the pack
_VERSION_NAME = re.compile(r"v(\d+)_(\d+)_(\d+)")


def v3_api(import_module: Callable[[str], ModuleType] = importlib.import_module) -> tuple[str, object, type] | None:
    """``(version, io, ComfyExtension)`` from the newest versioned ``comfy_api`` module that imports and provides
    both (``v0_0_2`` on ComfyUI 0.3.48 and newer; a newer version when the running ComfyUI has one, falling back
    to older ones when it fails to import), or None without ComfyUI's V3 API."""
    try:
        package = import_module("comfy_api")
    except ImportError:
        return None
    found = [m.name for m in pkgutil.iter_modules(getattr(package, "__path__", []))]
    versions = sorted((n for n in found if _VERSION_NAME.fullmatch(n)),
                      key=lambda n: tuple(int(x) for x in _VERSION_NAME.fullmatch(n).groups()), reverse=True)
    for name in versions:
        try:
            module = import_module(f"comfy_api.{name}")
        except ImportError as exc:
            logger.debug("comfy_api.%s does not import (%s); trying an older version", name, exc)
            continue
        if hasattr(module, "io") and hasattr(module, "ComfyExtension"):
            return name, module.io, module.ComfyExtension
    return None


_API = v3_api()
API_VERSION, io, _ComfyExtension = _API if _API is not None else (None, None, None)
HAS_V3 = _API is not None


def supported(factory: Callable, **options) -> dict:
    """The ``options`` that ``factory`` (``io.Schema``, ``io.Combo.Input``, ...) names as parameters: newer schema
    features (``search_aliases``, ``advanced``) are passed only to a ComfyUI that has them."""
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return {}
    return {k: v for k, v in options.items() if k in parameters}


#: the base class of the pack's node classes: ``io.ComfyNode`` inside ComfyUI, a plain class outside
NodeBase: type = io.ComfyNode if HAS_V3 else object


def node_output(*values):
    """What ``execute`` returns: ``io.NodeOutput(*values)`` inside ComfyUI, the plain tuple outside."""
    return io.NodeOutput(*values) if io is not None else values


def schema_api():
    """The versioned ``comfy_api`` module's ``io``, for ``define_schema`` (which ComfyUI alone calls)."""
    if io is None:
        raise RuntimeError("The node schemas need ComfyUI's comfy_api (ComfyUI 0.3.48 or newer); run the nodes "
                           "inside ComfyUI.")
    return io


def extension(nodes: list[type]):
    """The ComfyExtension that registers ``nodes`` (ComfyUI calls ``get_node_list``)."""

    class Sa2VAExtension(_ComfyExtension):
        async def get_node_list(self) -> list[type]:
            return list(nodes)

    return Sa2VAExtension()


def hidden(node: type, name: str):
    """A hidden input of the running node (``unique_id``, ``prompt``: ComfyUI sets ``cls.hidden``); None outside."""
    return getattr(getattr(node, "hidden", None), name, None)


class Interrupted(Exception):
    """Raised outside ComfyUI when a run is cancelled (inside ComfyUI its own interrupt exception is raised)."""


# ------------------------------------------------------------------------------------------------- types
def bounding_box_type() -> bool:
    """True when the running ComfyUI defines the BOUNDING_BOX type (``io.BoundingBox``, the boxes of core SAM 3),
    so box outputs connect to core nodes that take boxes; False outside ComfyUI or in older versions."""
    return io is not None and hasattr(io, "BoundingBox")


def dynamic_combo() -> bool:
    """True when the running ComfyUI has ``io.DynamicCombo`` (an option that shows only its own inputs; ComfyUI 0.8
    has it, 0.3.64 does not): the Segmentation and Video nodes then group their inputs (:mod:`.groups`)."""
    return io is not None and hasattr(io, "DynamicCombo")


def boxes_output(boxes: list[list[dict]]):
    """Boxes as the node returns them: the per-image lists of ``{x, y, width, height, ...}`` records themselves where
    ComfyUI has the BOUNDING_BOX type, else the same structure as a JSON string."""
    return boxes if bounding_box_type() else json.dumps(boxes)


# ------------------------------------------------------------------------------------------- model folders
def register_model_folder() -> None:
    """Add ``<models>/sa2va`` and ``<models>/vitmatte`` to ComfyUI's folder list (appends to a user's
    extra_model_paths.yaml entries)."""
    if IN_COMFY:
        for name in (FOLDER_NAME, MATTING_FOLDER_NAME):
            _folder_paths.add_model_folder_path(name, os.path.join(_folder_paths.models_dir, name))


def model_dirs(name: str = FOLDER_NAME) -> list[Path]:
    """Every registered models folder of kind ``name`` (sa2va or vitmatte), the default download target first.

    Outside ComfyUI: ``$SA2VA_MODELS_DIR`` (default ``./models/sa2va``) and its sibling ``vitmatte`` folder."""
    if IN_COMFY:
        return [Path(p) for p in _folder_paths.get_folder_paths(name)]
    base = Path(os.environ.get("SA2VA_MODELS_DIR", os.path.join("models", FOLDER_NAME)))
    return [base if name == FOLDER_NAME else base.parent / name]


# -------------------------------------------------------------------------------------- progress, cancel
class Progress:
    """A progress bar: ComfyUI's ProgressBar on the node, else tqdm (silent when disabled)."""

    def __init__(self, total: int, description: str = "") -> None:
        self.total = max(int(total), 1)
        self.value = 0
        if IN_COMFY:
            self._bar = _cutils.ProgressBar(self.total)
            self._tqdm = None
        else:
            from tqdm import tqdm

            self._bar = None
            self._tqdm = tqdm(total=self.total, desc=description, disable=True, leave=False)

    def set(self, value: int, total: int | None = None) -> None:
        if total is not None:
            self.total = max(int(total), 1)
        self.value = min(int(value), self.total)
        if self._bar is not None:
            self._bar.update_absolute(self.value, self.total)
        elif self._tqdm is not None:
            self._tqdm.total = self.total
            self._tqdm.n = self.value
            self._tqdm.refresh()

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()


def interrupted() -> bool:
    """True when the user pressed Cancel in ComfyUI (never outside it)."""
    return bool(IN_COMFY and _mm.processing_interrupted())


def throw_if_interrupted() -> None:
    """Raise ComfyUI's interrupt exception (it shows "interrupted", not an error) when Cancel was pressed."""
    if IN_COMFY:
        _mm.throw_exception_if_processing_interrupted()


# ------------------------------------------------------------------------------------- devices, memory
def torch_device() -> torch.device:
    """Where models run: ComfyUI's device (the CPU with ``--cpu``), else CUDA when available, else the CPU."""
    if IN_COMFY:
        return _mm.get_torch_device()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def offload_device() -> torch.device:
    """Where an idle unquantised model waits: ComfyUI's offload device, else the run device."""
    if IN_COMFY:
        return _mm.unet_offload_device()
    return torch_device()


def output_device() -> torch.device:
    return _mm.intermediate_device() if IN_COMFY else torch.device("cpu")


def free_memory(bytes_needed: int, device: torch.device) -> None:
    """Ask ComfyUI to evict its own models until ``bytes_needed`` are free on ``device`` (no-op outside)."""
    if IN_COMFY and device.type != "cpu":
        _mm.free_memory(bytes_needed, device)


def soft_empty_cache() -> None:
    if IN_COMFY:
        _mm.soft_empty_cache()
    elif torch.cuda.is_available():
        torch.cuda.empty_cache()


class _Holder(torch.nn.Module):
    """Holds the Sa2VA modules for ComfyUI's ModelPatcher (which assigns ``.device``, read-only on HF models)."""

    def __init__(self, modules: dict[str, torch.nn.Module]) -> None:
        super().__init__()
        self.parts = torch.nn.ModuleDict(modules)


def make_patcher(modules: dict[str, torch.nn.Module], load_device: torch.device, offload: torch.device,
                 extra_bytes: Callable[[], int] = lambda: 0, on_offload: Callable[[], None] = lambda: None):
    """A ModelPatcher registering ``modules`` with ComfyUI's memory manager (None outside ComfyUI).

    ``extra_bytes()``: memory the model holds on ``load_device`` outside its modules (the encoder cache), counted in
    the size and loaded size ComfyUI sees; ``on_offload()`` lets go of it, and is called whenever ComfyUI moves any
    part of the model off ``load_device`` (eviction for another model, "Unload Models", ``unload_patcher``)."""
    if not IN_COMFY:
        return None

    class Sa2VAModelPatcher(_patcher.ModelPatcher):
        def model_size(self) -> int:
            return super().model_size() + extra_bytes()

        def loaded_size(self) -> int:
            return super().loaded_size() + extra_bytes()

        def partially_unload(self, device_to, memory_to_free=0, *args, **kwargs) -> int:
            held = extra_bytes()
            on_offload()
            return super().partially_unload(device_to, memory_to_free, *args, **kwargs) + held

        def detach(self, unpatch_all=True):
            on_offload()
            return super().detach(unpatch_all)

    return Sa2VAModelPatcher(_Holder(modules), load_device=load_device, offload_device=offload)


def make_resident_patcher(size_bytes: int, drop: Callable[[], None], load_device: torch.device,
                          offload: torch.device, extra_bytes: Callable[[], int] = lambda: 0):
    """A ModelPatcher standing for a model that cannot move (bitsandbytes 8/4-bit weights stay where they were
    loaded), so that ComfyUI's memory manager still knows it (None outside ComfyUI).

    ComfyUI counts ``size_bytes`` (the model's actual weight bytes) as loaded on ``load_device``; when it unloads
    the model ("Unload Models", or evicting it to make room for another model) ``drop()`` is called, which lets go
    of the weights (and ``extra_bytes()``, the encoder cache counted with them): the owner loads them again before its
    next use. Nothing is ever moved."""
    if not IN_COMFY:
        return None

    class ResidentModel(_patcher.ModelPatcher):
        def __init__(self) -> None:
            super().__init__(_Holder({}), load_device=load_device, offload_device=offload, size=size_bytes)
            self.resident = True

        def model_size(self) -> int:
            return size_bytes + extra_bytes()

        def loaded_size(self) -> int:
            return self.model_size() if self.resident else 0

        def current_loaded_device(self) -> torch.device:
            return self.load_device if self.resident else self.offload_device

        def partially_load(self, device_to, extra_memory=0, *args, **kwargs) -> int:
            self.resident = True  # the owner has (re)loaded the weights before asking
            return 0

        def partially_unload(self, device_to, memory_to_free=0, *args, **kwargs) -> int:
            return 0  # all or nothing: ComfyUI then calls detach()

        def detach(self, unpatch_all=True):
            if self.resident:
                logger.info("ComfyUI unloads a quantised Sa2VA model; it is loaded again on its next use")
                self.resident = False
                drop()
            return self.model

    return ResidentModel()


def load_patcher(patcher, memory_required: int = 0) -> None:
    """Move a registered model fully onto its load device right before use (ComfyUI may have evicted it)."""
    if patcher is not None:
        _mm.load_models_gpu([patcher], memory_required=memory_required, force_full_load=True)


def unload_patcher(patcher) -> None:
    """Unload a registered model now (an unquantised one moves to its offload device, a resident one is dropped)
    and take it off ComfyUI's loaded list."""
    if patcher is None or not IN_COMFY:
        return
    for loaded in list(_mm.current_loaded_models):
        if loaded.model is patcher:
            loaded.model_unload()
            _mm.current_loaded_models.remove(loaded)
    soft_empty_cache()


# ------------------------------------------------------------------------------------------- prompt queue
def _prompt_server():
    """ComfyUI's ``PromptServer.instance`` (created before custom nodes load), or None outside ComfyUI."""
    if not IN_COMFY:
        return None
    try:
        server = importlib.import_module("server")
    except ImportError:
        return None
    return getattr(getattr(server, "PromptServer", None), "instance", None)


#: what the prompt hook uses of ComfyUI's server and queue (ComfyUI 0.3.x and 0.8 have them all)
_SERVER_NEEDS = ("add_on_prompt_handler", "prompt_queue", "loop")
_QUEUE_NEEDS = ("mutex", "get_tasks_remaining")


def on_prompt(hook: Callable[[object], None]) -> bool:
    """Call ``hook(body)`` with the JSON body of every prompt posted to ComfyUI (``add_on_prompt_handler``), on the
    server's event loop before ComfyUI validates and queues the prompt. ComfyUI takes a handler's return value as the
    body: the body goes on unchanged whatever ``hook`` does. False (nothing registered) outside ComfyUI, or when the
    running ComfyUI lacks the hook, its queue's lock or its event loop."""
    server = _prompt_server()
    queue = getattr(server, "prompt_queue", None)
    if server is None or not all(hasattr(server, n) for n in _SERVER_NEEDS) or \
            not all(hasattr(queue, n) for n in _QUEUE_NEEDS):
        return False

    def handler(body):
        hook(body)
        return body

    server.add_on_prompt_handler(handler)
    return True


@contextmanager
def held_queue() -> Iterator[bool]:
    """Hold ComfyUI's prompt queue (its lock: no prompt starts meanwhile) and say whether it is idle (no prompt
    running or waiting). Outside ComfyUI nothing ever runs: idle. Inside a ComfyUI whose queue lacks the lock:
    never idle."""
    server = _prompt_server()
    queue = getattr(server, "prompt_queue", None)
    if server is None and not IN_COMFY:
        yield True
    elif not all(hasattr(queue, n) for n in _QUEUE_NEEDS):
        yield False
    else:
        with queue.mutex:
            yield queue.get_tasks_remaining() == 0


def waiting_prompts() -> list[dict]:
    """The API prompts waiting in ComfyUI's queue (queued, not yet running; ``get_current_queue_volatile``, whose
    items hold the prompt third); [] outside ComfyUI."""
    queue = getattr(_prompt_server(), "prompt_queue", None)
    current = getattr(queue, "get_current_queue_volatile", None)
    if current is None:
        return []
    _, waiting = current()
    return [item[2] for item in waiting if isinstance(item, (list, tuple)) and len(item) > 2 and
            isinstance(item[2], dict)]


def call_later(seconds: float, callback: Callable[[], None]) -> bool:
    """Run ``callback()`` on ComfyUI's server event loop after ``seconds`` (call from that loop, as the prompt hook
    is); False (nothing scheduled) outside ComfyUI."""
    loop = getattr(_prompt_server(), "loop", None)
    if loop is None:
        return False
    loop.call_later(seconds, callback)
    return True
