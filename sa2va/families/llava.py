"""Sa2VA-LLaVA-1.5-7B on transformers' own ``LlavaForConditionalGeneration`` (CLIP vision tower + Llama).

Facts this adapter encodes (docs/formats.md, "LLaVA release"):

* config.json is a LLaVA config (``text_config`` of a Llama, ``vision_config`` of a CLIP vision model,
  ``image_token_index``, ``vision_feature_layer``, ``vision_feature_select_strategy``) with Sa2VA's ``template``;
  the native config is built from it with the lm_head untied and ``dtype`` on every sub-config;
* the release stores the LLaVA model under an outer ``model.`` (``model.model.vision_tower.*``,
  ``model.model.multi_modal_projector.*``, ``model.model.language_model.*``, ``model.lm_head.weight``): dropping
  that one prefix gives the native names (transformers 5.x also drops the CLIP tower's inner ``vision_model.``);
* the image is squashed to 336 x 336 (PIL bicubic, aspect ratio not kept), then /255 and CLIP's mean/std in float32,
  not LlavaProcessor's shortest-side resize and centre crop; 576 ``<image>`` tokens per image (the CLIP patches
  of layer -2 without the class token);
* the prompt is the ``vicuna`` instruction without a system text, ``USER: {input} ASSISTANT:``, with the image
  blocks first (several images, video key frames, joined by newlines), a newline, then the text; the tokenizer adds
  BOS; generation stops at ``</s>`` only; [SEG] reads the final norm's output (as the release's
  ``hidden_states[-1]`` under transformers 4.57);
* region prompts are not supported by the release.
"""
from __future__ import annotations

import copy
import logging
import os

import numpy as np
import torch
from PIL import Image

from ..cache import EncoderCache
from ..hub.checkpoint import ShardIndex, check_keys, check_shapes
from ..compat import vision_cache_supported
from ..errors import InputError, ModelFolderError
from ..hub.keymap import PROJECTION_PREFIX, SAM2_PREFIX
from ..quantization import quantization_config
from .base import (LoadOptions, cache_projected_features, place_images, quiet_transformers, require_complete_load,
                   untied_in_dtype)
from .tokenizer_files import load_file_tokenizer

logger = logging.getLogger(__name__)

#: OpenAI CLIP statistics of the release's torchvision ``Normalize`` (applied in float32)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_TOKEN = "<image>"
#: the ``vicuna`` template's user turn as the release's ``predict_forward`` uses it (no system text)
VICUNA_INSTRUCTION = "USER: {input} ASSISTANT:"
TEMPLATES = ("vicuna",)
#: where the release stores the CLIP vision model (transformers 4.5x's ``CLIPVisionModel`` layout)
RELEASE_VISION = "model.model.vision_tower.vision_model."
_REQUIRED_TOKENS = ("[SEG]", IMAGE_TOKEN)
_TOP_KEYS = ("text_config", "vision_config")
_TEXT_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
_VISION_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
                "patch_size")
#: keys of a saved sub-config that are not constructor arguments (or that the adapter sets itself)
_SUB_DROP = {"_name_or_path", "architectures", "dtype", "torch_dtype", "transformers_version", "model_type",
             "_attn_implementation_autoset", "auto_map"}


def vision_prefix(native_names) -> str:
    """Where the installed transformers keeps the CLIP tower's tensors: ``model.vision_tower.vision_model.``
    (4.57's ``CLIPVisionModel``) or ``model.vision_tower.`` (5.x, which dropped the inner ``vision_model``)."""
    nested = "model.vision_tower.vision_model."
    return nested if any(name.startswith(nested) for name in native_names) else "model.vision_tower."


def key_mapping(native_vision: str) -> dict[str, str]:
    """Release name -> runtime name, as regexes for ``from_pretrained(key_mapping=...)``: one outer ``model.``
    dropped, the vision tower moved to ``native_vision``. No pattern matches another's output."""
    return {r"^model\.model\.vision_tower\.vision_model\.": native_vision,
            r"^model\.model\.(?!vision_tower\.vision_model\.)": "model.",
            r"^model\.lm_head\.": "lm_head."}


