"""Tiny Sa2VA-InternVL3 checkpoints in the exact on-disk format of the official releases, with random weights.

The counterpart of :mod:`sa2va.testing.qwen` for the InternVL family; ``sa2va.testing.write_checkpoint(folder,
"internvl", ...)`` dispatches here. Format (docs/formats.md, "InternVL releases", as ``tools/convert_to_hf.py`` writes it
under transformers 4.57): ``config.json`` of ``model_type: "sa2va_chat"`` with ``llm_config`` (Qwen2) and
``vision_config`` (InternViT), bf16 safetensors shards + ``model.safetensors.index.json`` in the upstream key layout
(``vision_model.*`` with fused ``attn.qkv``, ``mlp1.*``, ``language_model.model.*``, ``language_model.lm_head``,
``grounding_encoder.sam2_model.*``, ``text_hidden_fcs.*``), a minimal ``generation_config.json`` and the tokenizer
files of a Qwen2.5 byte-level BPE (``tokenizer.json``, ``tokenizer_config.json``, ``vocab.json``, ``merges.txt``,
``added_tokens.json``, ``special_tokens_map.json``). There is no image-processor file: the releases have none.

The release key names and shapes are written from the upstream module layout ("Weights"), not from the key map
the loader uses, so a mistake in the loader's mapping cannot hide behind the same mistake here. Every tensor is
drawn from its own generator seeded by its name, so the bytes do not depend on the order tensors are made in.

Added tokens, in release order: Qwen2.5's 22, InternVL's 9 (``<img> </img> <IMG_CONTEXT> <quad> </quad> <ref> </ref>
<box> </box>``, special) and Sa2VA's 5 (``[SEG] <p> </p> <vp> </vp>``, special). Their ids follow the tiny BPE, so
they differ from the real ones (151643...), as the tests allow.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from . import internlm2
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
    save_single,
    scaled_values,
    seeded_tensor,
    add_seg_chain,
    train_bpe,
    EMBED_TOKENS_STD,
)

INTERNVL_TOKENS = ["<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"]

#: tiny InternViT: same layout as InternViT-300M-448px-V2_5 (448 px tiles, 14 px patches, LayerNorm, qkv bias,
#: no qk-norm), 2 layers of width 32
TINY_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
#: tiny Qwen2 language model (InternVL3's LLM family), with InternVL3's dynamic rope scaling
TINY_LLM = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4,
            "num_key_value_heads": 2}
#: InternViT-6B-448px-V2_5's switches (Sa2VA-26B): RMSNorm, qk-norm over all heads, no qkv bias
VISION_6B = {"norm_type": "rms_norm", "qk_normalization": True, "qkv_bias": False}
IMAGE_SIZE = 448
PATCH_SIZE = 14
DOWNSAMPLE_RATIO = 0.5


# ----------------------------------------------------------------------------------------------- tokenizer
def _added_tokens() -> list[tuple[str, bool]]:
    """(content, special) in release order: Qwen2.5's tokens, InternVL3's, then Sa2VA's."""
    return ([(t, True) for t in QWEN_SPECIAL] + [(t, False) for t in QWEN_NON_SPECIAL]
            + [(t, True) for t in INTERNVL_TOKENS] + [(t, True) for t in SA2VA_TOKENS])


