"""Pure tensor functions on masks: conversions and overlays.

Masks are float probabilities in 0..1 shaped ``[N, H, W]`` unless a function says otherwise; images are float
``[H, W, 3]`` in 0..1. Every function works batched on CPU or GPU tensors, with no Python loop over pixels.
"""
from __future__ import annotations

import colorsys
import math

import numpy as np
import torch
import torch.nn.functional as F

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


# ------------------------------------------------------------------------------------------- refinement
def remap_levels(masks: torch.Tensor, black_point: float, white_point: float) -> torch.Tensor:
    """Black/white point remap of probabilities: ``(p - black) / (white - black)``, clamped to 0..1.

    masks: ``[N, H, W]`` in 0..1. Values at or below ``black_point`` become 0, at or above ``white_point`` 1,
    linear in between. Requires ``0 <= black_point < white_point <= 1``."""
    if not 0.0 <= black_point < white_point <= 1.0:
        raise ValueError(f"need 0 <= black_point < white_point <= 1, got {black_point} and {white_point}")
    return ((masks - black_point) / (white_point - black_point)).clamp(0.0, 1.0)


def _shift_max(x: torch.Tensor, dim: int, fill: float) -> torch.Tensor:
    """Max of ``[N, H, W]`` and its neighbours one step either way along ``dim`` (-1: W, -2: H; ``fill`` beyond
    the border)."""
    padded = F.pad(x, (1, 1) if dim == -1 else (0, 0, 1, 1), value=fill)
    length = x.shape[dim]
    return torch.maximum(torch.maximum(padded.narrow(dim, 0, length), padded.narrow(dim, 1, length)),
                         padded.narrow(dim, 2, length))


def _grey_morphology(masks: torch.Tensor, iterations: int, dilate: bool) -> torch.Tensor:
    """``iterations`` passes of a 3x3 max (dilate) or min (erode) filter, alternating a cross and a square
    structuring element: after n passes the element is an octagon of radius n, a close digital disk."""
    if iterations <= 0:
        return masks
    sign = 1.0 if dilate else -1.0
    x = masks * sign
    fill = float("-inf")
    for i in range(iterations):
        if i % 2 == 0:  # cross: the pixel and its 4 neighbours
            x = torch.maximum(_shift_max(x, -1, fill), _shift_max(x, -2, fill))
        else:  # square: separable 3x3
            x = _shift_max(_shift_max(x, -1, fill), -2, fill)
    return x * sign


def erode(masks: torch.Tensor, iterations: int) -> torch.Tensor:
    """Grey erosion of ``[N, H, W]`` masks by ``iterations`` pixels with a round (octagonal) kernel."""
    return _grey_morphology(masks, int(iterations), dilate=False)


def dilate(masks: torch.Tensor, iterations: int) -> torch.Tensor:
    """Grey dilation of ``[N, H, W]`` masks by ``iterations`` pixels with a round (octagonal) kernel."""
    return _grey_morphology(masks, int(iterations), dilate=True)


