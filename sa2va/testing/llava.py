"""Tiny Sa2VA-LLaVA-1.5 checkpoints in the exact on-disk format of the release, with random weights.

The counterpart of :mod:`sa2va.testing.qwen` for the ``llava`` family; ``sa2va.testing.write_checkpoint(folder,
"llava", ...)`` dispatches here. Format (docs/formats.md, "LLaVA release"): ``config.json`` of ``model_type:
"sa2va_chat"`` holding a LLaVA config (``text_config`` of a Llama, ``vision_config`` of a CLIP vision model,
``image_token_index``, ``vision_feature_layer: -2``, ``template: "vicuna"``); fp32 safetensors shards +
``model.safetensors.index.json`` with ``LlavaForConditionalGeneration`` stored under an outer ``model.``
(``model.model.vision_tower.vision_model.*``, ``model.model.multi_modal_projector.*``,
``model.model.language_model.*``, ``model.lm_head.weight``) next to ``grounding_encoder.sam2_model.*`` and
``text_hidden_fcs.*``; a minimal ``generation_config.json``; and the tokenizer files of a Llama fast tokenizer
(``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json``).

The tokenizer is a SentencePiece-style BPE (``▁`` for spaces, byte fallback to ``<0x..>``, BOS added) trained here on
a few sentences: ``<unk> <s> </s>``, the 256 byte pieces, the corpus characters and merges, then LLaVA-1.5's
``<image>`` and ``<pad>`` and Sa2VA's five tokens, in the release's order. It is written as ``tokenizer.json`` only:
the release's ``tokenizer.model`` (SentencePiece) is not needed to load a fast tokenizer and is not written.

The release key names and shapes are written from the module layout of transformers' LLaVA (CLIP + Llama), not from
the loader's key map. Every tensor is drawn from its own generator seeded by its name (portable across CPUs,
:mod:`sa2va.testing.common`).
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import torch

from .common import (CORPUS, SA2VA_TOKENS, add_seg_chain, merge_pair, pair_counts, projection_state, sam2_block,
                     sam2_release_state, save_sharded, seeded_tensor)

#: tiny CLIP vision model with CLIP ViT-L/14-336's geometry of patches (336 px, 14 px patches: 576 tokens)
TINY_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2}
#: tiny Llama (Vicuna-7B's family: no GQA, no biases, untied head)
TINY_TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4,
             "num_key_value_heads": 4}
IMAGE_SIZE = 336
PATCH_SIZE = 14
SPACE = "\u2581"
NUM_MERGES = 160
#: special pieces of the SentencePiece model, ids 0, 1, 2
LLAMA_SPECIAL = ["<unk>", "<s>", "</s>"]
#: LLaVA-1.5's two added tokens (llava-hf), then Sa2VA's five
LLAVA_TOKENS = ["<image>", "<pad>"]


# ----------------------------------------------------------------------------------------------- tokenizer
def train_piece_bpe(words: list[str], alphabet: list[str], num_merges: int) -> tuple[list[str], list[tuple[str, str]]]:
    """Deterministic character BPE: most frequent pair first, ties broken by the pair's text. Returns the merged
    pieces in creation order and the merges."""
    counts = Counter(words)
    splits = {w: [c for c in w] for w in counts}
    pieces: list[str] = []
    merges: list[tuple[str, str]] = []
    known = set(alphabet)
    for _ in range(num_merges):
        pairs = pair_counts(splits, counts)
        if not pairs:
            break
        best = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        merges.append(best)
        if best[0] + best[1] not in known:
            known.add(best[0] + best[1])
            pieces.append(best[0] + best[1])
        merge_pair(splits, best)
    return pieces, merges


def _words(text: str) -> list[str]:
    """The corpus as SentencePiece sees it: spaces as ``▁`` starting each word, newlines left to byte fallback."""
    out = []
    for line in text.split("\n"):
        out += [SPACE + w for w in line.split(" ") if w]
    return out


#: the two ``tokenizer.json`` forms of a Llama fast tokenizer: "metaspace" (a ``Metaspace`` pre-tokeniser, prepend
#: scheme "first", no normaliser: transformers' converter since 4.41) and "legacy" (normaliser ``Prepend("▁")`` +
#: ``Replace(" ", "▁")``, no pre-tokeniser: the converter's output of the llava-hf era, which also puts a ``▁``
#: before text that follows an added token)
TOKENIZER_FORMS = ("metaspace", "legacy")


def write_tokenizer(folder: Path, form: str = "metaspace") -> dict[str, int]:
    """Write the tokenizer files of the release (a Llama fast tokenizer) with ``tokenizer.json`` in ``form`` (one of
    :data:`TOKENIZER_FORMS`); returns token -> id of the added tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    if form not in TOKENIZER_FORMS:
        raise ValueError(f"unknown tokenizer form {form!r}; expected one of {', '.join(TOKENIZER_FORMS)}")

    words = _words(CORPUS.replace("[SEG]", " "))  # added tokens are not pieces of the SentencePiece model
    alphabet = sorted({c for w in words for c in w})
    pieces, merges = train_piece_bpe(words, alphabet, NUM_MERGES)
    vocab: dict[str, int] = {}
    for piece in LLAMA_SPECIAL + [f"<0x{b:02X}>" for b in range(256)] + alphabet + pieces:
        vocab.setdefault(piece, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, dropout=None, unk_token="<unk>", fuse_unk=True,
                               byte_fallback=True))
    if form == "legacy":
        tok.normalizer = normalizers.Sequence([normalizers.Prepend(SPACE), normalizers.Replace(" ", SPACE)])
        tok.pre_tokenizer = None
    else:
        tok.normalizer = None
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    entry = {"single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
    tok.add_special_tokens([AddedToken(t, **entry) for t in LLAMA_SPECIAL + LLAVA_TOKENS + SA2VA_TOKENS])
    ids = {t: tok.token_to_id(t) for t in LLAMA_SPECIAL + LLAVA_TOKENS + SA2VA_TOKENS}
    tok.save(str(folder / "tokenizer.json"))
    decoder = {str(ids[t]): {"content": t, **{k: v for k, v in entry.items()}} for t in ids}
    tokenizer_config = {
        "add_bos_token": True, "add_eos_token": False, "add_prefix_space": None, "added_tokens_decoder": decoder,
        "bos_token": "<s>", "clean_up_tokenization_spaces": False, "eos_token": "</s>", "extra_special_tokens": {},
        "legacy": form == "legacy", "model_max_length": 1000000000000000019884624838656, "pad_token": "<pad>",
        "padding_side": "left", "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer", "unk_token": "<unk>",
        "use_default_system_prompt": False,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False) + "\n",
                                                  encoding="utf-8")
    plain = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    special_map = {name: {"content": t, **plain} for name, t in
                   (("bos_token", "<s>"), ("eos_token", "</s>"), ("pad_token", "<pad>"), ("unk_token", "<unk>"))}
    (folder / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n", encoding="utf-8")
    return ids


# ------------------------------------------------------------------------------------------------- config
def release_config(ids: dict[str, int], vocab_size: int, sam2: dict | None, text_size: dict | None = None) -> dict:
    """config.json as the release's converter writes it (``Sa2VAChatConfigLlava``, a LlavaConfig subclass, saved
    under transformers 4.57), with tiny sizes."""
    size = {**TINY_TEXT, **(text_size or {})}
    text = {
        "_name_or_path": "lmsys/vicuna-7b-v1.5", "architectures": ["LlamaForCausalLM"], "attention_bias": False,
        "attention_dropout": 0.0, "bos_token_id": ids["<s>"], "dtype": "float32", "eos_token_id": ids["</s>"],
        "head_dim": size["hidden_size"] // size["num_attention_heads"], "hidden_act": "silu",
        "initializer_range": 0.02, "max_position_embeddings": 4096, "mlp_bias": False, "model_type": "llama",
        "pad_token_id": ids["<pad>"], "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None,
        "rope_theta": 10000.0, "tie_word_embeddings": False, "use_cache": True, "vocab_size": vocab_size, **size,
    }
    vision = {
        "attention_dropout": 0.0, "dropout": 0.0, "dtype": "float32", "hidden_act": "quick_gelu",
        "image_size": IMAGE_SIZE, "initializer_factor": 1.0, "initializer_range": 0.02, "layer_norm_eps": 1e-05,
        "model_type": "clip_vision_model", "num_channels": 3, "patch_size": PATCH_SIZE, "projection_dim": 768,
        "vocab_size": 32000, **TINY_VISION,
    }
    config = {
        "architectures": ["Sa2VAChatModelLlava"],
        "auto_map": {"AutoConfig": "configuration_sa2va_chat.Sa2VAChatConfigLlava",
                     "AutoModel": "modeling_sa2va_llava.Sa2VAChatModelLlava",
                     "AutoModelForCausalLM": "modeling_sa2va_llava.Sa2VAChatModelLlava"},
        "dtype": "float32", "image_seq_length": (IMAGE_SIZE // PATCH_SIZE) ** 2, "image_token_index": ids["<image>"],
        "model_type": "sa2va_chat", "multimodal_projector_bias": True, "projector_hidden_act": "gelu",
        "template": "vicuna", "text_config": text, "tie_word_embeddings": False, "transformers_version": "4.57.0",
        "vision_config": vision, "vision_feature_layer": -2, "vision_feature_select_strategy": "default",
    }
    if sam2 is not None:
        config["sam2_config"] = sam2
    return dict(sorted(config.items()))


def release_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Release name -> shape of every vision, projector and language-model tensor (transformers' CLIP vision model
    and Llama under ``model.model.``, the head under ``model.lm_head``)."""
    v, t = config["vision_config"], config["text_config"]
    c, inner, patch = v["hidden_size"], v["intermediate_size"], v["patch_size"]
    positions = (v["image_size"] // patch) ** 2 + 1
    p = "model.model.vision_tower.vision_model."
    shapes: dict[str, tuple[int, ...]] = {
        p + "embeddings.class_embedding": (c,),
        p + "embeddings.patch_embedding.weight": (c, v.get("num_channels", 3), patch, patch),
        p + "embeddings.position_embedding.weight": (positions, c),
        p + "pre_layrnorm.weight": (c,), p + "pre_layrnorm.bias": (c,),
    }
    for i in range(v["num_hidden_layers"]):
        q = f"{p}encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[f"{q}self_attn.{proj}.weight"] = (c, c)
            shapes[f"{q}self_attn.{proj}.bias"] = (c,)
        shapes.update({q + "layer_norm1.weight": (c,), q + "layer_norm1.bias": (c,), q + "mlp.fc1.weight": (inner, c),
                       q + "mlp.fc1.bias": (inner,), q + "mlp.fc2.weight": (c, inner), q + "mlp.fc2.bias": (c,),
                       q + "layer_norm2.weight": (c,), q + "layer_norm2.bias": (c,)})
    shapes[p + "post_layernorm.weight"] = (c,)
    shapes[p + "post_layernorm.bias"] = (c,)
    h, vocab, ffn = t["hidden_size"], t["vocab_size"], t["intermediate_size"]
    heads, kv_heads = t["num_attention_heads"], t["num_key_value_heads"]
    head_dim = t.get("head_dim") or h // heads
    shapes.update({"model.model.multi_modal_projector.linear_1.weight": (h, c),
                   "model.model.multi_modal_projector.linear_1.bias": (h,),
                   "model.model.multi_modal_projector.linear_2.weight": (h, h),
                   "model.model.multi_modal_projector.linear_2.bias": (h,)})
    shapes["model.model.language_model.embed_tokens.weight"] = (vocab, h)
    for i in range(t["num_hidden_layers"]):
        q = f"model.model.language_model.layers.{i}."
        shapes.update({
            q + "self_attn.q_proj.weight": (heads * head_dim, h), q + "self_attn.k_proj.weight": (kv_heads * head_dim, h),
            q + "self_attn.v_proj.weight": (kv_heads * head_dim, h), q + "self_attn.o_proj.weight": (h, heads * head_dim),
            q + "mlp.gate_proj.weight": (ffn, h), q + "mlp.up_proj.weight": (ffn, h), q + "mlp.down_proj.weight": (h, ffn),
            q + "input_layernorm.weight": (h,), q + "post_attention_layernorm.weight": (h,),
        })
    shapes["model.model.language_model.norm.weight"] = (h,)
    shapes["model.lm_head.weight"] = (vocab, h)
    return shapes


# ------------------------------------------------------------------------------------------------ weights
def write_checkpoint(folder: str | os.PathLike, *, sam2: str = "tiny", seed: int = 0,
                     weight_dtype: torch.dtype = torch.float32, max_shard_bytes: int = 64 * 2**20,
                     seg_chain: bool = True, text_size: dict | None = None, tokenizer_form: str = "metaspace") -> Path:
    """Write a tiny random Sa2VA-LLaVA checkpoint in the release format and return its folder.

    sam2: ``"tiny"`` (a 256-px SAM2 described by a ``sam2_config`` block), ``"hiera_t"`` (Hiera-T at 1024 px,
    a block too) or ``"full"`` (no block: SAM2 Hiera-L v1 at 1024 px, as the release). weight_dtype: fp32 like the
    release. seg_chain: bias the weights so the model answers
    ``Sure, it is [SEG].`` then ``</s>`` by itself. text_size: overrides of :data:`TINY_TEXT`. tokenizer_form: the
    form of ``tokenizer.json`` (:data:`TOKENIZER_FORMS`)."""
    from tokenizers import Tokenizer

    sam2_block(sam2)  # an unknown geometry fails before anything is written
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ids = write_tokenizer(folder, tokenizer_form)
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    config = release_config(ids, tok.get_vocab_size(with_added_tokens=True), sam2_block(sam2),
                            text_size)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (folder / "generation_config.json").write_text(json.dumps({"_from_model_config": True, "bos_token_id": ids["<s>"],
                                                               "eos_token_id": ids["</s>"],
                                                               "pad_token_id": ids["<pad>"],
                                                               "transformers_version": "4.57.0"}, indent=2) + "\n",
                                                   encoding="utf-8")
    state = {name: seeded_tensor(name, shape, seed) for name, shape in release_shapes(config).items()}
    if seg_chain:  # the prompt ends in "ASSISTANT:"; the answer ends in </s>
        answer = tok.encode("Sure, it is [SEG].", add_special_tokens=False).ids + [ids["</s>"]]
        start = tok.encode("ASSISTANT:", add_special_tokens=False).ids[-1:]
        add_seg_chain(state, "model.model.language_model.embed_tokens.weight", "model.lm_head.weight",
                      start + answer, seed)
    state.update(sam2_release_state(config.get("sam2_config"), seed))
    state.update(projection_state(config["text_config"]["hidden_size"], seed))
    state = {k: v.to(weight_dtype).contiguous() for k, v in state.items()}
    save_sharded(folder, state, max_shard_bytes)
    return folder


__all__ = ["LLAVA_TOKENS", "TINY_TEXT", "TINY_VISION", "TOKENIZER_FORMS", "release_config", "release_shapes",
           "write_checkpoint", "write_tokenizer"]
