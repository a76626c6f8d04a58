"""Reading a Sa2VA model folder: config, family, shard index, integrity, and tensors by prefix.

A folder in the release format holds ``config.json`` (``model_type: "sa2va_chat"``), safetensors weights
(one ``model.safetensors`` or shards listed in ``model.safetensors.index.json``) and the tokenizer/processor
files. Nothing here imports a model class: this module only reads files and says clearly what is wrong.
"""
from __future__ import annotations

import json
import logging
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import CheckpointKeyError, ModelFolderError

logger = logging.getLogger(__name__)

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
FAMILIES = ("qwen3_vl", "qwen2_5_vl", "internvl", "llava")


def read_config(folder: str | os.PathLike) -> dict:
    """Parse ``config.json`` of a model folder, with an error that names the folder when it cannot."""
    path = Path(folder) / "config.json"
    if not Path(folder).is_dir():
        raise ModelFolderError(f"Model folder not found: {folder}. Download the model with the Sa2VA Loader "
                               f"or place its files there.")
    if not path.is_file():
        raise ModelFolderError(f"No config.json in {folder}: this is not a Sa2VA model folder (or the download "
                               f"is incomplete). Re-run the download or copy the full model repository there.")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFolderError(f"config.json in {folder} is not valid JSON ({exc}); delete it and download "
                               f"the model again.") from exc
    if not isinstance(config, dict):
        raise ModelFolderError(f"config.json in {folder} is not a JSON object; delete it and download again.")
    return config


def detect_family(config: dict, folder: str | os.PathLike = "") -> str:
    """Which family adapter serves this config: ``qwen3_vl``, ``qwen2_5_vl``, ``internvl`` or ``llava``.

    Qwen flavours are told apart by ``vision_config.model_type`` or ``text_config.model_type``
    (docs/formats.md, "Qwen releases"); InternVL releases have an ``llm_config`` (docs/formats.md, "InternVL releases"); the
    LLaVA release has a Llama ``text_config`` with a CLIP ``vision_config`` (docs/formats.md, "LLaVA release")."""
    model_type = config.get("model_type")
    if model_type != "sa2va_chat":
        raise ModelFolderError(f"{folder}: config.json has model_type {model_type!r}, expected 'sa2va_chat'. "
                               f"Only Sa2VA releases (ByteDance/Sa2VA-*) are supported.")
    vision = str((config.get("vision_config") or {}).get("model_type", ""))
    text = str((config.get("text_config") or {}).get("model_type", ""))
    if vision.startswith("qwen3_vl") or text.startswith("qwen3_vl"):
        return "qwen3_vl"
    if vision.startswith("qwen2_5_vl") or text.startswith("qwen2_5_vl"):
        return "qwen2_5_vl"
    if "llm_config" in config:
        return "internvl"
    architectures = [str(a) for a in config.get("architectures") or []]
    if (text == "llama" and vision == "clip_vision_model") or any("Llava" in a for a in architectures):
        return "llava"
    raise ModelFolderError(f"{folder}: cannot tell the model family from config.json (vision_config.model_type="
                           f"{vision!r}, text_config.model_type={text!r}). Supported: Qwen3-VL, Qwen2.5-VL, "
                           f"InternVL3 and LLaVA-1.5 releases of Sa2VA.")


@dataclass
class TensorInfo:
    """Where one tensor lives: its shard file, dtype string and shape (from the safetensors header)."""

    shard: str
    dtype: str
    shape: tuple[int, ...]


@dataclass
class ShardIndex:
    """All tensors of a folder, read from the safetensors headers (no tensor data is read).

    tensors: release name -> TensorInfo; shards: shard file names in load order."""

    folder: Path
    shards: list[str]
    tensors: dict[str, TensorInfo] = field(default_factory=dict)

    def names(self, prefix: str = "") -> list[str]:
        return [name for name in self.tensors if name.startswith(prefix)]

    def iter_tensors(self, prefix: str, dtype: torch.dtype | None = None,
                     device: str | torch.device = "cpu") -> Iterator[tuple[str, torch.Tensor]]:
        """Yield ``(name, tensor)`` for every tensor under ``prefix``, one shard at a time, cast to ``dtype``.

        Each tensor is read from the memory-mapped shard and cast on its own, so no second full-precision copy
        of the model is ever held."""
        from safetensors import safe_open

        by_shard: dict[str, list[str]] = {}
        for name in self.names(prefix):
            by_shard.setdefault(self.tensors[name].shard, []).append(name)
        for shard in self.shards:
            names = by_shard.get(shard)
            if not names:
                continue
            with safe_open(str(self.folder / shard), framework="pt", device="cpu") as handle:
                for name in names:
                    tensor = handle.get_tensor(name)
                    if dtype is not None and tensor.is_floating_point():
                        tensor = tensor.to(dtype)
                    yield name, tensor.to(device)


