"""The GPU check's checkpoints: a random release-format Sa2VA-Qwen3-VL-4B (written once, reused) or the tiny one.

The full checkpoint is written before the GPU check's clock starts, so its ~19 GB write never counts against the
check's time budget, and a folder holding ``.complete`` is reused by the next run.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from sa2va.grounding.sam2 import sam2_config
from sa2va.hub import keymap

#: the released Sa2VA-Qwen3-VL-4B geometry (Qwen3-VL-4B-Instruct)
TEXT_4B = {"hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36, "num_attention_heads": 32,
           "num_key_value_heads": 8, "head_dim": 128}
VOCAB_4B = 151936
VISION_4B = {"depth": 24, "hidden_size": 1024, "intermediate_size": 4096, "num_heads": 16,
             "num_position_embeddings": 2304, "deepstack_visual_indexes": [5, 11, 17]}
MROPE_4B = [24, 20, 20]


def write_full_checkpoint(folder: Path, device: torch.device, shard_bytes: int = 2 * 2**30, text: dict = TEXT_4B,
                          vision: dict = VISION_4B, vocab: int = VOCAB_4B, mrope: list[int] = MROPE_4B,
                          sam2: dict | None = None) -> Path:
    """A random release-format Sa2VA-Qwen3-VL-4B (fp32 shards, as released) written tensor by tensor, once: a folder
    with ``.complete`` is reused as it is. ``text`` / ``vision`` / ``vocab`` / ``mrope`` / ``sam2`` (a
    ``sam2_config`` block; None: Hiera-L) change the geometry (the tests write a small one)."""
    from safetensors.torch import save_file
    from transformers import Sam2VideoModel

    from sa2va.families.qwen_vl import model_classes, native_config, native_to_release
    from sa2va.testing.qwen import release_config, write_processor_configs, write_tokenizer

    done = folder / ".complete"
    if done.is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    ids = write_tokenizer(folder, "qwen3_vl")
    write_processor_configs(folder, "qwen3_vl")
    config = release_config("qwen3_vl", ids, vocab, None, text)
    config["text_config"]["rope_scaling"]["mrope_section"] = mrope
    config["text_config"]["max_position_embeddings"] = 262144
    config["vision_config"].update(vision)
    if sam2 is not None:
        config["sam2_config"] = sam2
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    _, model_class = model_classes("qwen3_vl")
    with torch.device("meta"):
        vlm = model_class(native_config("qwen3_vl", config, torch.float32))
        sam = Sam2VideoModel(sam2_config(sam2))
    shapes = {native_to_release(k, "v4"): tuple(v.shape) for k, v in vlm.state_dict().items()}
    hidden = text["hidden_size"]
    shapes.update({keymap.PROJECTION_PREFIX + "0.weight": (hidden, hidden), keymap.PROJECTION_PREFIX + "0.bias":
                   (hidden,), keymap.PROJECTION_PREFIX + "2.weight": (256, hidden),
                   keymap.PROJECTION_PREFIX + "2.bias": (256,)})
    generator = torch.Generator(device=device).manual_seed(0)

    def random(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        leaf = name.rsplit(".", 1)[-1]
        if len(shape) == 1 and leaf == "weight":
            scale, offset = 0.05, 1.0
        elif leaf == "bias" or len(shape) <= 1:
            scale, offset = 0.02, 0.0
        else:
            scale, offset = 1.0 / math.sqrt(max(math.prod(shape[1:]), 1)), 0.0
        return (torch.randn(shape, generator=generator, device=device) * scale + offset).cpu()

    sam_native = {k: random(k, tuple(v.shape)) for k, v in sam.state_dict().items()}
    sam_native["shared_image_embedding.positional_embedding"] = \
        sam_native["prompt_encoder.shared_embedding.positional_embedding"]
    sam_release = {keymap.SAM2_PREFIX + k: v.contiguous() for k, v in keymap.sam2_state_to_release(sam_native).items()}
    names = sorted(shapes) + sorted(sam_release)
    shard: dict[str, torch.Tensor] = {}
    size, files, weight_map, total = 0, [], {}, 0

    def flush() -> None:
        nonlocal shard, size
        name = f"model-{len(files) + 1:05d}.safetensors"
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        files.append(name)
        for key in shard:
            weight_map[key] = name
        shard, size = {}, 0

    for name in names:
        tensor = sam_release[name] if name in sam_release else random(name, shapes[name])
        nbytes = tensor.numel() * tensor.element_size()
        if shard and size + nbytes > shard_bytes:
            flush()
        shard[name] = tensor
        size += nbytes
        total += nbytes
    flush()
    count = len(files)
    renamed = {}
    for i, old in enumerate(files):  # model-0000i-of-0000n names, as save_pretrained writes them
        new = f"model-{i + 1:05d}-of-{count:05d}.safetensors"
        (folder / old).rename(folder / new)
        renamed[old] = new
    index = {"metadata": {"total_size": total}, "weight_map": {k: renamed[v] for k, v in sorted(weight_map.items())}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    done.write_text("ok")
    return folder


def tiny_checkpoint(folder: Path) -> Path:
    from sa2va import testing as synthetic

    if not (folder / "config.json").is_file():
        synthetic.write_checkpoint(folder, "qwen3_vl")
    return folder
