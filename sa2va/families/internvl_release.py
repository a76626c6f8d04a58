"""What an InternVL-style Sa2VA release is, on disk: its chat templates, its config (checked and turned into the
native ``InternVLConfig``) and its tensor names (the key map both ways, and the fused q/k/v tensors split on load).
The facts and their reasons: :mod:`sa2va.families.internvl` and docs/formats.md, "InternVL releases"."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch

from ..errors import ModelFolderError
from ..hub.checkpoint import ShardIndex
from . import internlm2
from .base import quiet_transformers, untied_in_dtype

IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"
VP_START, VP_END = "<vp>", "</vp>"


@dataclass(frozen=True)
class ChatTemplate:
    """One chat template of upstream's ``templates.py`` as ``predict_forward`` uses it: the user turn
    (``INSTRUCTION``, no system turn) and the ``STOP_WORDS``, which stop generation when the decoded answer ends
    with them. required_tokens: tokens the release's tokenizer must have as single tokens for this template."""

    name: str
    instruction: str
    stop_words: tuple[str, ...]
    required_tokens: tuple[str, ...] = ()


#: the templates Sa2VA releases with an InternVL-style config use: ``qwen_chat`` (InternVL3 releases, Sa2VA-1B),
#: ``phi3_chat`` (Sa2VA-4B, whose Qwen2 tokenizer has no ``<|end|>`` token: the stop word is text) and
#: ``internlm2_chat`` (Sa2VA-8B / 26B: qwen_chat's text; the tokenizer prepends BOS, the eos is ``</s>``)
TEMPLATES = {
    "qwen_chat": ChatTemplate("qwen_chat", "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n",
                              ("<|im_end|>", "<|endoftext|>"), ("<|im_start|>", "<|im_end|>", "<|endoftext|>")),
    "phi3_chat": ChatTemplate("phi3_chat", "<|user|>\n{input}<|end|>\n<|assistant|>\n", ("<|end|>",)),
    "internlm2_chat": ChatTemplate("internlm2_chat", "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n",
                                   ("<|im_end|>",), ("<|im_start|>", "<|im_end|>")),
}
#: language models an InternVL-style release may carry: llm_config.architectures[0] -> decoder name
DECODERS = {"Qwen2ForCausalLM": "qwen2", internlm2.ARCHITECTURE: "internlm2"}
REQUIRED_TOKENS = ("[SEG]", IMG_START, IMG_END, IMG_CONTEXT, VP_START, VP_END)
#: config.json keys the adapter reads without a default
_VISION_KEYS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers", "patch_size")
_LLM_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")

#: llm_config keys that are not Qwen2Config arguments (InternVL3's config and the 4.57 export carry them)
_LLM_DROP = {"_name_or_path", "auto_map", "architectures", "use_bfloat16", "moe_config", "bias", "layer_types",
             "_attn_implementation_autoset", "attn_implementation", "torch_dtype", "dtype", "transformers_version",
             "model_type", "use_flash_attn", "_commit_hash"}

# (release name, runtime name) pairs. "{i}" is a layer number; a name ending in "." is a prefix, any other name
# is a whole tensor name. Both directions of the key map are generated from this one table.
_KEY_PAIRS = [
    ("vision_model.embeddings.class_embedding", "model.vision_tower.embeddings.cls_token"),
    ("vision_model.embeddings.position_embedding", "model.vision_tower.embeddings.position_embeddings"),
    ("vision_model.embeddings.patch_embedding.", "model.vision_tower.embeddings.patch_embeddings.projection."),
    ("vision_model.encoder.layers.{i}.ls1", "model.vision_tower.encoder.layer.{i}.lambda_1"),
    ("vision_model.encoder.layers.{i}.ls2", "model.vision_tower.encoder.layer.{i}.lambda_2"),
    ("vision_model.encoder.layers.{i}.norm1.", "model.vision_tower.encoder.layer.{i}.layernorm_before."),
    ("vision_model.encoder.layers.{i}.norm2.", "model.vision_tower.encoder.layer.{i}.layernorm_after."),
    ("vision_model.encoder.layers.{i}.attn.proj.", "model.vision_tower.encoder.layer.{i}.attention.projection_layer."),
    ("vision_model.encoder.layers.{i}.attn.q_norm.", "model.vision_tower.encoder.layer.{i}.attention.q_norm."),
    ("vision_model.encoder.layers.{i}.attn.k_norm.", "model.vision_tower.encoder.layer.{i}.attention.k_norm."),
    ("vision_model.encoder.layers.{i}.mlp.", "model.vision_tower.encoder.layer.{i}.mlp."),
    ("mlp1.0.", "model.multi_modal_projector.layer_norm."),
    ("mlp1.1.", "model.multi_modal_projector.linear_1."),
    ("mlp1.3.", "model.multi_modal_projector.linear_2."),
    *internlm2.KEY_PAIRS,
    ("language_model.model.", "model.language_model."),
    ("language_model.lm_head.", "lm_head."),
]
#: the pairs of each decoder (the InternLM2 ones only for InternLM2; the generic prefix then maps what is left)
_DECODER_PAIRS = {"qwen2": [p for p in _KEY_PAIRS if p not in internlm2.KEY_PAIRS], "internlm2": _KEY_PAIRS}
#: the fused attention input projection of InternViT: rows are [q; k; v]
QKV_RELEASE = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.attn\.qkv\.(weight|bias)$")
QKV_NATIVE = re.compile(r"^model\.vision_tower\.encoder\.layer\.(\d+)\.attention\.([qkv])_proj\.(weight|bias)$")
WQKV_RELEASE = re.compile(internlm2.WQKV_RELEASE)
WQKV_NATIVE = re.compile(internlm2.WQKV_NATIVE)
#: the fused wqkv as transformers may report it (renamed by the generic ``language_model.model.`` prefix)
WQKV_RENAMED = re.compile(r"^model\.language_model\.layers\.(\d+)\.attention\.wqkv\.weight$")


