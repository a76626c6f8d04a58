"""The official Sa2VA releases this pack knows by name (on SAM2, and Sa2VA-Qwen3-VL-4B-SAM3 on SAM 3's tracker, which
needs transformers 5.x)."""
from __future__ import annotations

from dataclasses import dataclass

from .checkpoint import INDEX_FILE, SINGLE_FILE


@dataclass(frozen=True)
class CatalogEntry:
    """One official release on the Hugging Face hub.

    name: folder name under ``models/sa2va/``; repo_id: hub repository; family: ``qwen3_vl``, ``qwen2_5_vl``,
    ``internvl`` or ``llava``; download_gb: approximate size of the fp32 safetensors on the hub; shards: number of
    safetensors files of the release (1: a single ``model.safetensors`` without an index, as Sa2VA-1B); tokenizer: the
    tokenizer file the release ships (``tokenizer.model``, SentencePiece, for the InternLM2 releases Sa2VA-8B/26B)."""

    name: str
    repo_id: str
    family: str
    download_gb: float
    notes: str = ""
    shards: int = 0
    tokenizer: str = "tokenizer.json"

    def weight_files(self) -> tuple[str, ...]:
        """The release's weight files as ``save_pretrained`` names them: ``model.safetensors`` alone for one shard,
        else the index and ``model-0000i-of-0000n.safetensors``; empty when the shard count is not known."""
        if self.shards == 1:
            return (SINGLE_FILE,)
        return tuple([INDEX_FILE] + [f"model-{i:05d}-of-{self.shards:05d}.safetensors"
                                     for i in range(1, self.shards + 1)]) if self.shards else ()


CATALOG: tuple[CatalogEntry, ...] = (
    CatalogEntry("Sa2VA-Qwen3-VL-4B", "ByteDance/Sa2VA-Qwen3-VL-4B", "qwen3_vl", 18.0, "default; best quality per GB",
                 shards=5),
    CatalogEntry("Sa2VA-Qwen3-VL-2B", "ByteDance/Sa2VA-Qwen3-VL-2B", "qwen3_vl", 10.7, "smallest Qwen3-VL", shards=3),
    # shards: 21.2 GB at save_pretrained's 5 GB default shard size (not read from the hub; the download reads the index)
    CatalogEntry("Sa2VA-Qwen3-VL-4B-SAM3", "ByteDance/Sa2VA-Qwen3-VL-4B-SAM3", "qwen3_vl", 21.2,
                 "the 4B with SAM 3's tracker (1008 px) for masks; needs transformers 5.x", shards=5),
    CatalogEntry("Sa2VA-Qwen2_5-VL-3B", "ByteDance/Sa2VA-Qwen2_5-VL-3B", "qwen2_5_vl", 15.0, shards=4),
    CatalogEntry("Sa2VA-Qwen2_5-VL-7B", "ByteDance/Sa2VA-Qwen2_5-VL-7B", "qwen2_5_vl", 33.0, shards=7),
    CatalogEntry("Sa2VA-InternVL3-2B", "ByteDance/Sa2VA-InternVL3-2B", "internvl", 9.0, shards=2),
    CatalogEntry("Sa2VA-InternVL3-8B", "ByteDance/Sa2VA-InternVL3-8B", "internvl", 33.0, shards=7),
    CatalogEntry("Sa2VA-InternVL3-14B", "ByteDance/Sa2VA-InternVL3-14B", "internvl", 60.0, shards=13),
    CatalogEntry("Sa2VA-1B", "ByteDance/Sa2VA-1B", "internvl", 4.05, "InternVL2.5 + Qwen2.5-0.5B; qwen_chat; "
                 "smallest of all", shards=1),
    CatalogEntry("Sa2VA-4B", "ByteDance/Sa2VA-4B", "internvl", 15.2, "InternVL2.5 + Qwen2.5-3B; phi3_chat", shards=4),
    CatalogEntry("Sa2VA-8B", "ByteDance/Sa2VA-8B", "internvl", 32.66, "InternVL2.5 + InternLM2.5-7B; internlm2_chat",
                 shards=7, tokenizer="tokenizer.model"),
    CatalogEntry("Sa2VA-26B", "ByteDance/Sa2VA-26B", "internvl", 92.04, "InternVL2.5 (InternViT-6B) + "
                 "InternLM2.5-20B; ~52 GB in bf16: 4-bit or several GPUs", shards=20, tokenizer="tokenizer.model"),
    CatalogEntry("Sa2VA-LLaVA-1.5-7B", "ByteDance/Sa2VA-LLaVA-1.5-7B", "llava", 29.2,
                 "LLaVA-1.5 (CLIP ViT-L/14-336 + Vicuna-7B); no published scores", shards=6),
)
DEFAULT_MODEL = CATALOG[0].name


def find(name: str) -> CatalogEntry | None:
    """The catalog entry whose folder name or repo id is ``name`` (case-insensitive), else None."""
    lowered = name.lower()
    for entry in CATALOG:
        if lowered in (entry.name.lower(), entry.repo_id.lower()):
            return entry
    return None
