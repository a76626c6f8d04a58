"""Tiny Sa2VA checkpoints in the exact on-disk format of the official releases, with random weights.

Used by the tests, the installation check (``test_sa2va.py``) and the benchmarks: they exercise the real
loading and inference code without downloading anything. The writer is deterministic (the same bytes on every
run with the same torch), so reference outputs made once from a checkpoint with the upstream code can be
committed and compared against a checkpoint rebuilt later.

Format (SPEC-qwen.md section 1, as ``tools/convert_to_hf.py`` writes it under transformers 4.57):
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
import zlib
from collections import Counter
from pathlib import Path

import torch

from . import keymap
from .sam2 import sam2_config

logger = logging.getLogger(__name__)

SA2VA_TOKENS = ["[SEG]", "<p>", "</p>", "<vp>", "</vp>"]
QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
QWEN_NON_SPECIAL = ["<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
                    "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]
QWEN3_EXTRA = ["<tool_response>", "</tool_response>", "<think>", "</think>"]
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
              r"\s*[\r\n]+|\s+(?!\S)|\s+")
CORPUS = (
    "Sure, it is [SEG]. Sure, [SEG] and [SEG]. Please segment the person in this image. "
    "Segment the cat and the dog. The woman holding the red umbrella is on the left. "
    "What is in the picture? There is a man riding a bicycle on the street next to a car. "
    "It is a photo of a kitchen with a table, two chairs and a window. Describe the image in detail. "
    "Please segment the object similar to region1. What is in region1? The sky is blue and the grass is green. "
    "0123456789 user assistant system You are a helpful assistant.\n"
)
NUM_MERGES = 160

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
TINY_SAM2 = {
    "image_size": 256,
    "vision_config": {
        "backbone_config": {"model_type": "sam2_hiera_det_model", "hidden_size": 16, "image_size": [256, 256],
                            "embed_dim_per_stage": [16, 32, 64, 128], "num_attention_heads_per_stage": [1, 1, 2, 2],
                            "blocks_per_stage": [1, 1, 2, 1], "global_attention_blocks": [3],
                            "window_positional_embedding_background_size": [4, 4],
                            "window_size_per_stage": [8, 4, 4, 2]},
        "backbone_channel_list": [128, 64, 32, 16],
        "backbone_feature_sizes": [[64, 64], [32, 32], [16, 16]],
    },
    "prompt_encoder_config": {"image_size": 256, "patch_size": 16},
    "memory_attention_rope_feat_sizes": [16, 16],
    "memory_attention_feed_forward_hidden_size": 256,
    "memory_fuser_intermediate_dim": 256,
}


# ----------------------------------------------------------------------------------------------- tokenizer
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (the alphabet of byte-level BPE)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def _train_bpe(words: list[str], num_merges: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Deterministic BPE on pre-tokenised byte-level words: most frequent pair first, ties by the pair."""
    alphabet = _bytes_to_unicode()
    vocab = {ch: i for i, ch in enumerate(alphabet[b] for b in range(256))}
    counts = Counter(words)
    splits = {w: list(w) for w in counts}
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: Counter = Counter()
        for word, parts in splits.items():
            for a, b in zip(parts, parts[1:]):
                pairs[(a, b)] += counts[word]
        if not pairs:
            break
        best = max(pairs.items(), key=lambda kv: (kv[1], tuple(-ord(c) for c in kv[0][0] + "\0" + kv[0][1])))[0]
        merges.append(best)
        vocab.setdefault(best[0] + best[1], len(vocab))
        for word, parts in splits.items():
            i, merged = 0, []
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            splits[word] = merged
    return vocab, merges


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
    vocab, merges = _train_bpe(words, NUM_MERGES)
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
def _seeded_tensor(name: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """A deterministic random tensor for one parameter, independent of the order tensors are made in.

    Norm scales are near 1, biases and embeddings small, matrices scaled by 1/sqrt(fan_in) so activations stay
    in range through the tiny networks."""
    gen = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63))
    x = torch.randn(shape, generator=gen, dtype=torch.float32)
    leaf = name.rsplit(".", 1)[-1]
    if len(shape) == 1 and ("norm" in name or leaf in ("weight",)) and leaf == "weight":
        return 1.0 + 0.05 * x
    if leaf == "bias" or len(shape) <= 1:
        return 0.02 * x
    fan_in = 1
    for d in shape[1:]:
        fan_in *= d
    if "embed_tokens" in name or "pos_embed" in name or "positional" in name or "embedding" in name:
        return 0.5 * x if "embed_tokens" in name else 0.1 * x
    return x / max(fan_in, 1) ** 0.5


def _seg_chain(state: dict, embed_key: str, head_key: str, chain: list[int], seed: int) -> None:
    """Make greedy decoding follow ``chain`` (token ids) by itself: each token's input embedding gets its own
    orthonormal direction and the next token's lm_head row the same direction, scaled up (SPEC-qwen.md sec. 5)."""
    embed, head = state[embed_key], state[head_key]
    hidden = embed.shape[1]
    gen = torch.Generator().manual_seed(seed + 7)
    q, _ = torch.linalg.qr(torch.randn(hidden, hidden, generator=gen))
    scale = float(embed.std()) * hidden ** 0.5
    for i, (cur, nxt) in enumerate(zip(chain, chain[1:])):
        direction = q[:, i]
        embed[cur] += 3.0 * scale * direction
        head[nxt] += 12.0 * direction / scale