def box_filter(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over a ``(2r+1)`` square window of ``[B, C, H, W]``, windows clipped at the borders (as He et al.).

    Separable (a row mean, then a column mean): O(r) per pixel instead of O(r^2), with the same clipped windows."""
    k = 2 * radius + 1
    x = F.avg_pool2d(x, (1, k), stride=1, padding=(0, radius), count_include_pad=False)
    return F.avg_pool2d(x, (k, 1), stride=1, padding=(radius, 0), count_include_pad=False)


#: above this many pixels the guided filter runs subsampled (He & Sun's fast guided filter)
GUIDED_FULL_RES_PIXELS = 1_000_000


def guided_filter(image: torch.Tensor, masks: torch.Tensor, radius: int = 8, eps: float = 1e-3,
                  subsample: int | None = None) -> torch.Tensor:
    """Edge-aware refinement of soft masks guided by a colour image (He, Sun, Tang: Guided Image Filtering).

    image: ``[H, W, 3]`` in 0..1 (the guide); masks: ``[N, H, W]`` in 0..1 (the filtering input);
    radius: window radius in pixels; eps: regularisation (larger = smoother, less edge-following).
    Per window the output is a linear function of the guide's colour, ``q = a . I + b``, fitted to the mask in the
    least-squares sense, then averaged. Edges in the mask that coincide with edges in the image stay sharp; others
    are smoothed. ``subsample`` s > 1 fits a and b on an s-times smaller image and applies them to the full-size
    guide (He & Sun, Fast Guided Filter, 2015); None picks s so the fit runs on about one megapixel.
    Returns ``[N, H, W]`` clamped to 0..1."""
    if masks.shape[0] == 0:
        return masks
    height, width = masks.shape[-2:]
    if subsample is None:
        subsample = max(1, math.ceil(math.sqrt(height * width / GUIDED_FULL_RES_PIXELS)))
    full_guide = image.permute(2, 0, 1).unsqueeze(0).to(device=masks.device, dtype=masks.dtype)  # [1, 3, H, W]
    p = masks.unsqueeze(1)  # [N, 1, H, W]
    guide = full_guide
    if subsample > 1:
        small = (max(1, round(height / subsample)), max(1, round(width / subsample)))
        guide = F.interpolate(full_guide, size=small, mode="bilinear", align_corners=False, antialias=True)
        p = F.interpolate(p, size=small, mode="bilinear", align_corners=False, antialias=True)
    radius = max(1, round(int(radius) / subsample))
    mean_i = box_filter(guide, radius)  # [1, 3, h, w]
    mean_p = box_filter(p, radius)  # [N, 1, h, w]
    # covariance of the guide: 6 unique entries of the symmetric 3x3 matrix per pixel
    pairs = [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]
    products = torch.stack([guide[:, a] * guide[:, b] for a, b in pairs], 1)
    cov = box_filter(products, radius) - torch.stack([mean_i[:, a] * mean_i[:, b] for a, b in pairs], 1)
    s00, s01, s02, s11, s12, s22 = (cov[:, k] + (eps if k in (0, 3, 5) else 0.0) for k in range(6))
    # inverse of the symmetric matrix by its adjugate
    i00 = s11 * s22 - s12 * s12
    i01 = s02 * s12 - s01 * s22
    i02 = s01 * s12 - s02 * s11
    i11 = s00 * s22 - s02 * s02
    i12 = s01 * s02 - s00 * s12
    i22 = s00 * s11 - s01 * s01
    det = s00 * i00 + s01 * i01 + s02 * i02
    cov_ip = box_filter(guide * p, radius) - mean_i * mean_p  # [N, 3, h, w]
    c0, c1, c2 = cov_ip[:, 0], cov_ip[:, 1], cov_ip[:, 2]
    a = torch.stack([(i00 * c0 + i01 * c1 + i02 * c2) / det,
                     (i01 * c0 + i11 * c1 + i12 * c2) / det,
                     (i02 * c0 + i12 * c1 + i22 * c2) / det], 1)  # [N, 3, h, w]
    b = mean_p - (a * mean_i).sum(1, keepdim=True)
    mean_a, mean_b = box_filter(a, radius), box_filter(b, radius)
    if subsample > 1:
        mean_a = F.interpolate(mean_a, size=(height, width), mode="bilinear", align_corners=False)
        mean_b = F.interpolate(mean_b, size=(height, width), mode="bilinear", align_corners=False)
    q = (mean_a * full_guide).sum(1, keepdim=True) + mean_b
    return q.squeeze(1).clamp(0.0, 1.0)


def threshold(masks: torch.Tensor, value: float) -> torch.Tensor:
    """Binary masks: 1 where ``p >= value``, else 0 (a probability of exactly ``value`` is in)."""
    return (masks >= value).to(masks.dtype)


def trimap(masks: torch.Tensor, black_point: float, white_point: float, erode_px: int = 0,
           dilate_px: int = 0) -> torch.Tensor:
    """Trimaps for matting from probabilities: 1 = foreground (p >= white_point), 0 = background
    (p <= black_point), 0.5 = unknown. The sure foreground shrinks by ``erode_px`` and the sure background by
    ``dilate_px`` (a round kernel), widening the unknown band on either side. Returns ``[N, H, W]``."""
    fg = (masks >= white_point).to(masks.dtype)
    bg = (masks <= black_point).to(masks.dtype)
    fg = erode(fg, erode_px)
    bg = erode(bg, dilate_px)
    out = torch.full_like(masks, 0.5)
    out[bg > 0.5] = 0.0
    out[fg > 0.5] = 1.0
    return out


def draw_labels(image: torch.Tensor, masks: torch.Tensor, labels: list[str], threshold: float = 0.5) -> torch.Tensor:
    """Write each mask's label in its overlay colour at the top-left of the mask's bounding box.

    image: ``[H, W, 3]`` in 0..1 (typically :func:`overlay`'s output); masks: ``[N, H, W]``; labels: N strings
    (empty strings and empty masks are skipped). Returns a new ``[H, W, 3]`` tensor."""
    from PIL import Image, ImageDraw, ImageFont

    if masks.shape[0] == 0 or not any(labels):
        return image
    height, width = image.shape[:2]
    picture = Image.fromarray(to_uint8(image), "RGB")
    draw = ImageDraw.Draw(picture)
    size = max(10, min(height, width) // 28)
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has a single bitmap size
        font = ImageFont.load_default()
    colours = (palette(masks.shape[0]) * 255).round().to(torch.uint8).tolist()
    placed: list[tuple[int, int, int, int]] = []
    for mask, label, colour in zip(masks, labels, colours):
        rows, cols = torch.nonzero(mask > threshold, as_tuple=True)
        if not label or rows.numel() == 0:
            continue
        x, y = int(cols.min()), int(rows.min())
        left, top, right, bottom = draw.textbbox((x, y), label, font=font)
        # objects whose boxes start at the same place would hide each other's labels: move down a line until free
        step = bottom - top + 4
        while any(left < r and right > l and top - 2 < b and bottom + 2 > t for l, t, r, b in placed) and \
                bottom + step <= height:
            y, top, bottom = y + step, top + step, bottom + step
        shift_x, shift_y = max(0, right + 4 - width), max(0, bottom + 2 - height)
        box = (left - 2 - shift_x, top - 2 - shift_y, right + 2 - shift_x, bottom + 2 - shift_y)
        placed.append(box)
        draw.rectangle(box, fill=tuple(colour))
        text_colour = (0, 0, 0) if sum(colour) > 382 else (255, 255, 255)
        draw.text((x - shift_x, y - shift_y), label, fill=text_colour, font=font)
    return torch.from_numpy(np.asarray(picture).copy()).float() / 255.0
