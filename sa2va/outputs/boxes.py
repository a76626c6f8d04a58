"""Bounding boxes of masks, and the box records ComfyUI's BOUNDING_BOX type carries.

A box is pixel ``(x1, y1, x2, y2)``: ``x1, y1`` the first column and row the mask covers, ``x2, y2`` one past the
last (so ``x2 - x1`` is the width in pixels, as in ``PIL.Image.crop``). A mask covers a pixel when its value is at
least the threshold and above 0; a mask that covers no pixel has no box (None).
"""
from __future__ import annotations

import torch

Box = tuple[int, int, int, int]


def mask_boxes(masks: torch.Tensor, threshold: float = 0.5) -> list[Box | None]:
    """The box of each mask of ``[N, H, W]`` at ``threshold`` (None for a mask that covers no pixel)."""
    if masks.ndim != 3:
        raise ValueError(f"mask_boxes takes masks [N, H, W], got shape {list(masks.shape)}")
    inside = (masks >= threshold) & (masks > 0)
    rows, cols = inside.any(2), inside.any(1)                      # [N, H], [N, W]
    boxes: list[Box | None] = []
    for row, col in zip(rows, cols):
        ys, xs = torch.nonzero(row).flatten(), torch.nonzero(col).flatten()
        if ys.numel() == 0:
            boxes.append(None)
            continue
        boxes.append((int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1))
    return boxes


def box_record(box: Box, **extra) -> dict:
    """One box as ComfyUI's BOUNDING_BOX records it (``x, y, width, height`` in pixels, as core SAM 3 returns them),
    plus ``extra`` keys (score, label, mask index) that consumers of the type ignore."""
    x1, y1, x2, y2 = box
    return {"x": x1, "y": y1, "width": x2 - x1, "height": y2 - y1, **extra}