def write_checkpoint(folder: str | os.PathLike, family: str = "qwen3_vl", *, sam2: str = "tiny", seed: int = 0,
                     layout: str = "v4", weight_dtype: torch.dtype | None = None,
                     max_shard_bytes: int = 64 * 2**20, seg_chain: bool = True,
                     text_size: dict | None = None) -> Path:
    """Write a tiny random Sa2VA checkpoint in the release format and return its folder.

    family: ``qwen3_vl``, ``qwen2_5_vl`` or ``internvl`` (written by :mod:`sa2va.synthetic_internvl`).
    sam2: ``"tiny"`` (a 256-px SAM2 described by a ``sam2_config`` block) or ``"full"`` (no block: SAM2 Hiera-L v1
    at 1024 px, as the releases; ~0.9 GB in fp32).
    layout: ``"v4"`` (the official releases' key layout) or ``"legacy"`` (``model.model.layers.*``,
    ``model.visual.*``, as transformers 5.x writes Qwen2.5-VL). weight_dtype: None for the dtype of the family's
    releases (fp32 for Qwen, bf16 for InternVL); for Qwen, bf16 casts the language model only (SAM2 and the projection
    stay fp32, as an export without the fp32 cast would hold).
    seg_chain: bias the weights so the model answers ``Sure, it is [SEG].`` by itself. text_size: overrides of
    :data:`TINY_TEXT` (InternVL: of ``synthetic_internvl.TINY_LLM``) for a bigger language model, e.g. ``{"hidden_size": 1024, "num_hidden_layers": 8,
    "intermediate_size": 2816, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 64}`` (benchmarks).
    """
    from safetensors.torch import save_file

    from .families.qwen_vl import model_classes, native_config, native_to_release

    if family == "internvl":
        from .synthetic_internvl import write_checkpoint as write_internvl

        if layout != "v4":
            raise ValueError(f"unknown layout {layout!r} for InternVL (its releases have one layout)")
        return write_internvl(folder, sam2=sam2, seed=seed, weight_dtype=weight_dtype or torch.bfloat16,
                              max_shard_bytes=max_shard_bytes, seg_chain=seg_chain, text_size=text_size)
    if family not in ("qwen3_vl", "qwen2_5_vl"):
        raise ValueError(f"unknown family {family!r}")
    weight_dtype = weight_dtype or torch.float32
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ids = write_tokenizer(folder, family)
    write_processor_configs(folder, family)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    config = release_config(family, ids, vocab_size, TINY_SAM2 if sam2 == "tiny" else None, text_size)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    _, model_class = model_classes(family)
    with torch.device("meta"):
        vlm = model_class(native_config(family, config, torch.float32))
        sam = __import__("transformers").Sam2VideoModel(sam2_config(config.get("sam2_config")))
    state: dict[str, torch.Tensor] = {}
    for name, param in vlm.state_dict().items():
        state[native_to_release(name, layout)] = _seeded_tensor(name, tuple(param.shape), seed)
    if seg_chain:
        answer = tok.encode("Sure, it is", add_special_tokens=False).ids + [ids["[SEG]"]] + \
            tok.encode(".", add_special_tokens=False).ids + [ids["<|im_end|>"]]
        start = tok.encode("\n", add_special_tokens=False).ids
        embed = native_to_release("model.language_model.embed_tokens.weight", layout)
        _seg_chain(state, embed, "model.lm_head.weight", start + answer, seed)
    if weight_dtype != torch.float32:
        state = {k: v.to(weight_dtype) for k, v in state.items()}
    hidden = config["text_config"]["hidden_size"]
    for name, shape in (("0.weight", (hidden, hidden)), ("0.bias", (hidden,)), ("2.weight", (256, hidden)),
                        ("2.bias", (256,))):
        state[keymap.PROJECTION_PREFIX + name] = _seeded_tensor("text_hidden_fcs." + name, shape, seed)
    sam_native = {name: _seeded_tensor(name, tuple(t.shape), seed) for name, t in sam.state_dict().items()}
    sam_native["shared_image_embedding.positional_embedding"] = \
        sam_native["prompt_encoder.shared_embedding.positional_embedding"]
    for name, tensor in keymap.sam2_state_to_release(sam_native).items():
        state[keymap.SAM2_PREFIX + name] = tensor.contiguous()
    _save_sharded(folder, state, max_shard_bytes, save_file)
    return folder


def _save_sharded(folder: Path, state: dict[str, torch.Tensor], max_shard_bytes: int, save_file) -> None:
    """Write safetensors shards in key order plus ``model.safetensors.index.json`` (as save_pretrained does)."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name in state:
        nbytes = state[name].numel() * state[name].element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = state[name]
        size += nbytes
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / fname), metadata={"format": "pt"})
        for name, tensor in shard.items():
            weight_map[name] = fname
            total += tensor.numel() * tensor.element_size()
    parameters = sum(t.numel() for t in state.values())
    index = {"metadata": {"total_parameters": parameters, "total_size": total},
             "weight_map": dict(sorted(weight_map.items()))}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


class ForceTokens:
    """A logits processor that makes greedy decoding emit ``token_ids`` in order, then repeat the last id.

    Steps are counted from ``prompt_length`` (``generate`` keeps the prompt in ``input_ids``). Used by tests and
    benchmarks to get answers with an exact number of [SEG] tokens from random weights."""

    def __init__(self, prompt_length: int, token_ids: list[int]) -> None:
        self.prompt_length = prompt_length
        self.token_ids = list(token_ids)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = min(input_ids.shape[1] - self.prompt_length, len(self.token_ids) - 1)
        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.token_ids[step]] = 0
        return forced
