"""Qwen3-VL and Qwen2.5-VL releases of Sa2VA on transformers' own Qwen*VLForConditionalGeneration.

Facts this adapter encodes (docs/formats.md, "Qwen releases"; docs/design.md, "The reference algorithm"):

* release keys come in two layouts (``model.model.language_model.*`` / ``model.model.visual.*`` as written by
  transformers 4.5x, or the legacy ``model.model.layers.*`` / ``model.visual.*``); both map onto the runtime
  names, ``model.lm_head.weight`` onto the untied ``lm_head.weight``;
* the released config says bf16 for the text model while the weights are fp32: the dtype is set on every
  sub-config explicitly;
* the image is resized twice: first like ``qwen_vl_utils.fetch_image`` (factor 28, bicubic), then by the
  processor with min/max pixels 401408 / 1605632;
* [SEG] reads the last decoder layer's output **before** the final norm for Qwen3-VL, after it for Qwen2.5-VL.
"""
from __future__ import annotations

import copy
import logging
import math
import re

import torch
from PIL import Image

from ..cache import EncoderCache, cached_per_unit, content_key
from ..hub.checkpoint import ShardIndex, check_keys, check_shapes
from ..compat import qwen_pixel_budget, vision_cache_supported
from ..errors import InputError, ModelFolderError
from ..quantization import quantization_config
from .base import IMAGE_MARKER, LoadOptions, quiet_transformers, require_complete_load, untied_in_dtype
from .tokenizer_files import load_file_tokenizer

logger = logging.getLogger(__name__)

#: processor pixel budget used by the reference's predict_forward (512*28*28 .. 2048*28*28)
MIN_PIXELS = 512 * 28 * 28
MAX_PIXELS = 2048 * 28 * 28
#: qwen_vl_utils 0.0.14 ``fetch_image`` defaults (image_patch_size 14 -> factor 28 for both flavours)
FETCH_FACTOR = 28
FETCH_MIN_PIXELS = 4 * 28 * 28
FETCH_MAX_PIXELS = 16384 * 28 * 28
MAX_ASPECT_RATIO = 200

#: release name -> runtime name, as regexes for ``from_pretrained(key_mapping=...)`` (both release layouts)
KEY_MAPPING = {
    r"^model\.lm_head\.": "lm_head.",
    r"^model\.model\.language_model\.": "model.language_model.",
    r"^model\.model\.visual\.": "model.visual.",
    r"^model\.model\.(?!language_model\.|visual\.)": "model.language_model.",
    r"^model\.visual\.": "model.visual.",
}
_CONFIG_DROP = {"template", "auto_map", "architectures", "model_type", "transformers_version", "dtype",
                "torch_dtype", "sam2_config", "sam3_config", "_name_or_path"}


def _round_by(x: float, factor: int) -> int:
    return round(x / factor) * factor


def smart_resize(height: int, width: int, factor: int = FETCH_FACTOR, min_pixels: int = FETCH_MIN_PIXELS,
                 max_pixels: int = FETCH_MAX_PIXELS) -> tuple[int, int]:
    """Target (height, width) of ``qwen_vl_utils.smart_resize``: multiples of ``factor`` with the pixel count
    inside [min_pixels, max_pixels] and the aspect ratio nearly kept."""
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise InputError(f"Image aspect ratio {max(height, width) / min(height, width):.0f}:1 is too extreme "
                         f"(at most {MAX_ASPECT_RATIO}:1); crop the image.")
    h_bar = max(factor, _round_by(height, factor))
    w_bar = max(factor, _round_by(width, factor))
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def fetch_resize(image: Image.Image) -> Image.Image:
    """The first of the two resizes the reference applies (qwen_vl_utils ``fetch_image``, PIL bicubic)."""
    height, width = smart_resize(image.height, image.width)
    return image.resize((width, height))


def model_classes(family: str):
    """(config class, model class) of transformers for a Qwen flavour."""
    if family == "qwen3_vl":
        from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

        return Qwen3VLConfig, Qwen3VLForConditionalGeneration
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    return Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration


