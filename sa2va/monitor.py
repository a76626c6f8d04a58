"""Progress and Cancel for the engine's calls: one :class:`Monitor` per call (the nodes bind it to ComfyUI's
progress bar and Cancel button; scripts pass a callback or nothing)."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch

from .errors import Cancelled

#: the Monitor whose :meth:`Monitor.watching` block is running in this thread / task (see :func:`cancel_point`)
_WATCHING: ContextVar[Monitor | None] = ContextVar("sa2va_monitor", default=None)


@dataclass
class Monitor:
    """Progress and cancellation of one engine call; the nodes bind it to ComfyUI's progress bar and Cancel button.

    progress(done, total): work units done so far of ``total`` (each ``generate`` call counts ``max_new_tokens``,
    one per token generated; each image's masks count one). cancelled(): True stops the call with
    :class:`~sa2va.errors.Cancelled` before the next stage or token, and inside :meth:`watching` before the next
    block of an encoder or language model."""

    progress: Callable[[int, int], None] | None = None
    cancelled: Callable[[], bool] | None = None

    def is_cancelled(self) -> bool:
        return self.cancelled is not None and bool(self.cancelled())

    def report(self, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(done, total)

    @contextmanager
    def watching(self, *models: torch.nn.Module) -> Iterator[None]:
        """Cancel inside the models' passes, not only between stages: for the duration of the block, every entry of
        the models' block lists (:func:`block_lists`: the layers of a vision tower, of SAM2's Hiera and SAM 3's
        ViT, of the language model) gets a forward pre-hook that raises :class:`~sa2va.errors.Cancelled` when
        ``cancelled()`` says so, and :func:`cancel_point` (the SAM2 encoder's fast path, which runs its blocks
        without calling them as modules) polls this monitor. One image-encoder pass on the CPU takes 10-40 s with
        full-size weights; a block takes well under a second. The hooks read nothing and change nothing, so the
        numbers are those of an unwatched call. Without a ``cancelled`` callback nothing is installed."""
        if self.cancelled is None:
            yield
            return
        token = _WATCHING.set(self)

        def hook(module: torch.nn.Module, args) -> None:
            if self.is_cancelled():
                raise Cancelled(f"Segmentation was cancelled inside {type(module).__name__}.")

        handles = [block.register_forward_pre_hook(hook) for model in models for blocks in block_lists(model)
                   for block in blocks]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            _WATCHING.reset(token)


def block_lists(model: torch.nn.Module) -> list[torch.nn.ModuleList]:
    """The outermost ``ModuleList`` s of ``model`` with at least two entries (transformer layers, encoder blocks,
    FPN convolutions), not those nested inside an entry of another."""
    found: list[torch.nn.ModuleList] = []

    def walk(module: torch.nn.Module) -> None:
        for child in module.children():
            if isinstance(child, torch.nn.ModuleList) and len(child) >= 2:
                found.append(child)
            else:
                walk(child)

    walk(model)
    return found


def cancel_point(stage: str) -> None:
    """Raise :class:`~sa2va.errors.Cancelled` when the monitor of the :meth:`Monitor.watching` block running in this
    context was cancelled; a no-op outside one and while torch.compile traces (a compiled encoder is not polled
    inside its graph)."""
    monitor = _WATCHING.get()
    if monitor is not None and not torch.compiler.is_compiling() and monitor.is_cancelled():
        raise Cancelled(f"Segmentation was cancelled inside {stage}.")


class TokenMonitor:
    """A stopping criterion: reports each generated token to a :class:`Monitor` (from ``offset``) and stops every row
    on Cancel."""

    def __init__(self, monitor: Monitor, offset: int, total: int) -> None:
        self.monitor, self.offset, self.total, self.count = monitor, offset, total, 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        self.count += 1
        self.monitor.report(self.offset + self.count, self.total)
        return torch.full((input_ids.shape[0],), self.monitor.is_cancelled(), dtype=torch.bool,
                          device=input_ids.device)