def release_to_native(key: str, native_vision: str = "model.vision_tower.") -> str | None:
    """Release name of a LLaVA tensor -> runtime name in ``LlavaForConditionalGeneration``; None for tensors outside
    it (SAM2, the [SEG] projection)."""
    if key.startswith(RELEASE_VISION):
        return native_vision + key[len(RELEASE_VISION):]
    return key[len("model."):] if key.startswith("model.") else None


def native_to_release(key: str, native_vision: str = "model.vision_tower.") -> str:
    """Runtime name -> release name (one outer ``model.``, the CLIP tower under ``vision_tower.vision_model.``)."""
    if key.startswith(native_vision):
        return RELEASE_VISION + key[len(native_vision):]
    return "model." + key


def check_config(config: dict, folder: str | os.PathLike = "") -> None:
    """Refuse what ``LlavaForConditionalGeneration`` cannot run exactly as the release does: another language model
    or vision tower, a chat template other than ``vicuna``, multi-layer or full-token vision features, or a config
    without the sizes the model is built from."""
    text = config.get("text_config") or {}
    vision = config.get("vision_config") or {}
    if text.get("model_type") != "llama" or vision.get("model_type") != "clip_vision_model":
        raise ModelFolderError(f"{folder}: this LLaVA-style Sa2VA model uses {text.get('model_type')!r} with "
                               f"{vision.get('model_type')!r}; only a Llama language model with a CLIP vision tower "
                               f"(Sa2VA-LLaVA-1.5-7B) is supported.")
    missing = [k for k in _TOP_KEYS if k not in config] + [f"text_config.{k}" for k in _TEXT_KEYS if k not in text] + \
        [f"vision_config.{k}" for k in _VISION_KEYS if k not in vision]
    if missing:
        raise ModelFolderError(f"{folder}: config.json lacks {', '.join(missing)}; it is not a complete Sa2VA release "
                               f"config. Copy config.json from the model repository again.")
    layer = config.get("vision_feature_layer", -2)
    strategy = config.get("vision_feature_select_strategy", "default")
    if not isinstance(layer, int) or strategy != "default":
        raise ModelFolderError(f"{folder}: config.json asks for vision features {layer!r} / {strategy!r}; only one "
                               f"layer without the class token ('default', as Sa2VA-LLaVA-1.5-7B) is supported.")
    template = str(config.get("template")).replace("-", "_")
    if template not in TEMPLATES:
        raise ModelFolderError(f"{folder}: config.json asks for the chat template {config.get('template')!r}, which "
                               f"this pack does not implement for LLaVA models (supported: {', '.join(TEMPLATES)}); "
                               f"this model cannot be run here.")


def image_token_index(config: dict) -> int:
    """The ``<image>`` id config.json names (``image_token_index`` as transformers 4.57 saves it, ``image_token_id``
    in later exports; LLaVA-1.5's 32000 when absent)."""
    return int(config.get("image_token_index", config.get("image_token_id", 32000)))


