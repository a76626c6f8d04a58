"""The grounding head: Sa2VA's language-prompted SAM2 on transformers' own SAM2 modules.

Sa2VA prompts SAM2 with one 256-d embedding per [SEG] token instead of clicks. transformers' SAM2 classes
have no argument for such a token and clamp the logits of "absent" objects to -1024, which Sa2VA disabled,
so this module drives the public sub-modules (vision encoder, prompt encoder, mask decoder) directly.

Semantics reproduced from the reference (docs/design.md, "SAM2 input" and "SAM2 decoding"):

* SAM2 **v1.0** Hiera-L settings: no temporal encoding of object pointers, no occlusion embedding;
* input: PIL bicubic resize to ``image_size`` x ``image_size`` (aspect ratio not kept), ``/255``, then
  ImageNet mean/std **as bfloat16-rounded constants** (the reference builds them in bf16);
* sparse prompt = ``[not_a_point, pad point, language]``; dense prompt = ``no_mask_embed``; image embedding =
  top FPN level + ``no_memory_embedding``; multimask output, best of masks 1..3 by predicted IoU;
* **no object-score clamp**: the returned values are mask logits (not probabilities), never -1024-masked.

The same head drives SAM 3's tracker (``Sam3TrackerVideoModel``, Sa2VA-Qwen3-VL-4B-SAM3, :mod:`sa2va.sam3`): its
sub-modules have the same signatures, and what differs is data (:class:`~sa2va.grounding.GroundingRules`: the clamp
is on there) or config (1008 px, 288x288 logits).

The image encoder runs once per image; all [SEG] embeddings of an image are decoded in one mask-decoder call.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .compat import sam2_image_features
from .grounding import NO_OBJECT_SCORE, SAM2_RULES, GroundingRules

logger = logging.getLogger(__name__)

#: SAM2 v1.0 Hiera-L, the grounding encoder every Sa2VA release hard-codes (keyword arguments of
#: transformers' ``Sam2VideoConfig``; everything not listed keeps its default).
SAM2_HIERA_LARGE_V1: dict = {
    "vision_config": {
        "backbone_config": {
            "model_type": "sam2_hiera_det_model",
            "hidden_size": 144,
            "embed_dim_per_stage": [144, 288, 576, 1152],
            "num_attention_heads_per_stage": [2, 4, 8, 16],
            "blocks_per_stage": [2, 6, 36, 4],
            "global_attention_blocks": [23, 33, 43],
            "window_positional_embedding_background_size": [7, 7],
            "window_size_per_stage": [8, 4, 16, 8],
        },
        "backbone_channel_list": [1152, 576, 288, 144],
    },
    "enable_temporal_pos_encoding_for_object_pointers": False,
    "enable_occlusion_spatial_embedding": False,
}

# ImageNet constants exactly as the reference applies them: built as bfloat16, then used in fp32.
SAM2_PIXEL_MEAN = torch.tensor([0.485, 0.456, 0.406], dtype=torch.bfloat16).float()
SAM2_PIXEL_STD = torch.tensor([0.229, 0.224, 0.225], dtype=torch.bfloat16).float()


def sam2_config(overrides: dict | None = None):
    """Build the ``Sam2VideoConfig`` of a checkpoint.

    ``overrides`` is the optional ``sam2_config`` block of a test checkpoint's config.json (keyword arguments of
    ``Sam2VideoConfig``); without it the config is SAM2 v1.0 Hiera-L at 1024 px. The v1.0 flags are forced
    either way, because the release weights are SAM2 v1.0."""
    from transformers import Sam2VideoConfig

    kwargs = copy.deepcopy(overrides) if overrides else copy.deepcopy(SAM2_HIERA_LARGE_V1)
    kwargs["enable_temporal_pos_encoding_for_object_pointers"] = False
    kwargs["enable_occlusion_spatial_embedding"] = False
    return Sam2VideoConfig(**kwargs)


def sam2_pixels(images: list[Image.Image], image_size: int) -> torch.Tensor:
    """Normalised SAM2 input for a list of RGB PIL images.

    Returns float32 ``[B, 3, image_size, image_size]``: each image is resized with PIL's default filter
    (bicubic) to a square, ignoring its aspect ratio, scaled to 0..1 and normalised with the bf16-rounded
    ImageNet constants."""
    arrays = [np.asarray(im.convert("RGB").resize((image_size, image_size))) for im in images]
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0
    return (x - SAM2_PIXEL_MEAN[:, None, None]) / SAM2_PIXEL_STD[:, None, None]


@dataclass
class ImageFeatures:
    """SAM2 image-encoder output for a batch of B images.

    high_res: ``[s0 [B, C0, 4h, 4w], s1 [B, C1, 2h, 2w]]`` after the decoder's ``conv_s0``/``conv_s1``;
    top: top FPN level, ``[h*w, B, 256]``; position: its positional encoding, ``[h*w, B, 256]``;
    size: ``(h, w)`` of the top level (64x64 at 1024 px)."""

    high_res: list[torch.Tensor]
    top: torch.Tensor
    position: torch.Tensor
    size: tuple[int, int]

    def select(self, index: int) -> "ImageFeatures":
        """Features of image ``index`` alone (batch of one)."""
        return ImageFeatures([f[index:index + 1] for f in self.high_res], self.top[:, index:index + 1],
                             self.position[:, index:index + 1], self.size)

    def clone(self) -> "ImageFeatures":
        """A copy that owns its memory (a :meth:`select` view keeps the whole batch alive)."""
        return ImageFeatures([f.clone() for f in self.high_res], self.top.clone(), self.position.clone(), self.size)


@dataclass
class DecodeOutput:
    """Mask-decoder output for K prompts.

    low_res_logits: ``[K, 1, 4h, 4w]`` logits of the best of the 3 multimask outputs (256x256 at 1024 px);
    object_pointer: ``[K, 256]``, gated by the object score as SAM2 does; object_score: ``[K, 1]`` logits (SAM2's
    "is the object in the image" head); iou: ``[K]`` the decoder's predicted IoU of the chosen mask, already a
    probability (SAM2's IoU head ends in a sigmoid)."""

    low_res_logits: torch.Tensor
    object_pointer: torch.Tensor
    object_score: torch.Tensor
    iou: torch.Tensor | None = None


# ------------------------------------------------------------------------------------------ image encoder
# The SAM2 image encoder (Hiera backbone + FPN neck) written out on transformers' own sub-modules and weights. It
# computes the same numbers as ``Sam2VideoModel.get_image_features`` (checked bit for bit by the tests) with less
# work, which matters because this pass dominates a prediction on CPU (docs/performance.md):
#
# * transformers' ``Sam2MultiScaleAttention`` also computes a softmax of query x key over the *heads* axis and then
#   discards it; that product is skipped;
# * merging the attention heads and undoing the window partition are one copy instead of two (the output projection
#   is applied per token, so it can run after the un-partition);
# * residual additions and the MLP's GELU run in place, and on CPU the qkv and MLP-hidden outputs of every block go
#   into one reused buffer (fewer fresh allocations: every new large CPU tensor costs page faults);
# * the windowed positional embedding (a bicubic resize) is computed once, not per image;
# * the neck computes the sine position encoding of the top level only (the image path uses none; video memory
#   attention uses the top level's), and levels are returned as ``[B, C, H, W]`` without a flatten/permute round
#   trip.
#
# If transformers reshapes these modules, :func:`fast_encoder_supported` returns False and the stock
# ``get_image_features`` is used instead.

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


def _gelu_inplace(x: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.gelu_(x)


class _Workspace:
    """One reusable output buffer for the largest short-lived tensors of an encoder pass (CPU only).

    A fresh multi-megabyte CPU tensor is mapped from the kernel page by page on first touch. A block's qkv output
    is consumed by the attention before its MLP hidden layer is computed, and the blocks of a stage have equal
    shapes, so one buffer serves them all. It is replaced when a tensor needs more room or less than half of it
    (at stage changes), so it never holds much more than the stock forward's own temporary."""

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


def _block_forward(block, x: torch.Tensor, workspace: _Workspace | None = None) -> torch.Tensor:
    """One Hiera block (``Sam2MultiScaleBlock``) on ``[B, H, W, C]``; same arithmetic as its forward."""
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
    qkv = attn.qkv(windows) if workspace is None else workspace.linear(windows, attn.qkv)
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
    head_dim = out.shape[-1]
    if size > 0:  # merge heads and undo the windows in one copy: [n, heads, s*s, d] -> [B, pH, pW, heads*d]
        out = out.view(batch, ph // size, pw // size, heads, size, size, head_dim).permute(0, 1, 4, 2, 5, 3, 6)
        out = out.reshape(batch, ph, pw, heads * head_dim)
        if (ph, pw) != (out_h, out_w):
            out = out[:, :out_h, :out_w].contiguous()
    else:
        out = out.transpose(1, 2).reshape(batch, out_h, out_w, heads * head_dim)
    hidden = attn.proj(out)
    hidden += residual
    normed = block.layer_norm2(hidden)
    y = mlp.proj_in(normed) if workspace is None else workspace.linear(normed, mlp.proj_in)
    inplace_gelu = type(mlp.activation).__name__ == "GELUActivation" and \
        getattr(mlp.activation, "act", None) is F.gelu
    y = _gelu_inplace(y) if inplace_gelu else mlp.activation(y)
    for layer in mlp.layers:
        y = mlp.activation(layer(y))
    y = mlp.proj_out(y)
    y += hidden
    return y


def _tensor_version(tensor: torch.Tensor) -> int:
    """The in-place version counter of ``tensor`` for cache keys; inference tensors (weights loaded under
    ``torch.inference_mode``, as ComfyUI runs nodes) have none, so they count as version 0."""
    return 0 if tensor.is_inference() else tensor._version


class _WindowPositionCache:
    """The backbone's positional embedding (bicubic resize of ``pos_embed`` + tiled ``pos_embed_window``), made once
    per size and recomputed only when the parameters change."""

    def __init__(self) -> None:
        self.key = None
        self.value: torch.Tensor | None = None

    def get(self, backbone, hw: tuple[int, int]) -> torch.Tensor:
        big, window = backbone.pos_embed, backbone.pos_embed_window
        key = (hw, big.device, big.dtype, big.data_ptr(), _tensor_version(big), window.data_ptr(),
               _tensor_version(window))
        if key != self.key or self.value is None:
            embed = F.interpolate(big, size=hw, mode="bicubic")
            embed = embed + window.tile([x // y for x, y in zip(embed.shape, window.shape)])
            self.value, self.key = embed.permute(0, 2, 3, 1), key
        return self.value


def encode_image_fast(model, pixel_values: torch.Tensor, positions: _WindowPositionCache,
                      reuse_buffers: bool = False) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """The SAM2 image encoder on ``[B, 3, S, S]`` pixels.

    Returns (``[s0, s1]`` after ``conv_s0``/``conv_s1`` as ``[B, C, H, W]``, top level ``[B, 256, h, w]``, its sine
    position encoding ``[B, 256, h, w]``): the values of ``get_image_features``, without its flattening."""
    vision = model.vision_encoder
    backbone, neck = vision.backbone, vision.neck
    config = backbone.config
    hidden = backbone.patch_embed(pixel_values)
    hidden = hidden + positions.get(backbone, tuple(hidden.shape[1:3]))
    ends = set(np.cumsum(config.blocks_per_stage) - 1)
    stages = []
    workspace = _Workspace() if reuse_buffers else None
    for i, block in enumerate(backbone.blocks):
        hidden = _block_forward(block, hidden, workspace)
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


class GroundingHead:
    """Language-prompted SAM around a transformers ``Sam2VideoModel`` or ``Sam3TrackerVideoModel``.

    The two share the prompt encoder, the mask decoder, the memory modules and their call signatures; what differs
    between the releases is in ``rules`` (:class:`~sa2va.grounding.GroundingRules`) and in the model's config. The
    model holds the weights; this class holds no state between calls."""

    def __init__(self, model, compile_encoder: bool | str = False, rules: GroundingRules = SAM2_RULES) -> None:
        self.model = model
        self.rules = rules
        self.image_size: int = int(model.config.image_size)
        # the hand-written fast path is SAM2's Hiera; SAM3's ViT runs as transformers' get_image_features
        self.fast_encoder: bool = rules.name == "sam2" and fast_encoder_supported(model)
        if not self.fast_encoder and rules.name == "sam2":
            logger.info("This transformers version's SAM2 vision encoder differs from the one the fast path was "
                        "written for; using Sam2VideoModel.get_image_features")
        self._window_positions = _WindowPositionCache()
        self._image_position_key = None
        self._image_position: torch.Tensor | None = None
        self._encoder = self._encode_eager
        #: CPU: write the qkv and MLP-hidden outputs of the encoder blocks into one reused buffer
        self.reuse_buffers = True
        #: the torch.compile backend in use for the image encoder, or None
        self.compiled: str | None = None
        if compile_encoder and not self.fast_encoder:
            logger.info("compile_sam2 applies to SAM2's own encoder path only; %s's encoder runs uncompiled", rules.name)
        elif compile_encoder:
            backend = "inductor" if compile_encoder is True else str(compile_encoder)
            self._encoder = torch.compile(self._encode_eager, backend=backend, dynamic=False)
            self.compiled = backend

    @property
    def dtype(self) -> torch.dtype:
        return self.model.no_memory_embedding.dtype

    @property
    def device(self) -> torch.device:
        return self.model.no_memory_embedding.device

    def _encode_eager(self, pixel_values: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """(``[s0, s1]``, top, position) as ``[B, C, H, W]`` maps; the function torch.compile wraps when asked."""
        positions = self._window_positions if torch.is_inference_mode_enabled() else _WindowPositionCache()
        reuse = pixel_values.device.type == "cpu" and self.compiled is None and self.reuse_buffers and \
            not torch.is_grad_enabled()
        return encode_image_fast(self.model, pixel_values, positions, reuse_buffers=reuse)

    def encode(self, pixel_values: torch.Tensor) -> ImageFeatures:
        """Run the image encoder once. ``pixel_values``: ``[B, 3, S, S]`` from :func:`sam2_pixels`."""
        pixel_values = pixel_values.to(device=self.device, dtype=self.dtype)
        if self.fast_encoder:
            high_res, top, position = self._encoder(pixel_values)
            # [B, C, h, w] -> [h*w, B, C] views, the layout get_image_features returns (no copy)
            return ImageFeatures(list(high_res), top.flatten(2).permute(2, 0, 1),
                                 position.flatten(2).permute(2, 0, 1), tuple(top.shape[-2:]))
        levels, positions = sam2_image_features(self.model, pixel_values)
        batch = pixel_values.shape[0]
        # get_image_features returns flattened [HW, B, C] levels with conv_s0/conv_s1 already applied
        shapes = [tuple(s) for s in self.model.backbone_feature_sizes]
        high_res = [levels[i].permute(1, 2, 0).reshape(batch, -1, *shapes[i]) for i in range(2)]
        return ImageFeatures(high_res, levels[2], positions[2], shapes[2])

    def image_wide_position(self) -> torch.Tensor:
        """The prompt encoder's dense positional embedding ``[1, 256, h, w]``; it depends on the weights only, so it
        is computed once (per weight version) under inference mode."""
        if not torch.is_inference_mode_enabled():
            return self.model.get_image_wide_positional_embeddings()
        weight = self.model.shared_image_embedding.positional_embedding
        key = (weight.device, weight.dtype, weight.data_ptr(), _tensor_version(weight))
        if key != self._image_position_key or self._image_position is None:
            self._image_position = self.model.get_image_wide_positional_embeddings()
            self._image_position_key = key
        return self._image_position

    def pixel_embedding(self, features: ImageFeatures) -> torch.Tensor:
        """Top level + ``no_memory_embedding`` as ``[B, 256, h, w]`` (frames prompted without memory)."""
        top = features.top + self.model.no_memory_embedding
        return top.permute(1, 2, 0).reshape(top.shape[1], -1, *features.size)

    def decode(self, pixel_embedding: torch.Tensor, high_res: list[torch.Tensor],
               language: torch.Tensor | None) -> DecodeOutput:
        """Decode K masks of one image in a single mask-decoder call.

        pixel_embedding: ``[1, 256, h, w]``; high_res: the image's ``[s0, s1]`` (batch 1);
        language: ``[K, 256]`` projected [SEG] embeddings, or None for a memory-tracked frame (K = 1).
        Under ``rules.clamp_absent`` (SAM3) a mask whose object score is <= 0 is :data:`NO_OBJECT_SCORE` everywhere."""
        model = self.model
        count = 1 if language is None else language.shape[0]
        device, dtype = pixel_embedding.device, pixel_embedding.dtype
        points = torch.zeros(1, count, 1, 2, device=device, dtype=dtype)
        labels = -torch.ones(1, count, 1, dtype=torch.int32, device=device)
        sparse, dense = model.prompt_encoder(input_points=points, input_labels=labels, input_boxes=None,
                                             input_masks=None)
        if language is not None:
            sparse = torch.cat([sparse, language.view(1, count, 1, -1).to(sparse.dtype)], dim=2)
        position = self.image_wide_position()
        masks, iou, tokens, object_score = model.mask_decoder(
            image_embeddings=pixel_embedding, image_positional_embeddings=position,
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=True,
            high_resolution_features=list(high_res))
        masks, iou, tokens, object_score = masks[0], iou[0], tokens[0], object_score[0]  # [K,3,H,W] [K,3] [K,3,C] [K,1]
        best = iou.argmax(-1)
        rows = torch.arange(count, device=device)
        low = masks[rows, best].unsqueeze(1)
        if self.rules.clamp_absent:
            low = torch.where(object_score[:, :, None, None] > 0, low, torch.full_like(low, NO_OBJECT_SCORE))
        appear = (object_score > 0).to(tokens.dtype)
        pointer = model.object_pointer_proj(tokens[rows, best])
        pointer = appear * pointer + (1 - appear) * model.no_object_pointer
        return DecodeOutput(low, pointer, object_score, iou[rows, best])

    def image_decode(self, features: ImageFeatures, embeddings: torch.Tensor) -> DecodeOutput:
        """The decoder's output for K embeddings on one image (batch-1 features): logits, IoU and object scores."""
        embeddings = embeddings.to(device=self.device, dtype=self.dtype)
        return self.decode(self.pixel_embedding(features), features.high_res, embeddings)

    def image_logits(self, features: ImageFeatures, embeddings: torch.Tensor) -> torch.Tensor:
        """Low-resolution mask logits ``[K, 1, 4h, 4w]`` for K embeddings on one image (batch-1 features)."""
        return self.image_decode(features, embeddings).low_res_logits


def upsample_logits(low_res: torch.Tensor, image_size: int, height: int, width: int) -> torch.Tensor:
    """The reference's two-step upsampling of mask logits.

    ``low_res``: ``[K, 1, h, w]``. Resized bilinearly (``align_corners=False``) to ``image_size`` squared, then
    to ``(height, width)``. Going to (height, width) directly changes 0.3-0.5% of the thresholded pixels, so
    both steps are kept. Returns float32 logits ``[K, height, width]``."""
    x = F.interpolate(low_res.float(), size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
    return x[:, 0]
