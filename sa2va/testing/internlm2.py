"""The InternLM2 parts of tiny Sa2VA-8B / Sa2VA-26B style checkpoints: SentencePiece tokenizer files, ``llm_config``
and the decoder's tensor names and shapes, as those releases store them (docs/formats.md, "InternLM2 releases").

:func:`sa2va.testing.internvl.write_checkpoint` uses them with ``decoder="internlm2"``.

The ``tokenizer.model`` is a SentencePiece BPE model whose protobuf is serialised here field by field from fixed
pieces (no trainer, no float arithmetic but exact ``-rank`` scores), so it is the same bytes on every machine:
``<unk> <s> </s>``, the 256 byte-fallback pieces, the characters and merges of a small deterministic BPE over
:data:`~sa2va.testing.common.CORPUS`, then six user-defined placeholders that ``tokenizer_config.json``'s
``added_tokens_decoder`` renames to InternLM2's chat tokens (``<|im_end|>``, ``<|im_start|>``, ...; the releases
do the same with their ``[UNUSED_TOKEN_...]`` pieces). InternVL's and Sa2VA's tokens follow as added tokens past the
SentencePiece vocabulary, in release order. The normaliser is the identity without a dummy prefix, as InternLM2's.
"""
from __future__ import annotations

import json
import struct
from collections import Counter
from pathlib import Path

from .common import CORPUS, SA2VA_TOKENS

INTERNVL_TOKENS = ["<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"]
#: InternLM2's chat tokens, in id order, on the last six SentencePiece pieces
CHAT_TOKENS = ["<|plugin|>", "<|interpreter|>", "<|action_end|>", "<|action_start|>", "<|im_end|>", "<|im_start|>"]
NUM_MERGES = 120
SPACE = "\u2581"
#: pieces the [SEG] answer chain of the writer uses, added to the vocabulary if the BPE did not make them
CHAIN_PIECES = ["Sure", ",", f"{SPACE}it", f"{SPACE}is", "."]

#: tiny InternLM2 language model (the 7B's layout: GQA, no biases, dynamic rope scaling, untied head)
TINY_INTERNLM2 = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4,
                  "num_key_value_heads": 2}

# SentencePiece's ModelProto.SentencePiece.Type
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _BYTE = 1, 2, 3, 4, 6


# ------------------------------------------------------------------------------------------------ protobuf
def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, value) -> bytes:
    """One protobuf field: bytes/str (length-delimited), float (fixed32) or int/bool (varint)."""
    if isinstance(value, (bytes, str)):
        data = value.encode("utf-8") if isinstance(value, str) else value
        return _varint(number << 3 | 2) + _varint(len(data)) + data
    if isinstance(value, float):
        return _varint(number << 3 | 5) + struct.pack("<f", value)
    return _varint(number << 3) + _varint(int(value))