def tokens_per_image(config: dict) -> int:
    """``<image>`` tokens per image: (image_size / patch_size)^2 (576 for CLIP ViT-L/14-336)."""
    vision = config["vision_config"]
    return int((vision["image_size"] // vision["patch_size"]) ** 2)


def native_config(config: dict, dtype: torch.dtype):
    """The transformers ``LlavaConfig`` of a release config.json: CLIP vision and Llama text configs from the saved
    dicts, the release's image token, feature layer and projector switches, the lm_head untied and ``dtype`` on every
    sub-config."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    check_config(config)
    vision = {k: copy.deepcopy(v) for k, v in config["vision_config"].items() if k not in _SUB_DROP}
    text = {k: copy.deepcopy(v) for k, v in config["text_config"].items() if k not in _SUB_DROP}
    text["tie_word_embeddings"] = False
    with quiet_transformers():
        native = LlavaConfig(
            vision_config=CLIPVisionConfig(**vision), text_config=LlamaConfig(**text),
            image_token_index=image_token_index(config),
            projector_hidden_act=config.get("projector_hidden_act", "gelu"),
            vision_feature_select_strategy="default", vision_feature_layer=int(config.get("vision_feature_layer", -2)),
            image_seq_length=tokens_per_image(config),
            multimodal_projector_bias=bool(config.get("multimodal_projector_bias", True)), tie_word_embeddings=False)
    return untied_in_dtype(native, dtype)


def clip_pixels(images: list[Image.Image], size: int) -> torch.Tensor:
    """Normalised float32 pixels ``[n, 3, size, size]``: each RGB image squashed to ``size`` x ``size`` with PIL
    bicubic (the release's ``T.Resize((size, size))`` on a PIL image), /255, then CLIP's mean/std in float32."""
    resized = [im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC) for im in images]
    x = torch.from_numpy(np.stack([np.asarray(im, dtype=np.uint8) for im in resized]))
    x = x.permute(0, 3, 1, 2).contiguous().to(torch.float32).div(255)
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(CLIP_STD, dtype=torch.float32)[:, None, None]
    return x.sub(mean).div(std)


class LlavaInputProcessor:
    """Tokenizer + image geometry of the LLaVA release (its folder ships no image-processor settings it uses).

    tokens_per_image: ``<image>`` tokens per image (576); image_size: the CLIP input side (336)."""

    def __init__(self, tokenizer, tokens_per_image: int = 576, image_size: int = 336) -> None:
        self.tokenizer = tokenizer
        self.tokens_per_image = tokens_per_image
        self.image_size = image_size

    def prompt(self, text: str, num_images: int) -> str:
        """The vicuna user turn ``USER: {input} ASSISTANT:``, as the release's ``predict_forward`` builds it: the image
        blocks (``<image>`` x tokens_per_image each, joined by newlines) in place of a ``<image>`` written in
        ``text``, else before it followed by a newline; without images ``text`` with its ``<image>`` removed."""
        if num_images:
            block = "\n".join([IMAGE_TOKEN * self.tokens_per_image] * num_images)
            text = place_images(text, block, "\n")
        else:
            text = text.replace(IMAGE_TOKEN, "")
        return VICUNA_INSTRUCTION.format(input=text)


class LlavaAdapter:
    """Family adapter for the ``llava`` release (Sa2VA-LLaVA-1.5-7B)."""

    name = "llava"
    seg_state = "post_norm"

    def hidden_size(self, config: dict) -> int:
        return int(config["text_config"]["hidden_size"])

    def expected_shapes(self, config: dict) -> dict[str, tuple[int, ...]]:
        """Runtime names and shapes of every persistent tensor of the native model (built on the meta device)."""
        from transformers import LlavaForConditionalGeneration

        with torch.device("meta"):
            model = LlavaForConditionalGeneration(native_config(config, torch.float32))
        return {k: tuple(v.shape) for k, v in model.state_dict().items()}

    def check_checkpoint(self, folder, config: dict, index: ShardIndex) -> None:
        """Zero missing and zero unexpected vision/language tensors, and every shape right, or a clear error."""
        check_config(config, folder)
        native = self.expected_shapes(config)
        prefix = vision_prefix(native)
        expected = {native_to_release(k, prefix): s for k, s in native.items()}
        present = {n for n in index.names() if not n.startswith((SAM2_PREFIX, PROJECTION_PREFIX))}
        check_keys(set(expected), present, folder, "language/vision model")
        check_shapes(expected, index, folder, "language/vision model")

    def load_vlm(self, folder, config: dict, index: ShardIndex, options: LoadOptions) -> torch.nn.Module:
        """Build ``LlavaForConditionalGeneration`` and load the release's ``model.*`` tensors into it through
        ``key_mapping`` (streamed from the shards, quantised when asked)."""
        from transformers import LlavaForConditionalGeneration

        self.check_checkpoint(folder, config, index)
        native = native_config(config, options.dtype)
        mapping = key_mapping(vision_prefix(self.expected_shapes(config)))
        kwargs: dict = {"config": native, "dtype": options.dtype, "attn_implementation": options.attn_implementation,
                        "key_mapping": mapping, "output_loading_info": True}
        if options.quantization:
            kwargs["quantization_config"] = quantization_config(options.quantization, options.dtype)
            kwargs["device_map"] = {"": options.device}
        elif options.device.type != "cpu":
            kwargs["device_map"] = {"": options.device}
        with quiet_transformers():
            model, info = LlavaForConditionalGeneration.from_pretrained(str(folder), **kwargs)
        require_complete_load(folder, list(info.get("missing_keys", [])), list(info.get("unexpected_keys", [])))
        model.eval()
        model.generation_config.do_sample = False
        return model

    def load_processor(self, folder, config: dict) -> LlavaInputProcessor:
        """The tokenizer (``tokenizer.json`` as written, :mod:`~sa2va.families.tokenizer_files`) with the image
        geometry of ``config``."""
        if config:
            check_config(config, folder)
        tokenizer = load_file_tokenizer(folder)
        for token in _REQUIRED_TOKENS:
            token_id = tokenizer.convert_tokens_to_ids(token)
            if token_id is None or token_id == tokenizer.unk_token_id or \
                    tokenizer.convert_ids_to_tokens(token_id) != token:
                raise ModelFolderError(f"{folder}: the tokenizer has no {token} token, so it is not the tokenizer of "
                                       f"Sa2VA-LLaVA. Copy the tokenizer files of the Sa2VA release, not of the base "
                                       f"LLaVA model.")
        if config and tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) != image_token_index(config):
            raise ModelFolderError(f"{folder}: the tokenizer's {IMAGE_TOKEN} id "
                                   f"{tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)} differs from config.json's "
                                   f"image_token_index {image_token_index(config)}; the files belong to "
                                   f"different models. Download the model again.")
        if config:
            return LlavaInputProcessor(tokenizer, tokens_per_image(config), int(config["vision_config"]["image_size"]))
        return LlavaInputProcessor(tokenizer)

    def build_inputs(self, processor: LlavaInputProcessor, images: list[Image.Image], text: str,
                     regions: list | None = None) -> dict:
        """Prompt ids and pixels for one user turn: the images (one, or the key frames of a clip), then ``text``.

        Returns ``input_ids`` / ``attention_mask`` ``[1, P]`` (BOS first) and, with images, ``pixel_values``
        float32 ``[n, 3, 336, 336]``."""
        if regions is not None and len(regions):
            raise InputError("Region prompts need a Sa2VA-InternVL3 model; Sa2VA-LLaVA was not trained with them "
                             "(its own code refuses them). Load an InternVL3 model or leave the regions out.")
        tokenizer = processor.tokenizer
        ids = torch.tensor([tokenizer.encode(processor.prompt(text, len(images)))], dtype=torch.long)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if images:
            inputs["pixel_values"] = clip_pixels(images, processor.image_size)
        return inputs

    def final_norm(self, vlm: torch.nn.Module) -> torch.nn.Module:
        return vlm.model.language_model.norm

    def cache_image_features(self, vlm: torch.nn.Module, cache: EncoderCache) -> None:
        """Serve the projected features ``[576, H]`` of each image from ``cache``, keyed by the image's pixels; the
        vision tower runs on the images it has not seen, alone when all are new (the uncached call, unchanged).
        transformers 5.x only (:func:`~sa2va.compat.vision_cache_supported`)."""
        if vision_cache_supported():
            cache_projected_features(vlm.model, cache, self.name, pack=list,
                                     bypass=lambda kwargs: kwargs.get("image_sizes") is not None)

    def eos_token_ids(self, config: dict, tokenizer) -> list[int]:
        """The tokenizer's eos ``</s>`` only (the release's ``eos_token_id``; Vicuna has no other stop token)."""
        return [int(tokenizer.eos_token_id)]

    def stop_words(self, config: dict) -> tuple[str, ...]:
        """None: the release stops at ``</s>``."""
        return ()


__all__ = ["CLIP_MEAN", "CLIP_STD", "RELEASE_VISION", "LlavaAdapter", "LlavaInputProcessor", "check_config",
           "clip_pixels", "image_token_index", "native_config", "native_to_release", "release_to_native",
           "tokens_per_image", "key_mapping", "vision_prefix"]
