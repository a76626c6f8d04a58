"""Tiny Sa2VA checkpoints in the exact on-disk format of the official releases, with random weights.

Used by the tests, the installation check (``test_sa2va.py``) and the benchmarks: they exercise the real
loading and inference code without downloading anything. The writer is deterministic (the same bytes on every
run with the same torch), so reference outputs made once from a checkpoint with the upstream code can be
committed and compared against a checkpoint rebuilt later.

Format (docs/formats.md, "Qwen releases", as ``tools/convert_to_hf.py`` writes it under transformers 4.57):
``config.json`` of ``model_type: "sa2va_chat"``, fp32 safetensors shards + ``model.safetensors.index.json``, the
tokenizer files (``tokenizer.json``, ``tokenizer_config.json``, ``vocab.json``, ``merges.txt``,
``added_tokens.json``, ``special_tokens_map.json``, ``chat_template.jinja``) and the processor files
(``preprocessor_config.json``, ``video_preprocessor_config.json``).

The tokenizer is a byte-level BPE trained here on a few sentences; it carries Qwen's special tokens and
Sa2VA's five added tokens in the release order (ids differ from the real ones, as the tests allow).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from ..hub import keymap
from .common import (
    CORPUS,
    NUM_MERGES,
    QWEN_NON_SPECIAL,
    QWEN_SPECIAL,
    QWEN_SPLIT,
    SA2VA_TOKENS,
    projection_state,
    sam2_block,
    sam2_release_state,
    save_sharded,
    seeded_tensor,
    add_seg_chain,
    train_bpe,
)

logger = logging.getLogger(__name__)

QWEN3_EXTRA = ["<tool_response>", "</tool_response>", "<think>", "</think>"]

QWEN2_5_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Renders like the Qwen3-VL base template for system/user/assistant turns with images, videos and text
# (the base template's tool-calling branches are left out of this test tokenizer).
QWEN3_CHAT_TEMPLATE = (
    "{%- set image_count = namespace(value=0) %}{%- set video_count = namespace(value=0) %}"
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}{%- else %}"
    "{%- for content in message['content'] %}"
    "{%- if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{%- set image_count.value = image_count.value + 1 %}"
    "{%- if add_vision_id %}{{- 'Picture ' ~ image_count.value ~ ': ' }}{%- endif %}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif content['type'] == 'video' or 'video' in content %}{%- set video_count.value = video_count.value + 1 %}"
    "{%- if add_vision_id %}{{- 'Video ' ~ video_count.value ~ ': ' }}{%- endif %}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif 'text' in content %}{{- content['text'] }}{%- endif %}{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Tiny model shapes. H=64 keeps a full predict on CPU well under a second apart from SAM2.
TINY_TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4,
             "num_key_value_heads": 2, "head_dim": 16}
# ----------------------------------------------------------------------------------------------- tokenizer
def _added_tokens(family: str) -> list[tuple[str, bool]]:
    """(content, special) in release order: Qwen's specials, its non-special extras, then Sa2VA's tokens."""
    out = [(t, True) for t in QWEN_SPECIAL] + [(t, False) for t in QWEN_NON_SPECIAL]
    if family == "qwen3_vl":
        out += [(t, False) for t in QWEN3_EXTRA]
    out += [(t, True) for t in SA2VA_TOKENS]
    return out


def write_tokenizer(folder: Path, family: str) -> dict[str, int]:
    """Write the tokenizer files of a release; returns token -> id for the added tokens."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
                                   pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    words = [w for w, _ in pre.pre_tokenize_str(CORPUS)]
    vocab, merges = train_bpe(words, NUM_MERGES)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, dropout=None, unk_token=None,
                               continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False,
                               byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    ids: dict[str, int] = {}
    for content, special in _added_tokens(family):
        token = AddedToken(content, single_word=False, lstrip=False, rstrip=False, normalized=False, special=special)
        if special:
            tok.add_special_tokens([token])
        else:
            tok.add_tokens([token])
        ids[content] = tok.token_to_id(content)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                                       encoding="utf-8")
    (folder / "added_tokens.json").write_text(json.dumps(dict(sorted(ids.items(), key=lambda kv: kv[0])),
                                                         indent=2) + "\n", encoding="utf-8")
    decoder = {str(i): {"content": c, "lstrip": False, "normalized": False, "rstrip": False,
                        "single_word": False, "special": s}
               for (c, s), i in zip(_added_tokens(family), (ids[c] for c, _ in _added_tokens(family)))}
    specials = [t for t in QWEN_SPECIAL if t != "<|endoftext|>"]
    processor_class = "Qwen3VLProcessor" if family == "qwen3_vl" else "Qwen2_5_VLProcessor"
    tokenizer_config = {
        "add_prefix_space": False, "added_tokens_decoder": decoder,
        "additional_special_tokens": specials, "bos_token": None, "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>", "errors": "replace", "extra_special_tokens": {},
        "model_max_length": 262144 if family == "qwen3_vl" else 131072, "pad_token": "<|endoftext|>",
        "padding_side": "right",
        "processor_class": processor_class, "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False) + "\n",
                                                  encoding="utf-8")
    special_map = {"additional_special_tokens": specials,
                   "eos_token": {"content": "<|im_end|>", "lstrip": False, "normalized": False, "rstrip": False,
                                 "single_word": False},
                   "pad_token": {"content": "<|endoftext|>", "lstrip": False, "normalized": False, "rstrip": False,
                                 "single_word": False}}
    (folder / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n", encoding="utf-8")
    template = QWEN3_CHAT_TEMPLATE if family == "qwen3_vl" else QWEN2_5_CHAT_TEMPLATE
    (folder / "chat_template.jinja").write_text(template, encoding="utf-8")
    return ids


def write_processor_configs(folder: Path, family: str) -> None:
    """preprocessor_config.json and video_preprocessor_config.json as transformers 4.57 writes the base settings."""
    qwen3 = family == "qwen3_vl"
    processor_class = "Qwen3VLProcessor" if qwen3 else "Qwen2_5_VLProcessor"
    mean = [0.5, 0.5, 0.5] if qwen3 else [0.48145466, 0.4578275, 0.40821073]
    std = [0.5, 0.5, 0.5] if qwen3 else [0.26862954, 0.26130258, 0.27577711]
    common = {"crop_size": None, "data_format": "channels_first", "default_to_square": True, "device": None,
              "do_center_crop": None, "do_convert_rgb": True, "do_normalize": True, "do_rescale": True,
              "do_resize": True, "image_mean": mean, "image_std": std, "input_data_format": None, "merge_size": 2,
              "pad_size": None, "patch_size": 16 if qwen3 else 14, "processor_class": processor_class,
              "resample": 3, "rescale_factor": 0.00392156862745098, "temporal_patch_size": 2}
    pixels = {"max_pixels": None, "min_pixels": None} if qwen3 else {"max_pixels": 12845056, "min_pixels": 3136}
    image = {**common, **pixels, "disable_grouping": None, "do_pad": None,
             "image_processor_type": "Qwen2VLImageProcessorFast", "return_tensors": None,
             "size": {"longest_edge": 16777216, "shortest_edge": 65536} if qwen3 else
             {"longest_edge": 12845056, "shortest_edge": 3136}}
    video = {**common, "do_sample_frames": qwen3, "fps": 2 if qwen3 else None, "max_frames": 768, "min_frames": 4,
             "num_frames": None, "return_metadata": False, "video_metadata": None,
             "size": {"longest_edge": 25165824, "shortest_edge": 4096} if qwen3 else
             {"longest_edge": 12845056, "shortest_edge": 3136},
             "video_processor_type": "Qwen3VLVideoProcessor" if qwen3 else "Qwen2VLVideoProcessor"}
    if not qwen3:
        video.update({"max_pixels": 12845056, "min_pixels": 3136})
    for name, content in (("preprocessor_config.json", image), ("video_preprocessor_config.json", video)):
        (folder / name).write_text(json.dumps(dict(sorted(content.items())), indent=2) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------------------------- config
def _mrope_section(head_dim: int) -> list[int]:
    """Multimodal RoPE split (temporal, height, width) of ``head_dim // 2`` frequencies: [2, 3, 3] for 16."""
    half = head_dim // 2
    spatial = 3 * half // 8
    return [half - 2 * spatial, spatial, spatial]


def release_config(family: str, ids: dict[str, int], vocab_size: int, sam2: dict | None,
                   text_size: dict | None = None) -> dict:
    """config.json as a transformers 4.57 export of a tiny Sa2VA model writes it.

    ``text_size``: overrides of :data:`TINY_TEXT` (hidden_size, intermediate_size, num_hidden_layers, ...)."""
    size = {**TINY_TEXT, **(text_size or {})}
    head_dim = size.get("head_dim") or size["hidden_size"] // size["num_attention_heads"]
    text = {"attention_bias": False, "attention_dropout": 0.0, "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"], "hidden_act": "silu", "initializer_range": 0.02,
            "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "use_cache": True, "vocab_size": vocab_size,
            "dtype": "bfloat16", "tie_word_embeddings": False, **size}
    if family == "qwen3_vl":
        text.update({"model_type": "qwen3_vl_text", "rope_theta": 5000000,
                     "rope_scaling": {"mrope_interleaved": True, "mrope_section": _mrope_section(head_dim),
                                      "rope_type": "default"}})
        vision = {"model_type": "qwen3_vl", "depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                  "hidden_act": "gelu_pytorch_tanh", "in_channels": 3, "patch_size": 16, "spatial_merge_size": 2,
                  "temporal_patch_size": 2, "out_hidden_size": size["hidden_size"],
                  "num_position_embeddings": 64, "deepstack_visual_indexes": [0, 1], "initializer_range": 0.02}
    else:
        text.update({"model_type": "qwen2_5_vl_text", "rope_theta": 1000000.0, "sliding_window": 4096,
                     "use_sliding_window": False, "max_window_layers": size["num_hidden_layers"],
                     "rope_scaling": {"mrope_section": _mrope_section(head_dim), "rope_type": "default",
                                      "type": "default"}})
        text.pop("head_dim")
        vision = {"model_type": "qwen2_5_vl", "depth": 4, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                  "hidden_act": "silu", "in_chans": 3, "patch_size": 14, "spatial_merge_size": 2,
                  "temporal_patch_size": 2, "out_hidden_size": size["hidden_size"], "window_size": 112,
                  "fullatt_block_indexes": [1, 3], "tokens_per_second": 2, "initializer_range": 0.02}
    config = {
        "architectures": ["Sa2VAChatModelQwen"],
        "auto_map": {"AutoConfig": "configuration_sa2va_chat.Sa2VAChatConfigQwen",
                     "AutoModel": "modeling_sa2va_qwen.Sa2VAChatModelQwen",
                     "AutoModelForCausalLM": "modeling_sa2va_qwen.Sa2VAChatModelQwen"},
        "dtype": "float32",
        "image_token_id": ids["<|image_pad|>"], "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"],
        "model_type": "sa2va_chat", "template": "qwen_chat", "text_config": text, "tie_word_embeddings": False,
        "transformers_version": "4.57.0", "vision_config": vision,
    }
    if family == "qwen2_5_vl":
        # Sa2VAChatConfigQwen under 4.57 keeps Qwen2.5-VL's flat base config: the text fields also stand at the top
        # level (with the base's stale padded vocab_size), the base architecture stays on top and the Sa2VA one
        # moves into text_config; text_config also gets layer_types and vision_token_id.
        text["architectures"] = ["Sa2VAChatModelQwen"]
        text["layer_types"] = ["full_attention"] * text["num_hidden_layers"]
        text["vision_token_id"] = ids["<|vision_pad|>"]
        text["sliding_window"] = None
        flat = {k: v for k, v in text.items() if k not in ("architectures", "dtype", "layer_types", "model_type",
                                                            "tie_word_embeddings")}
        flat.update({"vocab_size": vocab_size + 11, "sliding_window": 4096})
        config.update(flat)
        config["architectures"] = ["Qwen2_5_VLForConditionalGeneration"]
        vision.update({"in_channels": 3, "spatial_patch_size": 14})
    if sam2 is not None:
        config["sam2_config"] = sam2
    return dict(sorted(config.items()))


