"""The SAM2 trunk of a synthetic checkpoint, given to upstream's ``sam2.py`` (used by the reference scripts).

Upstream's SAM2 wrapper (bytedance/Sa2VA ``projects/sa2va/hf/models*/sam2.py``) builds the releases' Hiera-L trunk from
six constants in ``build_trunk`` and the neck's ``backbone_channel_list``. A checkpoint written with
``sa2va.testing.write_checkpoint(..., sam2="hiera_t")`` holds a smaller trunk, described by the ``sam2_config`` block
of its config.json (transformers' ``Sam2VideoConfig`` names, which the pack reads); ``trunk_source`` rewrites those
constants in the staged copy of upstream's file (each substitution asserted to match exactly once) so that upstream
builds the same trunk. Everything else of upstream's SAM2 (1024 px, the neck's 256 channels, memory, prompt encoder,
mask decoder) is left as it is. A checkpoint without the block (the releases' Hiera-L) leaves the file unchanged.
"""
from __future__ import annotations

import json
from pathlib import Path

#: upstream's Hiera-L constants, as written in ``build_trunk`` / ``build_neck``
HIERA_L_LINES = {
    "embed_dim": "embed_dim = 144",
    "num_heads": "num_heads = 2",
    "stages": "stages = [2, 6, 36, 4]",
    "global_att_blocks": "global_att_blocks = [23, 33, 43]",
    "window_pos_embed_bkg_spatial_size": "window_pos_embed_bkg_spatial_size = [7, 7]",
    "window_spec": "window_spec = [8, 4, 16, 8]",
    "backbone_channel_list": "backbone_channel_list = [1152, 576, 288, 144]",
}


def trunk_values(sam2_block: dict) -> dict[str, object]:
    """Upstream's constants for the trunk a ``sam2_config`` block describes."""
    vision = sam2_block["vision_config"]
    backbone = vision["backbone_config"]
    if sam2_block.get("image_size", 1024) != 1024 or backbone.get("image_size", [1024, 1024]) != [1024, 1024]:
        raise ValueError("upstream's SAM2 runs at 1024 px only; this checkpoint's SAM2 has another input size")
    return {
        "embed_dim": backbone["hidden_size"],
        "num_heads": backbone["num_attention_heads_per_stage"][0],
        "stages": backbone["blocks_per_stage"],
        "global_att_blocks": backbone["global_attention_blocks"],
        "window_pos_embed_bkg_spatial_size": backbone["window_positional_embedding_background_size"],
        "window_spec": backbone["window_size_per_stage"],
        "backbone_channel_list": vision["backbone_channel_list"],
    }


def trunk_source(text: str, config: dict) -> str:
    """Upstream's ``sam2.py`` text building the trunk of the checkpoint whose config.json is ``config``."""
    block = config.get("sam2_config")
    if block is None:
        return text
    for name, value in trunk_values(block).items():
        old = HIERA_L_LINES[name]
        if text.count(old) != 1:
            raise ValueError(f"upstream sam2.py: expected exactly one {old!r}")
        text = text.replace(old, f"{name} = {value!r}")
    return text


def staged_sam2(data: bytes, checkpoint: Path) -> bytes:
    """Upstream's ``sam2.py`` (as published, bytes) for the checkpoint folder the reference is made from."""
    return trunk_source(data.decode(), json.loads((checkpoint / "config.json").read_text())).encode()