def _pattern(name: str) -> str:
    regex = "^" + re.escape(name).replace(re.escape("{i}"), r"(\d+)")
    return regex if name.endswith(".") else regex + "$"


def _template(name: str) -> str:
    return name.replace("{i}", r"\1")


#: release name -> runtime name, as regexes for ``from_pretrained(key_mapping=...)`` (the first matching pattern
#: renames a key); the fused qkv tensors are not in it
KEY_MAPPING = {_pattern(release): _template(native) for release, native in _KEY_PAIRS}
_INVERSE = {decoder: [(re.compile(_pattern(native)), _template(release)) for release, native in pairs]
            for decoder, pairs in _DECODER_PAIRS.items()}
_FORWARD = [(re.compile(pattern), replacement) for pattern, replacement in KEY_MAPPING.items()]


def decoder_of(config: dict) -> str:
    """``"qwen2"`` or ``"internlm2"``: the language model of an InternVL-style config (``llm_config.architectures``);
    anything else is refused by :func:`check_config`."""
    arch = ((config.get("llm_config") or {}).get("architectures") or ["?"])[0]
    return DECODERS.get(arch, arch)


def release_to_native(key: str) -> list[str]:
    """Runtime names one release tensor fills: one name, three for a fused ``attn.qkv`` or InternLM2
    ``attention.wqkv`` (q, k, v in that order), none for tensors outside the vision-language model (SAM2, the [SEG]
    projection)."""
    m = QKV_RELEASE.match(key)
    if m:
        layer, kind = m.groups()
        return [f"model.vision_tower.encoder.layer.{layer}.attention.{p}_proj.{kind}" for p in "qkv"]
    m = WQKV_RELEASE.match(key)
    if m:
        return [f"model.language_model.layers.{m.group(1)}.self_attn.{p}_proj.weight" for p in "qkv"]
    for pattern, replacement in _FORWARD:
        if pattern.match(key):
            return [pattern.sub(replacement, key, count=1)]
    return []


def native_to_release(key: str, decoder: str = "qwen2") -> str | None:
    """Runtime name -> the release tensor that holds it (the fused ``attn.qkv`` for the vision tower's q/k/v, the
    fused ``attention.wqkv`` for InternLM2's); None if unknown. decoder: ``"qwen2"`` or ``"internlm2"``."""
    m = QKV_NATIVE.match(key)
    if m:
        layer, _, kind = m.groups()
        return f"vision_model.encoder.layers.{layer}.attn.qkv.{kind}"
    m = WQKV_NATIVE.match(key)
    if m and decoder == "internlm2":
        return f"language_model.model.layers.{m.group(1)}.attention.wqkv.weight"
    for pattern, replacement in _INVERSE[decoder]:
        if pattern.match(key):
            return pattern.sub(replacement, key, count=1)
    return None


