"""What the Segmentation and Video nodes share around one engine call: their own model when no Sa2VA Loader is
connected (:func:`handle_for`, :func:`release`, :func:`load_inputs`), and :func:`engine_run`, which binds the
library's :class:`~sa2va.monitor.Monitor` to ComfyUI's progress bar and Cancel button and asks ComfyUI's memory
manager for the run's activations first."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ..sa2va.errors import Cancelled
from ..sa2va.loading import DTYPES
from ..sa2va.monitor import Monitor
from . import comfy
from .common import MODEL_SLOT, advanced
from .loader import QUANTIZATIONS, Sa2VAHandle, load_handle

#: the nodes that can load their own model (their ``model`` input left unconnected)
STANDALONE_NODES = ("Sa2VASegmentation", "Sa2VAVideoSegmentation")


def standalone_users(prompt: dict) -> set[str]:
    """Ids of the queued workflow's Segmentation / Video nodes without a Sa2VA Loader (API-format ``prompt``: a
    connected input is a ``[node_id, output]`` link). Entries that are not nodes are skipped, never an error (the
    prompt hook reads prompts before ComfyUI validates them)."""
    users = set()
    for node_id, node in prompt.items():
        if not isinstance(node, dict) or node.get("class_type") not in STANDALONE_NODES:
            continue
        inputs = node.get("inputs")
        if not (isinstance(inputs, dict) and isinstance(inputs.get("model"), list)):
            users.add(str(node_id))
    return users


def handle_for(model: Sa2VAHandle | None, model_name: str, *, dtype: str = "auto", quantization: str = "none",
               node_id: str | None = None, prompt: dict | None = None) -> Sa2VAHandle:
    """The connected loader's model, else the node's own from :data:`~.common.MODEL_SLOT` (keyed by every load
    option; loaded on first use). Models that no node of the running workflow, nor of a workflow waiting in
    ComfyUI's queue, uses any more are released first."""
    if isinstance(prompt, dict):
        users = standalone_users(prompt)
        for waiting in comfy.waiting_prompts():
            users |= standalone_users(waiting)
        MODEL_SLOT.keep_only(users)
    if model is not None:
        MODEL_SLOT.forget(node_id)
        return model
    options = {"model": model_name, "dtype": dtype, "quantization": quantization, "attention": "sdpa",
               "device": "auto"}
    key = tuple(sorted(options.items()))
    return MODEL_SLOT.get(key, lambda: load_handle(**options), user=node_id)  # type: ignore[return-value]


def release(model: Sa2VAHandle | None, handle: Sa2VAHandle) -> None:
    """``clean_vram_after``: release the node's own model, or move a loader's model off the GPU (drop a quantised
    one; it is loaded again on the next use)."""
    if model is None:
        for key, value in list(MODEL_SLOT.values.items()):
            if value is handle:
                MODEL_SLOT.release(key)
    else:
        handle.release_vram()


def load_inputs(io) -> list:
    """dtype and quantization of the node's own model (used when no Sa2VA Loader is connected; advanced)."""
    return [
        io.Combo.Input("dtype", options=list(DTYPES), default="auto", optional=True, **advanced(io.Combo.Input),
                       tooltip="Without a Sa2VA Loader: the compute precision of the node's own model (auto: bf16 "
                               "on GPUs that support it, fp16 on older GPUs, fp32 on the CPU)."),
        io.Combo.Input("quantization", options=list(QUANTIZATIONS), default="none", optional=True,
                       **advanced(io.Combo.Input),
                       tooltip="Without a Sa2VA Loader: 8bit / 4bit (bitsandbytes) for the node's own model."),
    ]


@contextmanager
def engine_run(handle: Sa2VAHandle, activation_bytes: int, description: str) -> Iterator[Monitor]:
    """One engine call's surroundings: Cancel checked first, ``activation_bytes`` asked of ComfyUI's memory manager
    (:meth:`Sa2VAHandle.prepare`), a progress bar, and a :class:`~sa2va.monitor.Monitor` for the call. A library
    :class:`~sa2va.errors.Cancelled` caused by Cancel becomes ComfyUI's own interrupt (shown as "interrupted")."""
    bar = comfy.Progress(1, description)
    try:
        comfy.throw_if_interrupted()
        handle.prepare(activation_bytes)
        try:
            yield Monitor(progress=bar.set, cancelled=comfy.interrupted)
        except Cancelled:
            comfy.throw_if_interrupted()
            raise
        comfy.throw_if_interrupted()
    finally:
        bar.close()
