"""The SAM3 part of a synthetic Sa2VA-Qwen3-VL-4B-SAM3 checkpoint: SAM 3's tracker in the release's key names.

Every tensor is drawn under its release name (:func:`sa2va.testing.common.seeded_tensor`), in fp32 as the release:
the fused ``attn.qkv``, ``pos_embed`` with its class-token row, the four point embeddings and the detector neck
``convs.*`` that the pack does not load. ``layers`` and ``width`` shrink the ViT for tests (the same window, patch
size and head size; the last layer global), described by a ``sam3_config`` block in config.json; the release's
geometry (32 layers of 1024, ~1.8 GB) is written without a block.
"""
from __future__ import annotations

import torch

from ..hub import keymap
from ..grounding.sam3 import SAM3_CONFIG_KEY, sam3_config, sam3_model_class
from .common import seeded_tensor

#: ViT depth of the test checkpoints: one windowed and one global layer keep both attention paths
DEFAULT_TEST_LAYERS = 2
#: ViT width of the test checkpoints: a quarter of the release's 1024 (4 heads of 64, the release's head size), which
#: makes a 1008-px encoder pass ~8x cheaper on a CPU; every key name and code path stays the release's
DEFAULT_TEST_WIDTH = 256
RELEASE_WIDTH, RELEASE_HEAD_DIM, RELEASE_MLP_RATIO = 1024, 64, 4736 / 1024


def sam3_geometry(layers: int | None, width: int = RELEASE_WIDTH) -> dict | None:
    """The ``sam3_config`` block of a checkpoint whose ViT has ``layers`` layers (the last one global) of ``width``
    channels (heads of 64, the release's MLP ratio), or None for the release's geometry (32 layers of 1024)."""
    if layers is None and width == RELEASE_WIDTH:
        return None
    layers = 32 if layers is None else layers
    if layers < 1 or width < RELEASE_HEAD_DIM or width % RELEASE_HEAD_DIM:
        raise ValueError(f"unknown SAM3 test geometry: {layers} layers of width {width} (layers >= 1, width a "
                         f"multiple of 64)")
    backbone: dict = {"num_hidden_layers": layers, "global_attn_indexes": [layers - 1]}
    if width != RELEASE_WIDTH:
        backbone.update(hidden_size=width, num_attention_heads=width // RELEASE_HEAD_DIM,
                        intermediate_size=round(width * RELEASE_MLP_RATIO))
    return {"vision_config": {"backbone_config": backbone}}


def sam3_release_state(block: dict | None, seed: int) -> dict[str, torch.Tensor]:
    """Release tensors (names without the ``grounding_encoder.sam2_model.`` prefix) of a random SAM3 tracker with
    the geometry of ``block`` (a ``sam3_config`` block or None)."""
    model_class = sam3_model_class()
    with torch.device("meta"):
        model = model_class(sam3_config(block))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return {name: seeded_tensor("sam3." + name, shape, seed).contiguous()
            for name, shape in sorted(keymap.sam3_release_shapes(shapes).items())}


__all__ = ["DEFAULT_TEST_LAYERS", "DEFAULT_TEST_WIDTH", "SAM3_CONFIG_KEY", "sam3_geometry", "sam3_release_state"]
