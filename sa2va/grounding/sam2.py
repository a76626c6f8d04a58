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

The same head drives SAM 3's tracker (``Sam3TrackerVideoModel``, Sa2VA-Qwen3-VL-4B-SAM3, :mod:`sa2va.grounding.sam3`): its
sub-modules have the same signatures, and what differs is data (:class:`~sa2va.grounding.rules.GroundingRules`: the clamp
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

from ..compat import sam2_image_features
from .rules import NO_OBJECT_SCORE, SAM2_RULES, GroundingRules
from .hiera import (BlockLinears, BufferedLinears, OneDnnLinears, WindowPositionCache, encode_image_fast,
                    fast_encoder_supported, onednn_linears_usable, tensor_version)

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


class GroundingHead:
    """Language-prompted SAM around a transformers ``Sam2VideoModel`` or ``Sam3TrackerVideoModel``.

    The two share the prompt encoder, the mask decoder, the memory modules and their call signatures; what differs
    between the releases is in ``rules`` (:class:`~sa2va.grounding.rules.GroundingRules`) and in the model's config. The
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
        self._window_positions = WindowPositionCache()
        self._image_position_key = None
        self._image_position: torch.Tensor | None = None
        self._encoder = self._encode_eager
        #: how the image encoder's linear layers run on CPU (no autograd, not compiled): "onednn" = fused oneDNN
        #: kernels where :func:`~sa2va.grounding.hiera.onednn_linears_usable` (x86-64, fp32), else "addmm"; "addmm" = the
        #: stock products into one reused buffer, bit for bit transformers' ``get_image_features``
        self.cpu_kernels: str = "onednn"
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
        positions = self._window_positions if torch.is_inference_mode_enabled() else WindowPositionCache()
        return encode_image_fast(self.model, pixel_values, positions, linears=self._linears(pixel_values))

    def _linears(self, pixel_values: torch.Tensor) -> BlockLinears:
        """The encoder blocks' linear kernels for this call (see :attr:`cpu_kernels`)."""
        if self.cpu_kernels not in ("onednn", "addmm"):
            raise ValueError(f"cpu_kernels must be 'onednn' or 'addmm', not {self.cpu_kernels!r}")
        if pixel_values.device.type != "cpu" or self.compiled is not None or torch.is_grad_enabled():
            return BlockLinears()
        if self.cpu_kernels == "onednn" and onednn_linears_usable(pixel_values.dtype):
            return OneDnnLinears()
        return BufferedLinears()

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
        key = (weight.device, weight.dtype, weight.data_ptr(), tensor_version(weight))
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