def split_qkv(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split a fused InternViT ``attn.qkv`` weight ``[3C, C]`` or bias ``[3C]`` into q, k, v (``[C, C]`` / ``[C]``;
    the shape was checked against config.json before)."""
    q, k, v = tensor.chunk(3, dim=0)
    return q, k, v


# ------------------------------------------------------------------------------------------------- config
def check_config(config: dict, folder: str | os.PathLike = "") -> None:
    """Refuse what ``InternVLForConditionalGeneration`` cannot run exactly: another vision tower or language model,
    pixel-shuffle version 1, a chat template this adapter does not implement, or a config without the sizes the
    model is built from."""
    vision = config.get("vision_config") or {}
    llm = config.get("llm_config") or {}
    vision_arch = (vision.get("architectures") or ["InternVisionModel"])[0]
    llm_arch = (llm.get("architectures") or ["?"])[0]
    if vision_arch != "InternVisionModel" or llm_arch not in DECODERS:
        raise ModelFolderError(f"{folder}: this InternVL-style Sa2VA model uses {vision_arch} + {llm_arch}; only "
                               f"InternVisionModel + Qwen2ForCausalLM (Sa2VA-1B, Sa2VA-4B and the Sa2VA-InternVL3 "
                               f"releases) or + InternLM2ForCausalLM (Sa2VA-8B, Sa2VA-26B) is supported.")
    if config.get("ps_version", "v1") != "v2":
        raise ModelFolderError(f"{folder}: config.json has ps_version {config.get('ps_version', 'v1')!r}; only "
                               f"pixel-shuffle 'v2' (all Sa2VA-InternVL3 releases) is supported.")
    missing = [f"vision_config.{k}" for k in _VISION_KEYS if k not in vision] + \
        [f"llm_config.{k}" for k in _LLM_KEYS if k not in llm]
    if missing:
        raise ModelFolderError(f"{folder}: config.json lacks {', '.join(missing)}; it is not a complete Sa2VA release "
                               f"config. Copy config.json from the model repository again.")
    chat_template(config, folder)


def chat_template(config: dict, folder: str | os.PathLike = "") -> ChatTemplate:
    """The chat template ``config["template"]`` names (``-`` read as ``_``, as upstream does); any template
    other than :data:`TEMPLATES` is refused with an error naming it."""
    name = str(config.get("template")).replace("-", "_")
    if name not in TEMPLATES:
        raise ModelFolderError(f"{folder}: config.json asks for the chat template {config.get('template')!r}, which "
                               f"this pack does not implement (supported: {', '.join(TEMPLATES)}); this model "
                               f"cannot be run here.")
    return TEMPLATES[name]


def tokens_per_tile(config: dict) -> int:
    """Image tokens per 448-px tile: (image_size / patch_size)^2 * downsample_ratio^2 (256 for InternVL3)."""
    vision = config["vision_config"]
    size = config.get("force_image_size") or vision["image_size"]
    return int((size // vision["patch_size"]) ** 2 * config.get("downsample_ratio", 0.5) ** 2)


def native_config(config: dict, image_token_id: int, dtype: torch.dtype):
    """The transformers ``InternVLConfig`` of a release config.json (docs/formats.md, "InternVL releases").

    ``image_token_id``: the tokenizer's id of ``<IMG_CONTEXT>``. InternViT's switches are passed explicitly with
    the *upstream* defaults for absent keys; the lm_head is untied on the outer and the text config; ``dtype`` is set
    on every sub-config."""
    from transformers import InternVLConfig, InternVLVisionConfig, Qwen2Config

    check_config(config)
    v = config["vision_config"]
    image_size = config.get("force_image_size") or v["image_size"]
    with quiet_transformers():
        vision = InternVLVisionConfig(
            hidden_size=v["hidden_size"], intermediate_size=v["intermediate_size"],
            num_attention_heads=v["num_attention_heads"], num_hidden_layers=v["num_hidden_layers"],
            image_size=image_size, patch_size=v["patch_size"], num_channels=v.get("num_channels", 3),
            hidden_act=v.get("hidden_act", "gelu"), layer_norm_eps=v.get("layer_norm_eps", 1e-6),
            norm_type=v.get("norm_type", "rms_norm"), attention_bias=v.get("qkv_bias", False),
            use_qk_norm=v.get("qk_normalization", True), layer_scale_init_value=v.get("initializer_factor", 0.1),
            hidden_dropout_prob=v.get("dropout", 0.0), attention_dropout=v.get("attention_dropout", 0.0),
            projection_dropout=v.get("dropout", 0.0), use_absolute_position_embeddings=True,
            use_mean_pooling=True, use_mask_token=False)
        if decoder_of(config) == "internlm2":
            text = internlm2.text_config(config["llm_config"])
        else:
            llm = {k: val for k, val in config["llm_config"].items() if k not in _LLM_DROP}
            llm.update(tie_word_embeddings=False, use_cache=True)
            text = Qwen2Config(**llm)
        native = InternVLConfig(
            vision_config=vision, text_config=text, image_token_id=image_token_id,
            image_seq_length=tokens_per_tile(config), downsample_ratio=config.get("downsample_ratio", 0.5),
            projector_hidden_act="gelu", vision_feature_layer=config.get("select_layer", -1),
            vision_feature_select_strategy="default", tie_word_embeddings=False)
    return untied_in_dtype(native, dtype)


def load_fused_qkv(model: torch.nn.Module, index: ShardIndex, fused: list[str], config: dict) -> None:
    """Split each fused release tensor into q/k/v projections (cast on copy), reading only those tensors from
    their shards: InternViT's ``attn.qkv`` in three equal row blocks, InternLM2's ``attention.wqkv`` by KV
    group (:func:`~sa2va.families.internlm2.split_wqkv`)."""
    llm = config["llm_config"]
    from safetensors import safe_open

    params = dict(model.named_parameters())
    by_shard: dict[str, list[str]] = {}
    for name in fused:
        by_shard.setdefault(index.tensors[name].shard, []).append(name)
    with torch.no_grad():
        for shard, names in by_shard.items():
            with safe_open(str(index.folder / shard), framework="pt", device="cpu") as handle:
                for release in names:
                    tensor = handle.get_tensor(release)
                    if WQKV_RELEASE.match(release):
                        parts = internlm2.split_wqkv(tensor, llm["num_attention_heads"],
                                                     llm.get("num_key_value_heads", llm["num_attention_heads"]))
                    else:
                        parts = split_qkv(tensor)
                    for name, part in zip(release_to_native(release), parts):
                        params[name].copy_(part)
