"""The interface every family adapter implements."""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
from PIL import Image

from ..cache import EncoderCache, cached_per_unit, content_key
from ..errors import InputError, ModelFolderError
from ..hub.keymap import PROJECTION_PREFIX, SAM2_PREFIX


#: the marker a prompt may hold where the image (or the clip's key frames) goes
IMAGE_MARKER = "<image>"


def place_images(text: str, block: str, separator: str) -> str:
    """``text`` with the images' token text ``block`` where the releases' ``predict_forward`` puts it: in place of
    the one ``<image>`` marker written in ``text`` (nothing added around it), else before ``text`` followed by
    ``separator``. More than one marker raises :class:`InputError` (the releases' code would give the images'
    features twice and fail)."""
    count = text.count(IMAGE_MARKER)
    if count > 1:
        raise InputError(f"The prompt holds {count} {IMAGE_MARKER} markers; write at most one, where the image (or "
                         f"the video's frames) should go, or none to put it before the text.")
    if count == 1:
        return text.replace(IMAGE_MARKER, block)
    return block + separator + text


@dataclass
class LoadOptions:
    """How to build the language model: compute dtype, device, quantisation and attention kernel. device_map: None
    (everything on ``device``), or an accelerate ``device_map`` (``"auto"``, ``"balanced"``, ... or a dict of module
    name prefixes to devices) that spreads the vision-language model over several GPUs."""

    dtype: torch.dtype
    device: torch.device
    quantization: str | None = None  # None | "8bit" | "4bit"
    attn_implementation: str = "sdpa"
    device_map: str | dict | None = None

    def placement(self) -> dict:
        """The ``device_map`` keyword for ``from_pretrained``: the given map, else the whole model on ``device``
        when that is not the CPU or the model is quantised (empty: transformers' default, the CPU)."""
        if self.device_map is not None:
            return {"device_map": self.device_map}
        if self.quantization or self.device.type != "cpu":
            return {"device_map": {"": self.device}}
        return {}


def untied_in_dtype(native, dtype: torch.dtype):
    """``native`` (a transformers vision-language config) set to compute in ``dtype`` throughout, with the LM head
    untied from the embeddings as every Sa2VA release stores it; returns it."""
    native.dtype = dtype
    for sub in ("text_config", "vision_config"):
        getattr(native, sub).dtype = dtype
    native.tie_word_embeddings = False
    native.text_config.tie_word_embeddings = False
    return native


def require_complete_load(folder, missing: list[str], unexpected: list[str]) -> None:
    """Raise :class:`ModelFolderError` when ``from_pretrained`` left language-model tensors missing or unexpected.

    missing / unexpected: its loading-info lists after the family's own exceptions; the grounding encoder and the
    [SEG] projection, which the pack loads itself, are never counted as unexpected."""
    unexpected = [k for k in unexpected if not k.startswith((SAM2_PREFIX, PROJECTION_PREFIX))]
    if missing or unexpected:
        raise ModelFolderError(f"{folder}: transformers reported {len(missing)} missing and {len(unexpected)} "
                               f"unexpected language-model tensors (e.g. {(list(missing) + unexpected)[:3]}). "
                               f"Download the model again.")


class FamilyAdapter(Protocol):
    name: str
    #: "pre_norm": the last decoder layer's output feeds [SEG] (Qwen3-VL under transformers 4.57, the release);
    #: "post_norm": the final norm's output does (Qwen2.5-VL, InternVL).
    seg_state: str

    def load_vlm(self, folder, config: dict, index, options: LoadOptions) -> torch.nn.Module:
        """Build the native model and load the ``model.*`` tensors of the release into it."""

    def load_processor(self, folder, config: dict):
        """The processor (tokenizer + image processor) of the folder, without remote code."""

    def build_inputs(self, processor, images: list[Image.Image], text: str, regions: list | None = None) -> dict:
        """Chat prompt + pixel inputs for one user turn with ``images`` and ``text``: the images where the release's
        ``predict_forward`` puts them (a ``<image>`` written in ``text`` included: :func:`place_images`, or dropped
        where the release drops it).

        ``regions``: optional region masks (HxW arrays of the image's size) for a region prompt; families without
        region prompts raise :class:`~sa2va.errors.InputError` when given any."""

    def final_norm(self, vlm: torch.nn.Module) -> torch.nn.Module:
        """The language model's final norm, hooked to read the [SEG] hidden state."""

    def cache_image_features(self, vlm: torch.nn.Module, cache) -> None:
        """Make ``vlm`` serve its vision tower's per-image outputs from ``cache`` (a :class:`~sa2va.cache.
        EncoderCache`) by content, with the same numbers as without it."""

    def hidden_size(self, config: dict) -> int:
        """Width of the language model's hidden state (input of the [SEG] projection)."""

    def eos_token_ids(self, config: dict, tokenizer) -> list[int]:
        """Token ids that end generation."""

    def stop_words(self, config: dict) -> tuple[str, ...]:
        """Texts that end generation when the decoded answer ends with them (empty: the eos ids suffice)."""


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' loading report while a release is loaded.

    The release also stores SAM2 and the projection, which transformers lists as "unexpected" in a long table;
    the adapters check the keys themselves and raise a precise error instead."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)
        if bar:
            hf_logging.enable_progress_bar()


def cache_projected_features(inner: torch.nn.Module, cache: EncoderCache, family: str,
                             pack: Callable[[list[torch.Tensor]], object],
                             bypass: Callable[[dict], bool] = lambda kwargs: False) -> None:
    """Make ``inner.get_image_features`` (InternVL's and LLaVA's, whose outputs go through
    ``multi_modal_projector``) serve each unit's projected features (an image or a tile: one row of
    ``pixel_values``) from ``cache`` (:class:`~sa2va.cache.EncoderCache`), keyed by the unit keys the generator serves
    (:meth:`~sa2va.cache.EncoderCache.serving`, made on the CPU from the source images) and the feature settings; the
    tower runs on the distinct units it has not seen, alone when all are new (the uncached call, unchanged), and
    uncached when no keys are served.
    ``pack(values)``: the ``pooler_output`` holding the per-unit features; ``bypass(kwargs)``: calls the cache leaves
    to the original."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    original = inner.get_image_features

    def get_image_features(pixel_values, vision_feature_layer=None, vision_feature_select_strategy=None, **kwargs):
        units = cache.unit_keys(int(pixel_values.shape[0])) if cache.enabled and not bypass(kwargs) else None
        if units is None:
            return original(pixel_values=pixel_values, vision_feature_layer=vision_feature_layer,
                            vision_feature_select_strategy=vision_feature_select_strategy, **kwargs)
        weight = inner.multi_modal_projector.linear_1.weight
        keys = [content_key(family, unit, vision_feature_layer, vision_feature_select_strategy, str(weight.device),
                            str(weight.dtype)) for unit in units.keys]
        outputs = []

        def compute(indices: list[int]) -> list[torch.Tensor]:
            chosen = pixel_values if len(indices) == len(keys) else pixel_values[indices]
            out = original(pixel_values=chosen, vision_feature_layer=vision_feature_layer,
                           vision_feature_select_strategy=vision_feature_select_strategy, **kwargs)
            outputs.append(out)
            return list(out.pooler_output)

        values, all_new = cached_per_unit(cache, keys, compute)
        if all_new:
            return outputs[0]
        out = outputs[0] if outputs else BaseModelOutputWithPooling()
        out.pooler_output = pack(values)
        return out

    inner.get_image_features = get_image_features