def write_tokenizer(folder: Path) -> dict[str, int]:
    """Write the tokenizer files of an InternVL3 release (Qwen2Tokenizer format); returns token -> id of the added
    tokens."""
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
    for content, special in _added_tokens():
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
    (folder / "added_tokens.json").write_text(json.dumps(dict(sorted(ids.items())), indent=2) + "\n",
                                              encoding="utf-8")
    decoder = {str(ids[c]): {"content": c, "lstrip": False, "normalized": False, "rstrip": False,
                             "single_word": False, "special": s} for c, s in _added_tokens()}
    specials = [t for t in QWEN_SPECIAL if t != "<|endoftext|>"]
    tokenizer_config = {
        "add_bos_token": False, "add_prefix_space": False, "added_tokens_decoder": decoder,
        "additional_special_tokens": specials, "bos_token": None, "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>", "errors": "replace", "extra_special_tokens": {}, "model_max_length": 8192,
        "pad_token": "<|endoftext|>", "padding_side": "right", "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer", "unk_token": None,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False) + "\n",
                                                  encoding="utf-8")
    entry = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    special_map = {"additional_special_tokens": specials, "eos_token": {"content": "<|im_end|>", **entry},
                   "pad_token": {"content": "<|endoftext|>", **entry}}
    (folder / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n", encoding="utf-8")
    return ids


# ------------------------------------------------------------------------------------------------- config
def release_config(ids: dict[str, int], vocab_size: int, sam2: dict | None, text_size: dict | None = None,
                   template: str = "qwen_chat", decoder: str = "qwen2", vision_tower: str = "300m") -> dict:
    """config.json as ``tools/convert_to_hf.py`` writes it under transformers 4.57 (``Sa2VAChatConfig.to_dict``
    through ``save_pretrained``), with tiny sizes. InternViT's flags are explicit, as in InternViT-300M's config;
    the llm_config carries some of the noise keys InternVL3's own config has. ``text_size``: overrides of
    :data:`TINY_LLM`; ``template``: the chat template config.json names. ``decoder="internlm2"``: an InternLM2
    llm_config and the old (transformers 4.42) export's noise (``torch_dtype``, ``_commit_hash``), as Sa2VA-8B/26B;
    ``vision_tower="6b"``: InternViT-6B's switches (:data:`VISION_6B`), as Sa2VA-26B."""
    size = {**TINY_LLM, **(text_size or {})}
    num_layers = size["num_hidden_layers"]
    llm = {
        "_name_or_path": "./pretrained/Qwen2.5-1.5B-Instruct", "architectures": ["Qwen2ForCausalLM"],
        "attention_dropout": 0.0, "bos_token_id": ids.get("<|endoftext|>"), "dtype": "bfloat16",
        "eos_token_id": ids.get("<|endoftext|>"), "hidden_act": "silu", "initializer_range": 0.02,
        "layer_types": ["full_attention"] * num_layers, "max_position_embeddings": 32768, "max_window_layers": 70,
        "model_type": "qwen2", "moe_config": None, "rms_norm_eps": 1e-06,
        "rope_scaling": {"factor": 2.0, "rope_type": "dynamic", "type": "dynamic"}, "rope_theta": 1000000.0,
        "sliding_window": None, "use_bfloat16": True, "use_cache": False, "use_sliding_window": False,
        "vocab_size": vocab_size, **size,
    }
    vision = {
        "architectures": ["InternVisionModel"], "attention_dropout": 0.0, "drop_path_rate": 0.1, "dropout": 0.0,
        "dtype": "bfloat16", "hidden_act": "gelu", "image_size": IMAGE_SIZE, "initializer_factor": 0.1,
        "initializer_range": 0.02, "layer_norm_eps": 1e-06, "model_type": "intern_vit_6b",
        "norm_type": "layer_norm", "num_channels": 3, "patch_size": PATCH_SIZE, "qk_normalization": False,
        "qkv_bias": True, "use_flash_attn": True, **TINY_VISION,
    }
    config = {
        "architectures": ["Sa2VAChatModel"],
        "auto_map": {"AutoConfig": "configuration_sa2va_chat.Sa2VAChatConfig",
                     "AutoModel": "modeling_sa2va_chat.Sa2VAChatModel",
                     "AutoModelForCausalLM": "modeling_sa2va_chat.Sa2VAChatModel"},
        "downsample_ratio": DOWNSAMPLE_RATIO, "dtype": "bfloat16", "dynamic_image_size": True,
        "force_image_size": IMAGE_SIZE, "hidden_size": size["hidden_size"], "llm_config": llm,
        "max_dynamic_patch": 12, "min_dynamic_patch": 1, "model_type": "sa2va_chat", "output_attentions": False,
        "pad2square": False, "ps_version": "v2", "select_layer": -1, "template": template,
        "tie_word_embeddings": False, "transformers_version": None, "use_backbone_lora": 0, "use_llm_lora": 0,
        "use_thumbnail": True, "vision_config": vision,
    }
    if vision_tower == "6b":
        vision.update(VISION_6B)
    if decoder == "internlm2":
        config["llm_config"] = internlm2.llm_config(vocab_size, text_size)
        config["hidden_size"] = config["llm_config"]["hidden_size"]
        config.update(_commit_hash=None, transformers_version="4.42.3", torch_dtype=config.pop("dtype"))
        vision.update(_commit_hash=None, torch_dtype=vision.pop("dtype"))
    if sam2 is not None:
        config["sam2_config"] = sam2
    return dict(sorted(config.items()))


def release_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Release name -> shape of every vision, projector and language-model tensor, in ``state_dict`` order of the
    upstream ``Sa2VAChatModel`` (vision_model, language_model, mlp1). docs/formats.md, "InternVL releases"."""
    v, llm = config["vision_config"], config["llm_config"]
    c, inner, size = v["hidden_size"], v["intermediate_size"], config.get("force_image_size") or v["image_size"]
    patch = v["patch_size"]
    shapes: dict[str, tuple[int, ...]] = {
        "vision_model.embeddings.class_embedding": (1, 1, c),
        "vision_model.embeddings.position_embedding": (1, (size // patch) ** 2 + 1, c),
        "vision_model.embeddings.patch_embedding.weight": (c, v.get("num_channels", 3), patch, patch),
        "vision_model.embeddings.patch_embedding.bias": (c,),
    }
    for i in range(v["num_hidden_layers"]):
        p = f"vision_model.encoder.layers.{i}."
        shapes[p + "ls1"] = (c,)
        shapes[p + "ls2"] = (c,)
        shapes[p + "attn.qkv.weight"] = (3 * c, c)
        if v.get("qkv_bias"):
            shapes[p + "attn.qkv.bias"] = (3 * c,)
        if v.get("qk_normalization"):
            shapes[p + "attn.q_norm.weight"] = (c,)
            shapes[p + "attn.k_norm.weight"] = (c,)
        shapes.update({p + "attn.proj.weight": (c, c), p + "attn.proj.bias": (c,), p + "mlp.fc1.weight": (inner, c),
                       p + "mlp.fc1.bias": (inner,), p + "mlp.fc2.weight": (c, inner), p + "mlp.fc2.bias": (c,),
                       p + "norm1.weight": (c,), p + "norm2.weight": (c,)})
        if v.get("norm_type", "rms_norm") == "layer_norm":
            shapes[p + "norm1.bias"] = (c,)
            shapes[p + "norm2.bias"] = (c,)
    merged = c * int(1 / config.get("downsample_ratio", 0.5)) ** 2
    mlp1 = {"mlp1.0.weight": (merged,), "mlp1.0.bias": (merged,), "mlp1.1.weight": (llm["hidden_size"], merged),
            "mlp1.1.bias": (llm["hidden_size"],), "mlp1.3.weight": (llm["hidden_size"], llm["hidden_size"]),
            "mlp1.3.bias": (llm["hidden_size"],)}
    if llm["architectures"][0] == "InternLM2ForCausalLM":
        return {**shapes, **internlm2.release_shapes(llm), **mlp1}
    h, vocab, ffn = llm["hidden_size"], llm["vocab_size"], llm["intermediate_size"]
    head_dim = llm.get("head_dim") or h // llm["num_attention_heads"]
    kv = llm["num_key_value_heads"] * head_dim
    shapes["language_model.model.embed_tokens.weight"] = (vocab, h)
    for i in range(llm["num_hidden_layers"]):
        p = f"language_model.model.layers.{i}."
        shapes.update({
            p + "self_attn.q_proj.weight": (llm["num_attention_heads"] * head_dim, h),
            p + "self_attn.q_proj.bias": (llm["num_attention_heads"] * head_dim,),
            p + "self_attn.k_proj.weight": (kv, h), p + "self_attn.k_proj.bias": (kv,),
            p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.v_proj.bias": (kv,),
            p + "self_attn.o_proj.weight": (h, llm["num_attention_heads"] * head_dim),
            p + "mlp.gate_proj.weight": (ffn, h), p + "mlp.up_proj.weight": (ffn, h), p + "mlp.down_proj.weight": (h, ffn),
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
        })
    shapes["language_model.model.norm.weight"] = (h,)
    shapes["language_model.lm_head.weight"] = (vocab, h)
    return {**shapes, **mlp1}


def _tensor(name: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Deterministic values for one release tensor: :func:`sa2va.testing.common.seeded_tensor`, except the ViT layer
    scales, which are drawn around 0.5 so that the tiny ViT's layers matter."""
    if name.endswith((".ls1", ".ls2")):
        return scaled_values(name, shape, seed, 0.1, 0.5)
    if name.endswith("tok_embeddings.weight"):  # InternLM2's token embeddings, scaled as embed_tokens
        return scaled_values(name, shape, seed, EMBED_TOKENS_STD)
    return seeded_tensor(name, shape, seed)


# ------------------------------------------------------------------------------------------------ weights
def write_checkpoint(folder: str | os.PathLike, *, sam2: str = "tiny", seed: int = 0,
                     weight_dtype: torch.dtype | None = torch.bfloat16, max_shard_bytes: int = 64 * 2**20,
                     seg_chain: bool = True, text_size: dict | None = None, template: str | None = None,
                     single_file: bool = False, decoder: str = "qwen2", vision_tower: str = "300m") -> Path:
    """Write a tiny random Sa2VA InternVL-style checkpoint in the release format and return its folder.

    sam2: ``"tiny"`` (a 256-px SAM2 described by a ``sam2_config`` block), ``"hiera_t"`` (Hiera-T at 1024 px,
    a block too) or ``"full"`` (no block: SAM2 Hiera-L v1 at 1024 px, as the releases; ~0.45 GB in bf16).
    weight_dtype: bf16 like the releases (every tensor), or fp32.
    seg_chain: bias the weights so the model answers ``Sure, it is [SEG].`` by itself. text_size: overrides of
    :data:`TINY_LLM` (hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads)
    for a bigger language model. template: the chat template config.json names (``"qwen_chat"``: InternVL3 releases
    and Sa2VA-1B; ``"phi3_chat"``: Sa2VA-4B; any other name is written as given, for tests of the refusal; the
    weights do not depend on it). single_file: one ``model.safetensors`` without an index
    (Sa2VA-1B's layout) instead of shards of at most ``max_shard_bytes``. decoder: ``"qwen2"`` or ``"internlm2"``
    (Sa2VA-8B/26B's format: InternLM2 tensors with the fused grouped ``attention.wqkv``, the SentencePiece tokenizer
    files of :mod:`sa2va.testing.internlm2`, template ``internlm2_chat`` by default, and with ``weight_dtype=None``
    the old exports' dtypes: InternViT in bf16, everything else in fp32). vision_tower: ``"300m"`` (LayerNorm, qkv
    bias) or ``"6b"`` (RMSNorm, qk-norm, no qkv bias: Sa2VA-26B's InternViT-6B switches on the tiny tower). The
    defaults write the bytes the committed parity references were made from."""
    from tokenizers import Tokenizer

    sam2_block(sam2)  # an unknown geometry fails before anything is written
    if decoder not in ("qwen2", "internlm2") or vision_tower not in ("300m", "6b"):
        raise ValueError(f"unknown decoder {decoder!r} or vision tower {vision_tower!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if template is None:
        template = "internlm2_chat" if decoder == "internlm2" else "qwen_chat"
    if decoder == "internlm2":
        ids, pieces = internlm2.write_tokenizer(folder)
        vocab_size = max(ids.values()) + 1
    else:
        ids = write_tokenizer(folder)
        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        vocab_size = tok.get_vocab_size(with_added_tokens=True)
    config = release_config(ids, vocab_size, sam2_block(sam2), text_size, template, decoder,
                            vision_tower)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (folder / "generation_config.json").write_text(json.dumps({"_from_model_config": True,
                                                               "transformers_version": "4.57.0"}, indent=2) + "\n",
                                                   encoding="utf-8")

    state = {name: _tensor(name, shape, seed) for name, shape in release_shapes(config).items()}
    if seg_chain and decoder == "internlm2":  # the prompt ends in the byte piece of "\n"; the answer in <|im_end|>
        chain = [pieces.index("<0x0A>")] + [pieces.index(p) for p in internlm2.CHAIN_PIECES[:4]] + \
            [ids["[SEG]"], pieces.index("."), ids["<|im_end|>"]]
        add_seg_chain(state, "language_model.model.tok_embeddings.weight", "language_model.output.weight", chain,
                      seed)
    elif seg_chain:  # both templates' prompts end in a "\n" token; the answer ends in the tokenizer's eos
        answer = tok.encode("Sure, it is", add_special_tokens=False).ids + [ids["[SEG]"]] + \
            tok.encode(".", add_special_tokens=False).ids + [ids["<|im_end|>"]]
        start = tok.encode("\n", add_special_tokens=False).ids
        add_seg_chain(state, "language_model.model.embed_tokens.weight", "language_model.lm_head.weight",
                   start + answer, seed)
    state.update(sam2_release_state(config.get("sam2_config"), seed))
    state.update(projection_state(config["llm_config"]["hidden_size"], seed))
    if weight_dtype is None:  # the old exports: InternViT in bf16, the rest in fp32
        state = {k: v.to(torch.bfloat16 if k.startswith("vision_model.") else torch.float32).contiguous()
                 for k, v in state.items()}
    else:
        state = {k: v.to(weight_dtype).contiguous() for k, v in state.items()}
    if single_file:
        save_single(folder, state)
    else:
        save_sharded(folder, state, max_shard_bytes)
    return folder


__all__ = [
    "INTERNVL_TOKENS",
    "TINY_LLM",
    "TINY_VISION",
    "release_config",
    "release_shapes",
    "write_checkpoint",
    "write_tokenizer",
]
