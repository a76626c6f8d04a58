"""The SAM2 image encoder (Hiera backbone + FPN neck) written out on transformers' own sub-modules and weights.

It computes the numbers of ``Sam2VideoModel.get_image_features`` with less work, which matters because this pass
dominates a prediction on CPU (docs/performance.md). With the stock kernels (:class:`BlockLinears`,
:class:`BufferedLinears`) they are the same bit for bit (tested); on x86 CPUs the linear layers run as fused oneDNN
kernels by default (:class:`OneDnnLinears`), the same arithmetic within float rounding.

* transformers' ``Sam2MultiScaleAttention`` also computes a softmax of query x key over the *heads* axis and then
  discards it; that product is skipped;
* merging the attention heads and undoing the window partition are one copy instead of two (the output projection
  is applied per token, so it can run after the un-partition);
* residual additions and the MLP's GELU run in place (stock kernels), or fused into the matrix products (oneDNN);
  with the stock kernels on CPU the qkv and MLP-hidden outputs of every block go into one reused buffer (fewer fresh
  allocations: every new large CPU tensor costs page faults);
* the windowed positional embedding (a bicubic resize) is computed once, not per image;
* the neck computes the sine position encoding of the top level only (the image path uses none; video memory
  attention uses the top level's), and levels are returned as ``[B, C, H, W]`` without a flatten/permute round
  trip.

If transformers reshapes these modules, :func:`fast_encoder_supported` returns False and the stock
``get_image_features`` is used instead.
"""
from __future__ import annotations

import logging
import platform

import numpy as np
import torch
import torch.nn.functional as F

from ..monitor import cancel_point

logger = logging.getLogger(__name__)

_BLOCK_PARTS = ("layer_norm1", "layer_norm2", "attn", "mlp", "window_size", "query_stride", "dim", "dim_out")


def fast_encoder_supported(model) -> bool:
    """True when the vision encoder has the structure the fast path was written for (transformers 5.x SAM2)."""
    try:
        vision = model.vision_encoder
        backbone, neck = vision.backbone, vision.neck
        ok = all(hasattr(backbone, a) for a in ("patch_embed", "pos_embed", "pos_embed_window", "blocks"))
        ok = ok and all(hasattr(neck, a) for a in ("convs", "position_encoding", "fpn_top_down_levels"))
        ok = ok and all(all(hasattr(b, a) for a in _BLOCK_PARTS) for b in backbone.blocks)
        ok = ok and all(hasattr(b.attn, a) for b in backbone.blocks for a in ("qkv", "proj", "num_attention_heads",
                                                                            "scale"))
        ok = ok and all(hasattr(b.mlp, a) for b in backbone.blocks for a in ("proj_in", "proj_out", "layers",
                                                                           "activation"))
        return ok and hasattr(model.mask_decoder, "conv_s0") and hasattr(model.mask_decoder, "conv_s1")
    except AttributeError:
        return False


def _pool(x: torch.Tensor, stride) -> torch.Tensor:
    """Max-pool a channels-last map ``[B, H, W, C]`` by ``stride`` (Hiera's query pooling)."""
    if not stride:
        return x
    x = F.max_pool2d(x.permute(0, 3, 1, 2), kernel_size=stride, stride=stride, ceil_mode=False)
    return x.permute(0, 2, 3, 1)