def native_config(family: str, config: dict, dtype: torch.dtype):
    """The transformers ``Qwen3VLConfig`` / ``Qwen2_5_VLConfig`` of a release config.json.

    Untied lm_head everywhere and ``dtype`` on every sub-config (the release's text_config says bf16 while
    its weights are fp32)."""
    config_class, _ = model_classes(family)
    kwargs = {k: copy.deepcopy(v) for k, v in config.items() if k not in _CONFIG_DROP}
    text = kwargs.get("text_config")
    if isinstance(text, dict):
        # Qwen2.5-VL releases repeat the text fields at the top level, with a stale vocab_size: text_config wins
        for key in [k for k in kwargs if k in text and k != "tie_word_embeddings"]:
            del kwargs[key]
    kwargs["tie_word_embeddings"] = False
    for sub in ("text_config", "vision_config"):
        part = kwargs.get(sub)
        if isinstance(part, dict):
            part.pop("architectures", None)
            part.pop("dtype", None)
            part.pop("torch_dtype", None)
            if sub == "text_config":
                part["tie_word_embeddings"] = False
            if part.get("model_type") in ("qwen3_vl", "qwen2_5_vl"):
                # transformers 4.57 wrote the outer model_type into vision_config
                part["model_type"] = part["model_type"] + ("_vision" if family == "qwen3_vl" else "")
    with quiet_transformers():
        native = config_class(**kwargs)
    return untied_in_dtype(native, dtype)


def release_to_native(key: str) -> str | None:
    """Release name of a VLM tensor -> runtime name in Qwen*VLForConditionalGeneration; None if not VLM."""
    if not key.startswith("model."):
        return None
    key = key[len("model."):]
    if key.startswith("lm_head."):
        return key
    key = re.sub(r"^model\.(?!language_model\.|visual\.)", "model.language_model.", key)
    key = re.sub(r"^visual\.", "model.visual.", key)
    return key


def native_to_release(key: str, layout: str = "v4") -> str:
    """Runtime name -> release name. ``layout``: ``"v4"`` (transformers 4.5x export, the official releases)
    or ``"legacy"`` (``model.model.layers.*`` / ``model.visual.*``)."""
    if key.startswith("lm_head."):
        return "model." + key
    if layout == "legacy":
        if key.startswith("model.visual."):
            return key
        return "model." + re.sub(r"^model\.language_model\.", "model.", key)
    return "model." + key


