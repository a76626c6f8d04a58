"""Family adapters: the only code that knows Qwen from InternVL.

An adapter builds the native transformers vision-language model from a release folder, loads its processor,
turns images and a prompt into model inputs, and says which hidden state feeds the [SEG] projection.
"""
from __future__ import annotations

from .base import FamilyAdapter


def adapter_for(family: str) -> FamilyAdapter:
    """The adapter for a family name returned by :func:`sa2va.hub.checkpoint.detect_family`."""
    if family in ("qwen3_vl", "qwen2_5_vl"):
        from .qwen_vl import QwenVLAdapter

        return QwenVLAdapter(family)
    if family == "internvl":
        from .internvl import InternVLAdapter

        return InternVLAdapter()
    if family == "llava":
        from .llava import LlavaAdapter

        return LlavaAdapter()
    raise ValueError(f"unknown Sa2VA family {family!r}")


__all__ = ["FamilyAdapter", "adapter_for"]
