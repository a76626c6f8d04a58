"""A release's grounding head from its weights: SAM2 (Hiera-L v1), or SAM 3's tracker for the SAM3 release.

The release's ``grounding_encoder.sam2_model.*`` tensors are renamed onto transformers' ``Sam2VideoModel``
(:mod:`sa2va.hub.keymap`) and streamed straight into its parameters; shapes and names are checked first, so a wrong
or partial folder gives a :class:`~sa2va.errors.ModelFolderError`, never a half-loaded model.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from ..compat import build_uninitialised
from ..errors import ModelFolderError
from ..hub import keymap
from ..hub.checkpoint import ShardIndex, check_keys
from .sam2 import GroundingHead, sam2_config
from .sam3 import load_sam3


def load_grounding(folder: Path, config: dict, index: ShardIndex, dtype: torch.dtype,
                    device: torch.device, compile_encoder: bool | str = False) -> GroundingHead:
    """The grounding head of a release: SAM 3's tracker when the weights hold its ViT trunk (config.json has no
    marker; Sa2VA-Qwen3-VL-4B-SAM3), else SAM2."""
    if keymap.is_sam3_release(index.names(keymap.SAM2_PREFIX)):
        return load_sam3(folder, config, index, dtype, device, compile_encoder)
    return load_sam2(folder, config, index, dtype, device, compile_encoder)


def load_sam2(folder: Path, config: dict, index: ShardIndex, dtype: torch.dtype,
               device: torch.device, compile_encoder: bool | str = False) -> GroundingHead:
    from transformers import Sam2VideoModel

    sam_cfg = sam2_config(config.get("sam2_config"))
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in Sam2VideoModel(sam_cfg).state_dict().items()}
    release_names = keymap.sam2_release_names(shapes)
    present = {n[len(keymap.SAM2_PREFIX):] for n in index.names(keymap.SAM2_PREFIX)}
    # releases may name the fuser scale '.gamma' instead of '.g_weight'
    present_norm = {re.sub(r"\.gamma$", ".g_weight", n) for n in present}
    check_keys(release_names, present_norm, folder, "SAM2")
    stored = {n: tuple(index.tensors[keymap.SAM2_PREFIX + n].shape) for n in present}
    wrong = [(n, stored[n], shapes[native]) for n in present
             if (native := keymap.sam2_key_to_native(n)) in shapes and stored[n] != shapes[native]]
    if wrong:
        name, got, want = wrong[0]
        raise ModelFolderError(f"{folder}: SAM2 tensor {name} has shape {list(got)}, expected {list(want)}; the "
                               f"grounding encoder is not SAM2 Hiera-L v1 as config.json implies. Download the model "
                               f"again.")
    model = build_uninitialised(lambda: Sam2VideoModel(sam_cfg), dtype)
    # Stream every tensor straight into its parameter (cast on copy): no second copy of SAM2 is ever held.
    targets = model.state_dict()
    with torch.no_grad():
        for name, tensor in index.iter_tensors(keymap.SAM2_PREFIX):
            for native, row, value in keymap.sam2_tensor_to_native(name[len(keymap.SAM2_PREFIX):], tensor):
                target = targets[native] if row is None else targets[native][row:row + 1]
                target.copy_(value)
    return GroundingHead(model.to(device=device, dtype=dtype).eval(), compile_encoder=compile_encoder)