def _partition(x: torch.Tensor, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """``[B, H, W, C]`` -> windows ``[B * nH * nW, size, size, C]`` (zero padding at the bottom/right as SAM2)."""
    batch, height, width, channels = x.shape
    pad_h, pad_w = (-height) % size, (-width) % size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    ph, pw = height + pad_h, width + pad_w
    x = x.view(batch, ph // size, size, pw // size, size, channels).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, size, size, channels), (ph, pw)


class BlockLinears:
    """How an encoder block's linear layers run: the stock modules, one call each (GPU, compiled, autograd)."""

    def linear(self, x: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
        """``layer(x)``; the result may be a view of a buffer reused by the next call."""
        return layer(x)

    def linear_gelu(self, x: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
        """``gelu(layer(x))``, exact (erf) GELU; valid until the next call, like :meth:`linear`."""
        return torch.ops.aten.gelu_(self.linear(x, layer))

    def linear_add(self, x: torch.Tensor, residual: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
        """``layer(x) + residual`` as a new tensor (``residual`` has the output's shape)."""
        out = layer(x)
        out += residual
        return out


class BufferedLinears(BlockLinears):
    """The stock ``addmm`` calls, with one reusable output buffer for the largest short-lived tensors (CPU).

    A fresh multi-megabyte CPU tensor is mapped from the kernel page by page on first touch. A block's qkv output
    is consumed by the attention before its MLP hidden layer is computed, and the blocks of a stage have equal
    shapes, so one buffer serves them all. It is replaced when a tensor needs more room or less than half of it
    (at stage changes), so it never holds much more than the stock forward's own temporary. Bit for bit the
    numbers of transformers' forward."""

    def __init__(self) -> None:
        self.buffer: torch.Tensor | None = None

    def linear(self, x: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
        """``layer(x)`` written into the buffer: the same ``addmm`` call ``F.linear`` makes. The result is valid
        until the next call."""
        if layer.bias is None or not x.is_contiguous():
            return layer(x)
        rows = x.numel() // x.shape[-1]
        size = rows * layer.out_features
        if self.buffer is None or not size <= self.buffer.numel() <= 2 * size or self.buffer.dtype != x.dtype or \
                self.buffer.device != x.device:
            self.buffer = None
            self.buffer = torch.empty(size, dtype=x.dtype, device=x.device)
        out = self.buffer[:size].view(rows, layer.out_features)
        torch.addmm(layer.bias, x.view(rows, x.shape[-1]), layer.weight.t(), out=out)
        return out.view(*x.shape[:-1], layer.out_features)


def _onednn_linear():
    """oneDNN's fused linear (``torch.ops.mkldnn._linear_pointwise``, the kernel inductor's CPU backend emits), or
    None where this torch build has none."""
    if not torch.backends.mkldnn.is_available():
        return None
    return getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)


class OneDnnLinears(BlockLinears):
    """The linear layers as oneDNN kernels with the bias, the GELU and the residual addition fused into the matrix
    product (x86 CPUs, fp32). The stock path spends about a fifth of the encoder outside the products: ``addmm``
    first copies the bias into its output, then GELU and the residual add each read and write the whole tensor
    again. Same arithmetic in another summation order: results differ from :class:`BufferedLinears` by float
    rounding (relative ~1e-6; :func:`onednn_linears_usable` checks it before first use)."""

    def __init__(self) -> None:
        self.op = _onednn_linear()  # present wherever onednn_linears_usable() said True

    @staticmethod
    def _rows(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, x.shape[-1])

    def linear(self, x: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
        out = self.op(self._rows(x), layer.weight, layer.bias, "none", [], "")
        return out.view(*x.shape[:-1], layer.out_features)

    def linear_gelu(self, x: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
        out = self.op(self._rows(x), layer.weight, layer.bias, "gelu", [], "none")  # "none": exact erf GELU
        return out.view(*x.shape[:-1], layer.out_features)

    def linear_add(self, x: torch.Tensor, residual: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
        out = self.op.binary(self._rows(x), self._rows(residual.contiguous()), layer.weight, layer.bias, "add")
        return out.view(*x.shape[:-1], layer.out_features)


_ONEDNN_CHECKED: dict[torch.dtype, bool] = {}


def onednn_linears_usable(dtype: torch.dtype) -> bool:
    """True when :class:`OneDnnLinears` can run an encoder in ``dtype`` on this machine: an x86-64 CPU (where it was
    measured faster than ``addmm``: docs/performance.md), fp32, a torch build with the kernel, and a one-time check
    that its three fused forms agree with the stock ones on a small input (within 1e-5)."""
    if dtype != torch.float32 or platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    if dtype not in _ONEDNN_CHECKED:
        _ONEDNN_CHECKED[dtype] = _onednn_agrees(dtype)
    return _ONEDNN_CHECKED[dtype]


def _onednn_agrees(dtype: torch.dtype) -> bool:
    if _onednn_linear() is None:
        return False
    generator = torch.Generator().manual_seed(0)  # its own generator: the global random state stays untouched
    layer = torch.nn.utils.skip_init(torch.nn.Linear, 24, 40, dtype=dtype)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(40, 24, generator=generator, dtype=dtype) / 5)
        layer.bias.copy_(torch.randn(40, generator=generator, dtype=dtype))
    x = torch.randn(70, 24, generator=generator, dtype=dtype)
    residual = torch.randn(70, 40, generator=generator, dtype=dtype)
    stock, fused = BlockLinears(), OneDnnLinears()
    try:
        with torch.no_grad():
            pairs = [(stock.linear(x, layer), fused.linear(x, layer)),
                     (F.gelu(layer(x)), fused.linear_gelu(x, layer)),
                     (stock.linear_add(x, residual, layer), fused.linear_add(x, residual, layer))]
    except (RuntimeError, NotImplementedError) as error:
        logger.info("oneDNN linear kernels unavailable (%s); the SAM2 encoder uses addmm", error)
        return False
    worst = max(float((a - b).abs().max()) for a, b in pairs)
    if worst > 1e-5:
        logger.warning("oneDNN linear kernels disagree with addmm by %.1e on this machine; the SAM2 encoder uses "
                       "addmm", worst)
        return False
    return True


def _block_forward(block, x: torch.Tensor, linears: BlockLinears) -> torch.Tensor:
    """One Hiera block (``Sam2MultiScaleBlock``) on ``[B, H, W, C]``; the arithmetic of its forward."""
    attn, mlp = block.attn, block.mlp
    batch = x.shape[0]
    normed = block.layer_norm1(x)
    residual = x if block.dim == block.dim_out else _pool(block.proj(normed), block.query_stride)
    out_h, out_w = residual.shape[1:3]
    size = block.window_size
    if size > 0:
        windows, (ph, pw) = _partition(normed, size)
    else:
        windows, (ph, pw) = normed, tuple(normed.shape[1:3])
    count, wh, ww, _ = windows.shape
    heads = attn.num_attention_heads
    qkv = linears.linear(windows, attn.qkv)
    # Cancel between the products of a block too (Monitor.watching): on two busy cores one block takes seconds
    cancel_point("the SAM2 image encoder")
    qkv = qkv.reshape(count, wh * ww, 3, heads, -1)
    query, key, value = torch.unbind(qkv, 2)
    if block.query_stride:
        query = _pool(query.reshape(count, wh, ww, -1), block.query_stride)
        wh, ww = query.shape[1:3]
        query = query.reshape(count, wh * ww, heads, -1)
        if size > 0:
            size = size // block.query_stride[0]
            ph, pw = out_h + (-out_h) % size, out_w + (-out_w) % size
    out = F.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                                         dropout_p=0.0, scale=attn.scale, is_causal=False)
    cancel_point("the SAM2 image encoder")
    head_dim = out.shape[-1]
    if size > 0:  # merge heads and undo the windows in one copy: [n, heads, s*s, d] -> [B, pH, pW, heads*d]
        out = out.view(batch, ph // size, pw // size, heads, size, size, head_dim).permute(0, 1, 4, 2, 5, 3, 6)
        out = out.reshape(batch, ph, pw, heads * head_dim)
        if (ph, pw) != (out_h, out_w):
            out = out[:, :out_h, :out_w].contiguous()
    else:
        out = out.transpose(1, 2).reshape(batch, out_h, out_w, heads * head_dim)
    hidden = linears.linear_add(out, residual, attn.proj)
    cancel_point("the SAM2 image encoder")
    normed = block.layer_norm2(hidden)
    exact_gelu = type(mlp.activation).__name__ == "GELUActivation" and getattr(mlp.activation, "act", None) is F.gelu
    if exact_gelu and not len(mlp.layers):
        y = linears.linear_gelu(normed, mlp.proj_in)
    else:
        y = mlp.activation(linears.linear(normed, mlp.proj_in))
        for layer in mlp.layers:
            y = mlp.activation(layer(y))
    cancel_point("the SAM2 image encoder")
    return linears.linear_add(y, hidden, mlp.proj_out)


def tensor_version(tensor: torch.Tensor) -> int:
    """The in-place version counter of ``tensor`` for cache keys; inference tensors (weights loaded under
    ``torch.inference_mode``, as ComfyUI runs nodes) have none, so they count as version 0."""
    return 0 if tensor.is_inference() else tensor._version


class WindowPositionCache:
    """The backbone's positional embedding (bicubic resize of ``pos_embed`` + tiled ``pos_embed_window``), made once
    per size and recomputed only when the parameters change."""

    def __init__(self) -> None:
        self.key = None
        self.value: torch.Tensor | None = None

    def get(self, backbone, hw: tuple[int, int]) -> torch.Tensor:
        big, window = backbone.pos_embed, backbone.pos_embed_window
        key = (hw, big.device, big.dtype, big.data_ptr(), tensor_version(big), window.data_ptr(),
               tensor_version(window))
        if key != self.key or self.value is None:
            embed = F.interpolate(big, size=hw, mode="bicubic")
            embed = embed + window.tile([x // y for x, y in zip(embed.shape, window.shape)])
            # stored channels-last and contiguous, the layout of the patch embedding it is added to
            self.value, self.key = embed.permute(0, 2, 3, 1).contiguous(), key
        return self.value


def encode_image_fast(model, pixel_values: torch.Tensor, positions: WindowPositionCache,
                      linears: BlockLinears | None = None) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """The SAM2 image encoder on ``[B, 3, S, S]`` pixels, its linear layers run by ``linears`` (default: the stock
    modules).

    Returns (``[s0, s1]`` after ``conv_s0``/``conv_s1`` as ``[B, C, H, W]``, top level ``[B, 256, h, w]``, its sine
    position encoding ``[B, 256, h, w]``): the values of ``get_image_features``, without its flattening."""
    vision = model.vision_encoder
    backbone, neck = vision.backbone, vision.neck
    config = backbone.config
    hidden = backbone.patch_embed(pixel_values)
    hidden = hidden + positions.get(backbone, tuple(hidden.shape[1:3]))
    ends = set(np.cumsum(config.blocks_per_stage) - 1)
    stages = []
    linears = linears or BlockLinears()
    for i, block in enumerate(backbone.blocks):
        cancel_point("the SAM2 image encoder")  # Cancel between blocks (Monitor.watching), not after the pass
        hidden = _block_forward(block, hidden, linears)
        if i in ends:
            stages.append(hidden)
    # FPN neck, top-down from the lowest resolution (Sam2VisionNeck.forward without the position encodings)
    last = len(neck.convs) - 1
    levels: list[torch.Tensor] = [None] * len(stages)  # type: ignore[list-item]
    previous = None
    for i in range(last, -1, -1):
        lateral = neck.convs[last - i](stages[i].permute(0, 3, 1, 2).to(neck.convs[i].weight.dtype))
        if i not in neck.fpn_top_down_levels or i == last:
            previous = lateral
        else:
            top_down = F.interpolate(previous.to(dtype=torch.float32), scale_factor=2.0, mode="nearest",
                                     align_corners=None, antialias=False).to(lateral.dtype)
            previous = lateral + top_down
        levels[i] = previous
    used = levels[:vision.num_feature_levels]  # high -> low resolution, as get_image_features orders them
    top = used[-1]
    position = neck.position_encoding(top.shape, top.device, top.dtype).to(top.dtype)
    high_res = [model.mask_decoder.conv_s0(used[0]), model.mask_decoder.conv_s1(used[1])]
    return high_res, top, position
