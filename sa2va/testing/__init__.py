"""Synthetic Sa2VA checkpoints for tests, benchmarks and the installation check.

Tiny (or, for benchmarks, larger) random checkpoints in the exact on-disk format of the official releases, so the
real loading and inference code runs without downloading anything. Every file is a pure function of the writer's
arguments, identical on every CPU (see :mod:`sa2va.testing.common`), so reference outputs made once from a
checkpoint with the upstream code can be committed and compared against a checkpoint rebuilt later.

- :func:`write_checkpoint`: one entry point for every family;
- :class:`ForceTokens`: a logits processor that forces an answer (exact [SEG] counts from random weights);
- :class:`ForceByPromptLength`: one forced answer per batch row, picked by the row's unpadded prompt length;
- :data:`TINY_SAM2`: the 256-px SAM2 geometry of the tiny checkpoints.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .common import TINY_SAM2, ForceByPromptLength, ForceTokens

FAMILIES = ("qwen3_vl", "qwen2_5_vl", "internvl", "llava")


def write_checkpoint(folder: str | os.PathLike, family: str = "qwen3_vl", *, sam2: str = "tiny", seed: int = 0,
                     layout: str = "v4", weight_dtype: torch.dtype | None = None,
                     max_shard_bytes: int = 64 * 2**20, seg_chain: bool = True,
                     text_size: dict | None = None, template: str | None = None,
                     single_file: bool = False, decoder: str = "qwen2", vision_tower: str = "300m",
                     grounding: str = "sam2", sam3_layers: int | None = 2, sam3_width: int = 256,
                     tokenizer_form: str = "metaspace") -> Path:
    """Write a random Sa2VA checkpoint of ``family`` in its releases' format into ``folder``; returns the folder.

    family: one of :data:`FAMILIES`. sam2: ``"tiny"`` (a 256-px SAM2 described by a ``sam2_config`` block),
    ``"hiera_t"`` (Hiera-T at 1024 px, a block too) or ``"full"`` (SAM2 Hiera-L v1 at 1024 px, as the releases).
    layout: ``"v4"`` (the releases' key layout) or, for
    Qwen2.5-VL, ``"legacy"``. weight_dtype: None for the dtype of the family's releases (fp32 for Qwen, bf16 for
    InternVL and LLaVA). seg_chain: bias the weights so the model answers ``Sure, it is [SEG].`` by itself. text_size:
    overrides of the tiny language model's geometry (benchmarks). template, single_file, decoder and vision_tower
    (InternVL only): the chat template config.json names (``"phi3_chat"`` as Sa2VA-4B), one ``model.safetensors``
    without an index (as Sa2VA-1B), ``decoder="internlm2"`` (Sa2VA-8B's format; ``weight_dtype=None`` then means
    its mixed bf16/fp32 export) and ``vision_tower="6b"`` (Sa2VA-26B's InternViT-6B switches); see
    :func:`sa2va.testing.internvl.write_checkpoint`. grounding: ``"sam3"`` writes Sa2VA-Qwen3-VL-4B-SAM3's format
    (qwen3_vl only) with a SAM3 ViT of ``sam3_layers`` layers of ``sam3_width`` (``None, 1024``: the release's); see
    :func:`sa2va.testing.qwen.write_checkpoint`. tokenizer_form (LLaVA only): ``"metaspace"`` or ``"legacy"``, the
    form of its ``tokenizer.json`` (:data:`sa2va.testing.llava.TOKENIZER_FORMS`)."""
    if grounding != "sam2" and family != "qwen3_vl":
        raise ValueError(f"unknown grounding {grounding!r} for {family}: sam3 is a format of the qwen3_vl family only")
    if tokenizer_form != "metaspace" and family != "llava":
        raise ValueError(f"tokenizer_form {tokenizer_form!r} is an option of LLaVA checkpoints only")
    if family == "internvl":
        from .internvl import write_checkpoint as write_internvl

        if layout != "v4":
            raise ValueError(f"unknown layout {layout!r} for InternVL (its releases have one layout)")
        if weight_dtype is None and decoder != "internlm2":
            weight_dtype = torch.bfloat16
        return write_internvl(folder, sam2=sam2, seed=seed, weight_dtype=weight_dtype,
                              max_shard_bytes=max_shard_bytes, seg_chain=seg_chain, text_size=text_size,
                              template=template, single_file=single_file, decoder=decoder,
                              vision_tower=vision_tower)
    if family == "llava":
        from .llava import write_checkpoint as write_llava

        if layout != "v4" or template is not None or single_file or decoder != "qwen2" or vision_tower != "300m":
            raise ValueError("layout, template, single_file, decoder and vision_tower are not options of LLaVA "
                             "checkpoints (one format)")
        return write_llava(folder, sam2=sam2, seed=seed, weight_dtype=weight_dtype or torch.float32,
                           max_shard_bytes=max_shard_bytes, seg_chain=seg_chain, text_size=text_size,
                           tokenizer_form=tokenizer_form)
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {', '.join(FAMILIES)}")
    if template is not None or single_file or decoder != "qwen2" or vision_tower != "300m":
        raise ValueError("template, single_file, decoder and vision_tower are options of InternVL checkpoints only")
    from .qwen import write_checkpoint as write_qwen

    return write_qwen(folder, family, sam2=sam2, seed=seed, layout=layout, weight_dtype=weight_dtype,
                      max_shard_bytes=max_shard_bytes, seg_chain=seg_chain, text_size=text_size,
                      grounding=grounding, sam3_layers=sam3_layers, sam3_width=sam3_width)


__all__ = ["FAMILIES", "TINY_SAM2", "ForceByPromptLength", "ForceTokens", "write_checkpoint"]
