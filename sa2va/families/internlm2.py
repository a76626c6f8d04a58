"""The InternLM2 language model of Sa2VA-8B / Sa2VA-26B on transformers' ``LlamaForCausalLM`` (docs/formats.md,
"InternLM2 releases"), as transformers' own ``convert_internvl_weights_to_hf.py`` maps InternVL2.5-8B/26B.

transformers has no InternLM2 class; InternLM2 is Llama's computation with other tensor names and a fused,
*grouped* attention input projection: ``attention.wqkv`` ``[(H + 2 KV) * d, C]`` holds, for each of the KV key/value
heads in turn, its ``g = H / KV`` query heads, then its key head, then its value head (``[KV, g + 2, d, C]``).
RoPE is rotate-half as Llama's, so q and k need no permutation.
"""
from __future__ import annotations

import torch

#: the ``llm_config.architectures[0]`` of the InternLM2 releases
ARCHITECTURE = "InternLM2ForCausalLM"

#: (release name, runtime name) pairs of the decoder inside ``InternVLForConditionalGeneration``; "{i}" is a layer
#: number, a name ending in "." a prefix. They must be matched before the generic ``language_model.model.`` prefix.
KEY_PAIRS = [
    ("language_model.model.tok_embeddings.", "model.language_model.embed_tokens."),
    ("language_model.model.layers.{i}.attention.wo.", "model.language_model.layers.{i}.self_attn.o_proj."),
    ("language_model.model.layers.{i}.feed_forward.w1.", "model.language_model.layers.{i}.mlp.gate_proj."),
    ("language_model.model.layers.{i}.feed_forward.w3.", "model.language_model.layers.{i}.mlp.up_proj."),
    ("language_model.model.layers.{i}.feed_forward.w2.", "model.language_model.layers.{i}.mlp.down_proj."),
    ("language_model.model.layers.{i}.attention_norm.", "model.language_model.layers.{i}.input_layernorm."),
    ("language_model.model.layers.{i}.ffn_norm.", "model.language_model.layers.{i}.post_attention_layernorm."),
    ("language_model.model.norm.", "model.language_model.norm."),
    ("language_model.output.", "lm_head."),
]
#: the fused attention input projection of one decoder layer (no bias: ``"bias": false``)
WQKV_RELEASE = r"^language_model\.model\.layers\.(\d+)\.attention\.wqkv\.weight$"
WQKV_NATIVE = r"^model\.language_model\.layers\.(\d+)\.self_attn\.([qkv])_proj\.weight$"

#: llm_config keys copied into ``LlamaConfig`` (any other key of the old exports is noise: generation defaults,
#: ``torch_dtype``, ``_commit_hash``, ``auto_map``, ...)
_LLAMA_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
               "vocab_size", "max_position_embeddings", "rms_norm_eps", "hidden_act", "initializer_range",
               "bos_token_id", "eos_token_id", "pad_token_id")


def is_internlm2(llm_config: dict) -> bool:
    """Whether a release's ``llm_config`` is InternLM2 (Sa2VA-8B / 26B)."""
    return ((llm_config.get("architectures") or ["?"])[0]) == ARCHITECTURE


def text_config(llm_config: dict):
    """The ``LlamaConfig`` of an InternLM2 ``llm_config``: its sizes, ``bias`` -> ``attention_bias``/``mlp_bias``,
    ``rope_theta`` and ``rope_scaling`` (``{"type": "dynamic", "factor": f}`` -> dynamic NTK, which changes nothing
    below ``max_position_embeddings`` positions), untied head, KV cache on."""
    from transformers import LlamaConfig

    kwargs = {k: llm_config[k] for k in _LLAMA_KEYS if k in llm_config}
    kwargs.setdefault("num_key_value_heads", llm_config["num_attention_heads"])
    bias = bool(llm_config.get("bias", False))
    scaling = llm_config.get("rope_scaling")
    if scaling:
        kind = scaling.get("rope_type") or scaling.get("type")
        scaling = {"rope_type": kind, "factor": float(scaling["factor"])}
    return LlamaConfig(**kwargs, attention_bias=bias, mlp_bias=bias, rope_theta=float(llm_config.get("rope_theta",
                       10000.0)), rope_scaling=scaling, tie_word_embeddings=False, use_cache=True)


def wqkv_rows(llm_config: dict) -> int:
    """Rows of the fused ``attention.wqkv``: ``(H + 2 KV) * head_dim``."""
    heads = llm_config["num_attention_heads"]
    kv = llm_config.get("num_key_value_heads", heads)
    return (heads + 2 * kv) * (llm_config["hidden_size"] // heads)


def split_wqkv(weight: torch.Tensor, num_heads: int, num_kv_heads: int) -> tuple[torch.Tensor, torch.Tensor,
                                                                                 torch.Tensor]:
    """Split a fused InternLM2 ``attention.wqkv`` weight ``[(H + 2 KV) * d, C]`` into q ``[H * d, C]``,
    k ``[KV * d, C]`` and v ``[KV * d, C]``: the rows are grouped per KV head as ``[KV, g + 2, d]`` (g = H / KV query
    heads, then the key head, then the value head)."""
    group = num_heads // num_kv_heads
    rows, columns = weight.shape
    head_dim = rows // (num_kv_heads * (group + 2))
    grouped = weight.reshape(num_kv_heads, group + 2, head_dim, columns)
    q = grouped[:, :group].reshape(num_heads * head_dim, columns)
    k = grouped[:, -2].reshape(num_kv_heads * head_dim, columns)
    v = grouped[:, -1].reshape(num_kv_heads * head_dim, columns)
    return q, k, v


def fuse_wqkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
    """The inverse of :func:`split_wqkv` (tests and synthetic checkpoints)."""
    columns = q.shape[1]
    head_dim = k.shape[0] // num_kv_heads
    group = q.shape[0] // (num_kv_heads * head_dim)
    parts = [q.reshape(num_kv_heads, group, head_dim, columns), k.reshape(num_kv_heads, 1, head_dim, columns),
             v.reshape(num_kv_heads, 1, head_dim, columns)]
    return torch.cat(parts, dim=1).reshape(-1, columns)


__all__ = ["ARCHITECTURE", "KEY_PAIRS", "WQKV_NATIVE", "WQKV_RELEASE", "fuse_wqkv", "is_internlm2", "split_wqkv",
           "text_config", "wqkv_rows"]