def _train_pieces() -> list[str]:
    """Characters, then merges of a deterministic character-level BPE over the corpus's words (most frequent pair
    first, ties by the pair), with SentencePiece's ``▁`` for spaces (only at the start of a word)."""
    words = Counter()
    for word in CORPUS.split():
        words[word] += 1
        words[SPACE + word] += 1
    chars = sorted({c for w in words for c in w})
    splits = {w: list(w) for w in words}
    merges: list[str] = []
    for _ in range(NUM_MERGES):
        pairs: Counter = Counter()
        for w, n in words.items():
            s = splits[w]
            for a, b in zip(s, s[1:]):
                pairs[(a, b)] += n
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merged = best[0] + best[1]
        merges.append(merged)
        for w in words:
            s, out, i = splits[w], [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            splits[w] = out
    pieces = merges + [c for c in chars if c not in merges]
    return pieces + [p for p in CHAIN_PIECES if p not in pieces]


def sentencepiece_model(nul_piece: bool = False) -> tuple[bytes, list[str]]:
    """The serialised ``tokenizer.model`` and its pieces in id order. nul_piece: a normal piece that is the NUL
    character right after the byte pieces, as the releases have one (some sentencepiece versions refuse it)."""
    pieces = [("<unk>", 0.0, _UNKNOWN), ("<s>", 0.0, _CONTROL), ("</s>", 0.0, _CONTROL)]
    pieces += [(f"<0x{b:02X}>", 0.0, _BYTE) for b in range(256)]
    if nul_piece:
        pieces.append(("\x00", -1000.0, _NORMAL))
    pieces += [(p, -float(i), _NORMAL) for i, p in enumerate(_train_pieces())]
    first = len(pieces) + len(CHAT_TOKENS)
    pieces += [(f"[UNUSED_TOKEN_{first - len(CHAT_TOKENS) + i}]", 0.0, _USER_DEFINED)
               for i in range(len(CHAT_TOKENS))]
    proto = b""
    for piece, score, kind in pieces:
        proto += _field(1, _field(1, piece) + _field(2, score) + _field(3, kind))
    trainer = (_field(3, 2) + _field(4, len(pieces)) + _field(35, True) + _field(40, 0) + _field(41, 1)
               + _field(42, 2))  # model_type BPE, vocab_size, byte_fallback, unk/bos/eos ids
    normalizer = _field(1, "identity") + _field(3, False) + _field(4, False) + _field(5, True)
    proto += _field(2, trainer) + _field(3, normalizer)
    return proto, [p for p, _, _ in pieces]


# ----------------------------------------------------------------------------------------------- tokenizer
def write_tokenizer(folder: Path) -> tuple[dict[str, int], list[str]]:
    """Write ``tokenizer.model``, ``tokenizer_config.json``, ``special_tokens_map.json`` and ``added_tokens.json``
    as the InternLM2 releases ship them; returns token -> id of the added tokens and the SentencePiece pieces."""
    proto, pieces = sentencepiece_model()
    (folder / "tokenizer.model").write_bytes(proto)
    n = len(pieces)
    ids = {token: n - len(CHAT_TOKENS) + i for i, token in enumerate(CHAT_TOKENS)}
    for i, token in enumerate(INTERNVL_TOKENS + SA2VA_TOKENS):
        ids[token] = n + i
    entry = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
    decoder = {str(i): {"content": t, **entry} for t, i in
               [("<unk>", 0), ("<s>", 1), ("</s>", 2)] + sorted(ids.items(), key=lambda kv: kv[1])}
    specials = ["<|im_start|>", "<|im_end|>", "<|action_start|>", "<|action_end|>", "<|interpreter|>",
                "<|plugin|>"] + INTERNVL_TOKENS
    tokenizer_config = {
        "add_bos_token": True, "add_eos_token": False, "added_tokens_decoder": decoder,
        "additional_special_tokens": specials,
        "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]},
        "bos_token": "<s>", "clean_up_tokenization_spaces": False, "decode_with_prefix_space": False,
        "eos_token": "</s>", "model_max_length": 16384, "pad_token": "</s>", "sp_model_kwargs": None,
        "tokenizer_class": "InternLM2Tokenizer", "unk_token": "<unk>",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False) + "\n",
                                                  encoding="utf-8")
    plain = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    special_map = {"additional_special_tokens": specials, "bos_token": {"content": "<s>", **plain},
                   "eos_token": {"content": "</s>", **plain}, "pad_token": {"content": "</s>", **plain},
                   "unk_token": {"content": "<unk>", **plain}}
    (folder / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n", encoding="utf-8")
    added = {t: i for t, i in ids.items() if i >= n}
    (folder / "added_tokens.json").write_text(json.dumps(dict(sorted(added.items())), indent=2) + "\n",
                                              encoding="utf-8")
    return ids, pieces


# ------------------------------------------------------------------------------------------------- config
def llm_config(vocab_size: int, size: dict | None = None) -> dict:
    """``llm_config`` of an InternLM2 release as the old (transformers 4.42) export writes it, with tiny sizes."""
    size = {**TINY_INTERNLM2, **(size or {})}
    return {
        "_name_or_path": "internlm/internlm2_5-7b-chat", "add_cross_attention": False,
        "architectures": ["InternLM2ForCausalLM"], "attn_implementation": "eager",
        "auto_map": {"AutoConfig": "configuration_internlm2.InternLM2Config",
                     "AutoModel": "modeling_internlm2.InternLM2ForCausalLM",
                     "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM"},
        "bias": False, "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "initializer_range": 0.02,
        "max_position_embeddings": 32768, "model_type": "internlm2", "pad_token_id": 2, "pretraining_tp": 1,
        "rms_norm_eps": 1e-05, "rope_scaling": {"factor": 2.0, "type": "dynamic"}, "rope_theta": 1000000,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.42.3",
        "use_bfloat16": True, "use_cache": False, "vocab_size": vocab_size, "_commit_hash": None, **size,
    }


def release_shapes(llm: dict) -> dict[str, tuple[int, ...]]:
    """Release name -> shape of every InternLM2 tensor under ``language_model.`` (upstream's
    ``InternLM2ForCausalLM`` layout: a fused ``attention.wqkv`` of ``(H + 2 KV) * head_dim`` rows)."""
    h, vocab, ffn = llm["hidden_size"], llm["vocab_size"], llm["intermediate_size"]
    heads, kv = llm["num_attention_heads"], llm["num_key_value_heads"]
    head_dim = h // heads
    shapes = {"language_model.model.tok_embeddings.weight": (vocab, h)}
    for i in range(llm["num_hidden_layers"]):
        p = f"language_model.model.layers.{i}."
        shapes.update({
            p + "attention.wqkv.weight": ((heads + 2 * kv) * head_dim, h),
            p + "attention.wo.weight": (h, heads * head_dim),
            p + "feed_forward.w1.weight": (ffn, h), p + "feed_forward.w3.weight": (ffn, h),
            p + "feed_forward.w2.weight": (h, ffn),
            p + "attention_norm.weight": (h,), p + "ffn_norm.weight": (h,),
        })
    shapes["language_model.model.norm.weight"] = (h,)
    shapes["language_model.output.weight"] = (vocab, h)
    return shapes


__all__ = ["CHAT_TOKENS", "INTERNVL_TOKENS", "TINY_INTERNLM2", "llm_config", "release_shapes",
           "sentencepiece_model", "write_tokenizer"]
