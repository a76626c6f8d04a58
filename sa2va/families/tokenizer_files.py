"""The fast tokenizer of a release folder, run exactly as its ``tokenizer.json`` is written, on every transformers
version.

Why not ``AutoTokenizer``: transformers 5.x rebuilds the tokenizers of known model classes (``LlamaTokenizer``,
``Qwen2Tokenizer``, ...) from the vocabulary and merges of ``tokenizer.json`` with the normaliser and pre-tokeniser
its own class prescribes, and drops the ones the file declares; transformers 4.57 (the version the releases' own code
runs on) uses the file's pipeline as written. For a Llama tokenizer saved in the "legacy" form (normaliser
``Prepend("▁")`` + ``Replace(" ", "▁")``, no pre-tokeniser, as transformers' converter wrote them for LLaVA-1.5)
the two disagree: 5.x puts no ``▁`` before a newline or a word that follows an added token, 4.57 does. Loading the
file with transformers' generic ``PreTrainedTokenizerFast`` keeps the file's pipeline on both versions, with the
special tokens, added tokens and padding side of ``tokenizer_config.json``.

One thing transformers 4.57 does on top of the file for Llama tokenizers: ``LlamaTokenizerFast`` rebuilds the
post-processor from ``add_bos_token`` / ``add_eos_token`` of ``tokenizer_config.json``; :func:`load_file_tokenizer`
does the same for folders whose ``tokenizer_class`` is a Llama tokenizer. ``docs/formats.md`` ("Tokenizers") says
which pipeline runs for each release.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from ..errors import ModelFolderError
from .base import quiet_transformers

logger = logging.getLogger(__name__)

#: ``tokenizer_class`` names whose post-processor transformers 4.57 rebuilds from add_bos_token / add_eos_token
LLAMA_TOKENIZER_CLASSES = ("LlamaTokenizer", "LlamaTokenizerFast")


def read_tokenizer_config(folder: str | os.PathLike) -> dict:
    """``tokenizer_config.json`` of ``folder`` ({} when absent)."""
    path = Path(folder) / "tokenizer_config.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelFolderError(f"{folder}: tokenizer_config.json cannot be read ({exc}). Copy it from the model "
                               f"repository again.") from exc


def llama_post_processor(tokenizer, add_bos: bool, add_eos: bool):
    """The ``TemplateProcessing`` transformers 4.57's ``LlamaTokenizerFast.update_post_processor`` builds: BOS
    before each sequence when ``add_bos``, EOS after it when ``add_eos``."""
    from tokenizers import processors

    bos, eos = tokenizer.bos_token, tokenizer.eos_token
    if (add_bos and bos is None) or (add_eos and eos is None):
        raise ModelFolderError("tokenizer_config.json asks for a BOS or EOS token the tokenizer does not define. "
                               "Copy the tokenizer files from the model repository again.")
    first = f"{bos}:0 " if add_bos else ""
    last = f" {eos}:0" if add_eos else ""
    second_first = f" {bos}:1" if add_bos else ""
    second_last = f" {eos}:1" if add_eos else ""
    special = []
    if add_bos:
        special.append((bos, tokenizer.bos_token_id))
    if add_eos:
        special.append((eos, tokenizer.eos_token_id))
    return processors.TemplateProcessing(single=f"{first}$A:0{last}",
                                         pair=f"{first}$A:0{last}{second_first} $B:1{second_last}",
                                         special_tokens=special)


def load_file_tokenizer(folder: str | os.PathLike, files_hint: str = "tokenizer.json, tokenizer_config.json and "
                        "special_tokens_map.json"):
    """The fast tokenizer of ``folder``'s ``tokenizer.json`` as written (normaliser, pre-tokeniser, model, decoder),
    with ``tokenizer_config.json``'s special tokens; for Llama tokenizers BOS / EOS as its ``add_bos_token`` /
    ``add_eos_token`` say. ``files_hint``: the files the error message asks to copy again."""
    from transformers import PreTrainedTokenizerFast

    folder = Path(folder)
    if not (folder / "tokenizer.json").is_file():
        raise ModelFolderError(f"{folder}: tokenizer.json is missing. Copy {files_hint} from the model repository.")
    config = read_tokenizer_config(folder)
    try:
        with quiet_transformers():
            tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder), trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise ModelFolderError(f"{folder}: the tokenizer files cannot be loaded ({exc}). Copy {files_hint} from the "
                               f"model repository.") from exc
    if "model_input_names" not in config:
        # the generic class also returns token_type_ids, which the releases' language models do not take (generate
        # refuses them); their own tokenizer classes (Qwen2, Llama) return these two only
        tokenizer.model_input_names = ["input_ids", "attention_mask"]
    if config.get("tokenizer_class") in LLAMA_TOKENIZER_CLASSES and config.get("add_prefix_space") is not None:
        logger.warning("%s: tokenizer_config.json sets add_prefix_space, for which transformers 4.57 rebuilds the "
                       "tokenizer from tokenizer.model; the pack runs tokenizer.json as written.", folder)
    if config.get("tokenizer_class") in LLAMA_TOKENIZER_CLASSES:
        add_bos, add_eos = bool(config.get("add_bos_token", True)), bool(config.get("add_eos_token", False))
        tokenizer.backend_tokenizer.post_processor = llama_post_processor(tokenizer, add_bos, add_eos)
    logger.debug("Tokenizer of %s: tokenizer.json as written (%s)", folder, config.get("tokenizer_class"))
    return tokenizer


__all__ = ["LLAMA_TOKENIZER_CLASSES", "llama_post_processor", "load_file_tokenizer", "read_tokenizer_config"]