class QwenVLAdapter:
    """Family adapter for ``qwen3_vl`` and ``qwen2_5_vl`` releases."""

    def __init__(self, family: str) -> None:
        self.name = family
        self.seg_state = "pre_norm" if family == "qwen3_vl" else "post_norm"

    def hidden_size(self, config: dict) -> int:
        return int(config["text_config"]["hidden_size"])

    def expected_shapes(self, config: dict) -> dict[str, tuple[int, ...]]:
        """Runtime names and shapes of every persistent tensor of the native model (built on the meta device)."""
        _, model_class = model_classes(self.name)
        with torch.device("meta"):
            model = model_class(native_config(self.name, config, torch.float32))
        return {k: tuple(v.shape) for k, v in model.state_dict().items()}

    def check_checkpoint(self, folder, config: dict, index: ShardIndex) -> None:
        """Zero missing and zero unexpected VLM tensors, and every shape right, or a clear error."""
        expected = self.expected_shapes(config)
        present: dict[str, str] = {}
        for name in index.names("model."):
            native = release_to_native(name)
            if native in present:
                raise ModelFolderError(f"{folder}: tensor {native} is stored twice ({present[native]} and {name}); "
                                       f"the folder mixes two exports. Download the model again.")
            present[native] = name
        check_keys(set(expected), set(present), folder, "language/vision model")
        check_shapes({present[k]: s for k, s in expected.items()}, index, folder, "language/vision model")

    def load_vlm(self, folder, config: dict, index: ShardIndex, options: LoadOptions) -> torch.nn.Module:
        self.check_checkpoint(folder, config, index)
        _, model_class = model_classes(self.name)
        native = native_config(self.name, config, options.dtype)
        kwargs: dict = {"config": native, "dtype": options.dtype,
                        "attn_implementation": options.attn_implementation,
                        "key_mapping": KEY_MAPPING,
                        "output_loading_info": True}
        if options.quantization:
            kwargs["quantization_config"] = quantization_config(options.quantization, options.dtype)
        kwargs.update(options.placement())
        with quiet_transformers():
            model, info = model_class.from_pretrained(str(folder), **kwargs)
        require_complete_load(folder, [k for k in info.get("missing_keys", []) if "rotary" not in k],
                              list(info.get("unexpected_keys", [])))
        model.eval()
        model.generation_config.do_sample = False
        return model

    def load_processor(self, folder, config: dict):
        from transformers import AutoProcessor

        try:
            with quiet_transformers():
                processor = AutoProcessor.from_pretrained(str(folder), trust_remote_code=False)
        except (OSError, ValueError) as exc:
            raise ModelFolderError(f"{folder}: the tokenizer/processor files cannot be loaded ({exc}). Copy "
                                   f"tokenizer.json, tokenizer_config.json, preprocessor_config.json and "
                                   f"chat_template.jinja from the model repository.") from exc
        # the tokenizer as tokenizer.json is written (transformers 5.x would rebuild it from the vocabulary)
        tokenizer = processor.tokenizer = load_file_tokenizer(folder, "tokenizer.json, tokenizer_config.json, "
                                                                      "vocab.json, merges.txt and chat_template.jinja")
        seg = tokenizer.convert_tokens_to_ids("[SEG]")
        if seg is None or seg == tokenizer.unk_token_id or tokenizer.convert_ids_to_tokens(seg) != "[SEG]":
            raise ModelFolderError(f"{folder}: the tokenizer has no [SEG] token, so this is not a Sa2VA tokenizer. "
                                   f"Copy the tokenizer files of the Sa2VA release, not of the base Qwen model.")
        return processor

    def build_inputs(self, processor, images: list[Image.Image], text: str, regions: list | None = None) -> dict:
        if regions is not None and len(regions):
            raise InputError(f"Region prompts need a Sa2VA-InternVL3 model; {self.name} releases of Sa2VA were not "
                             f"trained with them. Load an InternVL3 model or leave the regions out.")
        content = [{"type": "image", "image": image} for image in images]
        # the release's predict_forward drops every <image> of the text: the chat template places the images first
        content.append({"type": "text", "text": text.replace(IMAGE_MARKER, "")})
        messages = [{"role": "user", "content": content}]
        prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        resized = [fetch_resize(image) for image in images]
        return processor(text=[prompt], images=resized, videos=None, padding=True, return_tensors="pt",
                         **qwen_pixel_budget(MIN_PIXELS, MAX_PIXELS))

    def final_norm(self, vlm: torch.nn.Module) -> torch.nn.Module:
        return vlm.model.language_model.norm

    def cache_image_features(self, vlm: torch.nn.Module, cache: EncoderCache) -> None:
        """Serve the vision tower's per-image outputs (embeddings and, for Qwen3-VL, the deepstack features) from
        ``cache``, keyed by the unit keys the generator serves (made on the CPU from the source images, with the grid
        sizes: nothing is read back from the device); the tower runs on the distinct images it has not seen, alone
        when all are new (the uncached call, unchanged), and uncached when no keys are served. transformers 5.x only
        (:func:`~sa2va.compat.vision_cache_supported`)."""
        if not vision_cache_supported():
            return
        inner = vlm.model
        original = inner.get_image_features
        output_class: list[type] = []

        def get_image_features(pixel_values, image_grid_thw=None, **kwargs):
            units = cache.unit_keys(int(image_grid_thw.shape[0])) if cache.enabled and image_grid_thw is not None \
                else None
            if units is None or units.sizes is None:
                return original(pixel_values, image_grid_thw, **kwargs)
            weight = inner.visual.patch_embed.proj.weight
            pieces = torch.split(pixel_values, list(units.sizes))
            keys = [content_key(self.name, unit, str(weight.device), str(weight.dtype)) for unit in units.keys]
            outputs = []

            def compute(indices: list[int]) -> list[tuple]:
                chosen = pieces[indices[0]] if len(indices) == 1 else torch.cat([pieces[i] for i in indices])
                out = original(chosen, image_grid_thw[indices], **kwargs)
                outputs.append(out)
                output_class[:] = [type(out)]
                deep = getattr(out, "deepstack_features", None)
                return [(out.pooler_output[j], None if deep is None else tuple(level[j] for level in deep))
                        for j in range(len(indices))]

            values, all_new = cached_per_unit(cache, keys, compute)
            if all_new:
                return outputs[0]
            fields = {"pooler_output": tuple(v[0] for v in values)}
            if values[0][1] is not None:
                fields["deepstack_features"] = [tuple(v[1][level] for v in values)
                                                for level in range(len(values[0][1]))]
            return output_class[0](**fields)

        inner.get_image_features = get_image_features

    def eos_token_ids(self, config: dict, tokenizer) -> list[int]:
        eos = config["text_config"].get("eos_token_id", tokenizer.eos_token_id)
        return list(eos) if isinstance(eos, (list, tuple)) else [int(eos)]

    def stop_words(self, config: dict) -> tuple[str, ...]:
        """None: the Qwen releases' code has no stop words; generation ends at the eos ids."""
        return ()


__all__ = ["QwenVLAdapter", "native_config", "smart_resize", "fetch_resize", "release_to_native",
           "native_to_release"]
