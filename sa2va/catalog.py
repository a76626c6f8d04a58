"""The six official Sa2VA releases this pack knows by name."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CatalogEntry:
    """One official release on the Hugging Face hub.

    name: folder name under ``models/sa2va/``; repo_id: hub repository; family: ``qwen3_vl``, ``qwen2_5_vl`` or
    ``internvl``; download_gb: approximate size of the fp32 safetensors on the hub."""

    name: str
    repo_id: str
    family: str
    download_gb: float
    notes: str = ""


CATALOG: tuple[CatalogEntry, ...] = (
    CatalogEntry("Sa2VA-Qwen3-VL-4B", "ByteDance/Sa2VA-Qwen3-VL-4B", "qwen3_vl", 18.0, "default; best quality per GB"),
    CatalogEntry("Sa2VA-Qwen2_5-VL-3B", "ByteDance/Sa2VA-Qwen2_5-VL-3B", "qwen2_5_vl", 15.0),
    CatalogEntry("Sa2VA-Qwen2_5-VL-7B", "ByteDance/Sa2VA-Qwen2_5-VL-7B", "qwen2_5_vl", 33.0),
    CatalogEntry("Sa2VA-InternVL3-2B", "ByteDance/Sa2VA-InternVL3-2B", "internvl", 9.0),
    CatalogEntry("Sa2VA-InternVL3-8B", "ByteDance/Sa2VA-InternVL3-8B", "internvl", 33.0),
    CatalogEntry("Sa2VA-InternVL3-14B", "ByteDance/Sa2VA-InternVL3-14B", "internvl", 60.0),
)
DEFAULT_MODEL = CATALOG[0].name


def find(name: str) -> CatalogEntry | None:
    """The catalog entry whose folder name or repo id is ``name`` (case-insensitive), else None."""
    lowered = name.lower()
    for entry in CATALOG:
        if lowered in (entry.name.lower(), entry.repo_id.lower()):
            return entry
    return None
