"""Pure tensor functions on masks: conversions and overlays.

Masks are float probabilities in 0..1 shaped ``[N, H, W]`` unless a function says otherwise; images are float
``[H, W, 3]`` in 0..1. Every function works batched on CPU or GPU tensors, with no Python loop over pixels.
"""
from __future__ import annotations

import colorsys

import torch

MASK_ALPHA = 0.5


def palette(count: int) -> torch.Tensor:
    """``count`` distinct, saturated RGB colours ``[count, 3]`` in 0..1 (golden-ratio hue steps)."""
    colours = [colorsys.hsv_to_rgb((0.6 + i * 0.618033988749895) % 1.0, 0.85, 1.0) for i in range(count)]
    return torch.tensor(colours, dtype=torch.float32).reshape(count, 3)


def outline(binary: torch.Tensor, width: int = 2) -> torch.Tensor:
    """The inner boundary of binary masks ``[N, H, W]`` (bool), ``width`` pixels thick, as bool ``[N, H, W]``."""
    x = binary.float().unsqueeze(1)
    eroded = -torch.nn.functional.max_pool2d(-x, kernel_size=2 * width + 1, stride=1, padding=width)
    return (x - eroded).squeeze(1) > 0.5


def overlay(image: torch.Tensor, masks: torch.Tensor, alpha: float = MASK_ALPHA,
            threshold: float = 0.5) -> torch.Tensor:
    """Blend each mask in its own colour over ``image`` and draw its outline.

    image: ``[H, W, 3]`` 0..1; masks: ``[N, H, W]`` probabilities. The fill is alpha-blended with weight
    ``alpha * probability`` (soft edges stay soft); the outline of ``probability > threshold`` is drawn opaque.
    Returns ``[H, W, 3]`` in 0..1."""
    out = image.float().clone()
    if masks.shape[0] == 0:
        return out
    colours = palette(masks.shape[0]).to(out.device)
    for colour, mask in zip(colours, masks.float().to(out.device)):
        weight = (alpha * mask.clamp(0, 1)).unsqueeze(-1)
        out = out * (1 - weight) + colour * weight
    edges = outline(masks.to(out.device) > threshold)
    for colour, edge in zip(colours, edges):
        out[edge] = colour
    return out.clamp(0, 1)


def to_uint8(x: torch.Tensor):
    """Float 0..1 tensor -> uint8 numpy array (rounded), for saving as PNG."""
    return (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