def read_safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file, checked against the file size (detects truncation)."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) < 8:
            raise ModelFolderError(f"Truncated safetensors file {path} ({size} bytes): delete it and download it "
                                   f"again.")
        (length,) = struct.unpack("<Q", raw)
        if length > min(size - 8, 100 * 2**20):
            raise ModelFolderError(f"{path} is not a valid safetensors file (header of {length} bytes in a file of "
                                   f"{size}): delete it and download it again.")
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelFolderError(f"{path} has a corrupted safetensors header: delete it and download it "
                                   f"again.") from exc
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + length + end != size:
        raise ModelFolderError(f"{path} is truncated or padded: {size} bytes on disk, {8 + length + end} expected "
                               f"from its header. Delete it and download it again (the loader resumes).")
    return header


def check_no_pickle_weights(folder: Path) -> None:
    """Refuse folders whose weights are pickle files: loading those can execute arbitrary code."""
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())
    has_safetensors = any(p.suffix == ".safetensors" for p in folder.iterdir())
    if pickles and not has_safetensors:
        raise ModelFolderError(f"{folder} holds pickle weights ({', '.join(pickles[:3])}), which this pack never "
                               f"loads because they can execute code. Use the official .safetensors release.")


def read_index(folder: str | os.PathLike) -> ShardIndex:
    """Read the shard index and every shard header; raise if a shard is missing, truncated or unlisted."""
    folder = Path(folder)
    check_no_pickle_weights(folder)
    index_path = folder / INDEX_FILE
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ModelFolderError(f"{index_path} is not a valid safetensors index: delete it and download the "
                                   f"model again.") from exc
        shards = sorted(set(weight_map.values()))
    elif (folder / SINGLE_FILE).is_file():
        weight_map, shards = None, [SINGLE_FILE]
    else:
        raise ModelFolderError(f"No weights in {folder}: expected {INDEX_FILE} with its shards or {SINGLE_FILE}. "
                               f"Download the model again or copy all *.safetensors files there.")
    missing = [s for s in shards if not (folder / s).is_file()]
    if missing:
        raise ModelFolderError(f"{folder} is incomplete: missing {', '.join(missing)}. Run the Sa2VA Loader again "
                               f"to resume the download, or place these files by hand.")
    index = ShardIndex(folder, shards)
    for shard in shards:
        header = read_safetensors_header(folder / shard)
        for name, meta in header.items():
            if name != "__metadata__":
                index.tensors[name] = TensorInfo(shard, meta["dtype"], tuple(meta["shape"]))
    if weight_map is not None:
        listed = set(weight_map)
        present = set(index.tensors)
        if listed - present:
            names = sorted(listed - present)
            raise ModelFolderError(f"{folder}: {len(names)} tensors listed in {INDEX_FILE} are missing from their "
                                   f"shards (e.g. {names[0]}); a shard is damaged or from another model. "
                                   f"Download the model again.")
    return index


def check_keys(expected: set[str], present: set[str], folder: str | os.PathLike, part: str) -> None:
    """Raise :class:`CheckpointKeyError` naming up to five missing and unexpected tensors of one part."""
    missing = sorted(expected - present)
    unexpected = sorted(present - expected)
    if not missing and not unexpected:
        return
    details = []
    if missing:
        details.append(f"{len(missing)} missing (e.g. {', '.join(missing[:5])})")
    if unexpected:
        details.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:5])})")
    raise CheckpointKeyError(f"{folder}: the {part} weights do not match config.json: {'; '.join(details)}. "
                             f"The folder mixes files of different models or a shard is damaged; download the "
                             f"model again.")


def check_shapes(expected: dict[str, tuple[int, ...]], index: ShardIndex, folder: str | os.PathLike,
                 part: str) -> None:
    """Raise :class:`CheckpointKeyError` when a tensor's stored shape differs from the model's."""
    wrong = [(n, index.tensors[n].shape, s) for n, s in expected.items()
             if n in index.tensors and tuple(index.tensors[n].shape) != tuple(s)]
    if wrong:
        name, got, want = wrong[0]
        raise CheckpointKeyError(f"{folder}: {len(wrong)} {part} tensors have the wrong shape (e.g. {name}: "
                                 f"{list(got)} stored, {list(want)} expected from config.json). The weights "
                                 f"belong to another model; download the model again.")