# ------------------------------------------------------------------------------------------------ weights
def write_checkpoint(folder: str | os.PathLike, family: str = "qwen3_vl", *, sam2: str = "tiny", seed: int = 0,
                     layout: str = "v4", weight_dtype: torch.dtype | None = None,
                     max_shard_bytes: int = 64 * 2**20, seg_chain: bool = True,
                     text_size: dict | None = None, grounding: str = "sam2",
                     sam3_layers: int | None = 2, sam3_width: int = 256) -> Path:
    """Write a tiny random Sa2VA checkpoint in the release format and return its folder.

    family: ``qwen3_vl`` or ``qwen2_5_vl``.
    sam2: ``"tiny"`` (a 256-px SAM2 described by a ``sam2_config`` block), ``"hiera_t"`` (Hiera-T at 1024 px,
    a block too) or ``"full"`` (no block: SAM2 Hiera-L v1 at 1024 px, as the releases; ~0.9 GB in fp32).
    layout: ``"v4"`` (the official releases' key layout) or ``"legacy"`` (``model.model.layers.*``,
    ``model.visual.*``, as transformers 5.x writes Qwen2.5-VL). weight_dtype: None for the dtype of the family's
    releases (fp32 for Qwen, bf16 for InternVL); for Qwen, bf16 casts the language model only (SAM2 and the projection
    stay fp32, as an export without the fp32 cast would hold).
    seg_chain: bias the weights so the model answers ``Sure, it is [SEG].`` by itself. text_size: overrides of
    :data:`TINY_TEXT` for a bigger language model, e.g. ``{"hidden_size": 1024, "num_hidden_layers": 8,
    "intermediate_size": 2816, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 64}`` (benchmarks).
    grounding: ``"sam2"`` or, for qwen3_vl, ``"sam3"`` (Sa2VA-Qwen3-VL-4B-SAM3's format: SAM 3's tracker at 1008 px
    under the release's names, no marker in config.json; ``sam2`` is then ignored). sam3_layers, sam3_width: the SAM3
    ViT's depth and width (a ``sam3_config`` block; the release's window, patch and head size); ``None, 1024`` is the
    release's geometry (~1.8 GB, no block).
    """
    from ..families.qwen_vl import model_classes, native_config, native_to_release

    if family not in ("qwen3_vl", "qwen2_5_vl"):
        raise ValueError(f"unknown family {family!r}")
    if grounding not in ("sam2", "sam3") or (grounding == "sam3" and family != "qwen3_vl"):
        raise ValueError(f"unknown grounding {grounding!r} for {family} (sam2, or sam3 for qwen3_vl)")
    weight_dtype = weight_dtype or torch.float32
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ids = write_tokenizer(folder, family)
    write_processor_configs(folder, family)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    config = release_config(family, ids, vocab_size, sam2_block(sam2) if grounding == "sam2" else None,
                            text_size)
    if grounding == "sam3":
        from .sam3 import SAM3_CONFIG_KEY, sam3_geometry

        block = sam3_geometry(sam3_layers, sam3_width)
        if block is not None:
            config = dict(sorted({**config, SAM3_CONFIG_KEY: block}.items()))
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    _, model_class = model_classes(family)
    with torch.device("meta"):
        vlm = model_class(native_config(family, config, torch.float32))
    state: dict[str, torch.Tensor] = {}
    for name, param in vlm.state_dict().items():
        state[native_to_release(name, layout)] = seeded_tensor(name, tuple(param.shape), seed)
    if seg_chain:
        answer = tok.encode("Sure, it is", add_special_tokens=False).ids + [ids["[SEG]"]] + \
            tok.encode(".", add_special_tokens=False).ids + [ids["<|im_end|>"]]
        start = tok.encode("\n", add_special_tokens=False).ids
        embed = native_to_release("model.language_model.embed_tokens.weight", layout)
        add_seg_chain(state, embed, "model.lm_head.weight", start + answer, seed)
    if weight_dtype != torch.float32:
        state = {k: v.to(weight_dtype) for k, v in state.items()}
    state.update(projection_state(config["text_config"]["hidden_size"], seed))
    if grounding == "sam3":
        from .sam3 import sam3_release_state

        for name, tensor in sam3_release_state(config.get(SAM3_CONFIG_KEY), seed).items():
            state[keymap.SAM2_PREFIX + name] = tensor
    else:
        state.update(sam2_release_state(config.get("sam2_config"), seed))
    save_sharded(folder, state, max_shard_bytes)
    return folder
