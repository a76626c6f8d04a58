"""Progress and Cancel for the engine's calls: one :class:`Monitor` per call (the nodes bind it to ComfyUI's
progress bar and Cancel button; scripts pass a callback or nothing)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch



@dataclass
class Monitor:
    """Progress and cancellation of one engine call; the nodes bind it to ComfyUI's progress bar and Cancel button.

    progress(done, total): work units done so far of ``total`` (each ``generate`` call counts ``max_new_tokens``,
    one per token generated; each image's masks count one). cancelled(): True stops the call with
    :class:`~sa2va.errors.Cancelled` before the next stage or token."""

    progress: Callable[[int, int], None] | None = None
    cancelled: Callable[[], bool] | None = None

    def is_cancelled(self) -> bool:
        return self.cancelled is not None and bool(self.cancelled())

    def report(self, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(done, total)


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
