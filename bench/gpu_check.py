"""One-command GPU check: a full-size random Sa2VA-Qwen3-VL-4B through the pack in bf16, 8-bit and 4-bit.

    python bench/gpu_check.py                      # CUDA, no network; prints one JSON summary (~5-7 min on an H100)
    python bench/gpu_check.py --modes bf16         # one mode only
    python bench/gpu_check.py --tiny               # the plumbing on a tiny geometry (CPU is fine; tests use it)

It writes (once, reused; ``--folder``) a random checkpoint in the release format with the released Qwen3-VL-4B
geometry (text: 36 layers, hidden 2560, 32/8 heads, vocab 151936; vision: 24 layers, hidden 1024, deepstack 5/11/17)
and full-size SAM2 Hiera-L, stored as released (fp32 safetensors shards). The weights are random (``torch.randn`` on
the GPU, scaled by 1/sqrt(fan-in)); answers are forced (``sa2va.testing.ForceTokens``) so every mode decodes the
same tokens. For each quantisation mode it reports: load time, peak VRAM, prefill and decode tokens/s, one SAM2
image-encoder pass in ms, the end-to-end seconds of ``predict`` on a 1024x1024 image with a short answer (one
[SEG]), video frames/s (``predict_video``, 16 frames), batch-of-8 images/s (``segment``) and the masks'
agreement with an fp32 load (IoU at 0.5 and max |dp|); for bf16 also the SAM2 encoder with ``torch.compile`` on/off.
The encoder cache is cleared before every timed call, so nothing is served from it. Sections that would overrun
``--budget-s`` are skipped and say so. InternVL3-14B is not covered (the same code paths, a different adapter).
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import sa2va  # noqa: E402
from sa2va.hub import keymap  # noqa: E402
from sa2va.inputs import to_pil  # noqa: E402
from sa2va.grounding.sam2 import GroundingHead, sam2_config, sam2_pixels  # noqa: E402
from sa2va.testing import ForceTokens  # noqa: E402

PROMPT = "Please segment the person in this image."
#: the released Sa2VA-Qwen3-VL-4B geometry (Qwen3-VL-4B-Instruct)
TEXT_4B = {"hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36, "num_attention_heads": 32,
           "num_key_value_heads": 8, "head_dim": 128}
VOCAB_4B = 151936
VISION_4B = {"depth": 24, "hidden_size": 1024, "intermediate_size": 4096, "num_heads": 16,
             "num_position_embeddings": 2304, "deepstack_visual_indexes": [5, 11, 17]}
MROPE_4B = [24, 20, 20]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- checkpoint
def write_full_checkpoint(folder: Path, device: torch.device, shard_bytes: int = 2 * 2**30) -> Path:
    """A random release-format Sa2VA-Qwen3-VL-4B (fp32 shards, as released) written tensor by tensor."""
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
    config = release_config("qwen3_vl", ids, VOCAB_4B, None, TEXT_4B)
    config["text_config"]["rope_scaling"]["mrope_section"] = MROPE_4B
    config["text_config"]["max_position_embeddings"] = 262144
    config["vision_config"].update(VISION_4B)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    _, model_class = model_classes("qwen3_vl")
    with torch.device("meta"):
        vlm = model_class(native_config("qwen3_vl", config, torch.float32))
        sam = Sam2VideoModel(sam2_config(None))
    shapes = {native_to_release(k, "v4"): tuple(v.shape) for k, v in vlm.state_dict().items()}
    hidden = TEXT_4B["hidden_size"]
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


# ------------------------------------------------------------------------------------------------- timings
def picture(size: int, seed: int = 0) -> np.ndarray:
    """A ``size`` x ``size`` RGB picture: gradients, a box, noise (``seed`` varies it)."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:size, 0:size]
    img = np.stack([x / size * 255, y / size * 255, (x + y) / (2 * size) * 255], -1)
    box = slice(size // 5 + 7 * seed, size // 2 + 7 * seed)
    img[box, box] = [220, 40, 40]
    img += rng.randn(*img.shape) * 4
    return img.clip(0, 255).astype(np.uint8)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(fn, device: torch.device, runs: int = 1) -> tuple[object, float]:
    """(last result, median wall seconds of ``runs`` calls)."""
    times, result = [], None
    for _ in range(runs):
        sync(device)
        start = time.perf_counter()
        result = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return result, statistics.median(times)


def answer_ids(tokenizer, segs: int, filler: int = 0) -> list[int]:
    """``Sure, it is [SEG].<|im_end|>`` (``segs`` [SEG]), or ``filler`` tokens without an end (decode speed)."""
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    if filler:
        return (encode(" it is") * filler)[:filler]
    seg = tokenizer.convert_tokens_to_ids("[SEG]")
    return encode("Sure,") + (encode(" it is") + [seg]) * segs + encode(".") + [tokenizer.convert_tokens_to_ids(
        "<|im_end|>")]


class Budget:
    def __init__(self, seconds_total: float) -> None:
        self.end = time.monotonic() + seconds_total

    def left(self) -> float:
        return self.end - time.monotonic()


def measure_mode(folder: Path, mode: str, device: torch.device, args, budget: Budget) -> tuple[dict, torch.Tensor]:
    """All numbers of one quantisation mode (see the module docstring); returns (numbers, the e2e masks)."""
    quantization = {"bf16": None, "fp32": None, "8bit": "8bit", "4bit": "4bit"}[mode]
    dtype = torch.float32 if mode == "fp32" else torch.bfloat16
    out: dict = {"mode": mode}
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    model, load_s = seconds(lambda: sa2va.load_model(folder, device=device, dtype=dtype, quantization=quantization),
                            device)
    out["load_s"] = round(load_s, 2)
    if device.type == "cuda":
        out["vram_after_load_gib"] = round(torch.cuda.memory_allocated(device) / 2**30, 3)
    cache = model.encoder_cache
    image = picture(args.size)
    length = int(model.prompt_inputs([image], PROMPT)["input_ids"].shape[1])
    short = answer_ids(model.tokenizer, 1)

    def forced(ids, prompt_length=length):
        return [ForceTokens(prompt_length, ids)]

    def cold(fn):
        def call():
            cache.clear()
            return fn()
        return call

    masks = torch.zeros(0)
    pred, end_to_end = seconds(cold(lambda: model.predict(image, PROMPT, logits_processor=forced(short))),
                                        device, runs=args.runs)
    masks = pred.masks
    out["end_to_end_s"] = round(end_to_end, 3)
    out["prompt_tokens"] = length
    if mode == "fp32":
        return out, masks
    _, prefill = seconds(cold(lambda: model.answer([image], PROMPT, 1, forced(short))), device, runs=args.runs)
    out["prefill_tokens_per_s"] = round(length / prefill, 1)
    steps = args.decode_tokens
    _, decode = seconds(cold(lambda: model.answer([image], PROMPT, steps, forced(answer_ids(
        model.tokenizer, 0, steps)))), device, runs=args.runs)
    out["decode_tokens_per_s"] = round((steps - 1) / max(decode - prefill, 1e-9), 1)
    head = model.grounding
    pixels = sam2_pixels([to_pil(image)], head.image_size)
    _, encoder = seconds(lambda: head.encode(pixels), device, runs=args.runs + 1)
    out["sam2_encoder_ms"] = round(encoder * 1000, 1)
    if budget.left() > 60:
        frames = [picture(args.video_size, seed=i % 7) for i in range(args.frames)]
        video_length = int(model.prompt_inputs(frames[:5], PROMPT)["input_ids"].shape[1])
        _, video = seconds(cold(lambda: model.predict_video(frames, PROMPT, logits_processor=forced(
            short, video_length))), device)
        out["video_frames_per_s"] = round(args.frames / video, 2)
    else:
        out["video_frames_per_s"] = "skipped: budget"
    if budget.left() > 45:
        images = [picture(args.size, seed=i) for i in range(args.batch)]
        _, batch = seconds(cold(lambda: model.segment(images, PROMPT, logits_processor=forced(short),
                                                      generate_batch_size=args.batch)), device)
        out[f"batch{args.batch}_images_per_s"] = round(args.batch / batch, 3)
    else:
        out[f"batch{args.batch}_images_per_s"] = "skipped: budget"
    if mode == "bf16" and args.compile:
        out["sam2_compile"] = compile_check(head, pixels, device, budget)
    if device.type == "cuda":
        out["peak_vram_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    del model, head
    return out, masks


def compile_check(head: GroundingHead, pixels: torch.Tensor, device: torch.device, budget: Budget) -> dict:
    """The SAM2 image encoder with ``torch.compile`` (inductor) against eager: ms per pass and max difference."""
    if budget.left() < 150:
        return {"skipped": "budget"}
    eager, eager_s = seconds(lambda: head.encode(pixels), device, runs=3)
    compiled = GroundingHead(head.model, compile_encoder=True)
    _, first_s = seconds(lambda: compiled.encode(pixels), device)
    result, compiled_s = seconds(lambda: compiled.encode(pixels), device, runs=3)
    difference = max(float((a.float() - b.float()).abs().max()) for a, b in
                     zip(eager.high_res + [eager.top], result.high_res + [result.top]))
    return {"eager_ms": round(eager_s * 1000, 1), "compiled_ms": round(compiled_s * 1000, 1),
            "compile_first_call_s": round(first_s, 1), "max_feature_difference": difference}


def agreement(masks: torch.Tensor, reference: torch.Tensor) -> dict:
    """IoU of the masks thresholded at 0.5 and the largest probability difference, against ``reference``."""
    if masks.shape != reference.shape or masks.numel() == 0:
        return {"error": f"mask shapes {list(masks.shape)} vs {list(reference.shape)}"}
    a, b = masks > 0.5, reference > 0.5
    union = int((a | b).sum())
    return {"iou": round(int((a & b).sum()) / union, 5) if union else 1.0,
            "max_abs_dp": round(float((masks - reference).abs().max()), 5)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny geometry (plumbing check; CPU is fine)")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--modes", nargs="+", default=["bf16", "8bit", "4bit"], choices=["bf16", "8bit", "4bit"])
    parser.add_argument("--folder", help="checkpoint folder (default bench/results/checkpoints/gpu-check-<size>)")
    parser.add_argument("--budget-s", type=float, default=450.0, help="skip sections that would run past this")
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--video-size", type=int, default=512)
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8, help="images in the segment measurement")
    parser.add_argument("--runs", type=int, default=2, help="timed calls per measurement (median)")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile check")
    parser.add_argument("--json", help="also write the summary here")
    args = parser.parse_args(argv)
    budget = Budget(args.budget_s)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.tiny:
        args.size, args.video_size, args.frames, args.decode_tokens, args.batch, args.runs = 256, 64, 2, 4, 2, 1
        args.compile = args.compile and device.type == "cuda"
    name = "gpu-check-tiny" if args.tiny else "gpu-check-qwen3_vl-4b"
    folder = Path(args.folder) if args.folder else common.RESULTS / "checkpoints" / name
    start = time.perf_counter()
    folder = tiny_checkpoint(folder) if args.tiny else write_full_checkpoint(folder, device)
    stored = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    summary: dict = {"benchmark": "gpu_check", "environment": common.environment(device), "checkpoint": str(folder),
                     "geometry": "tiny" if args.tiny else "Sa2VA-Qwen3-VL-4B (random)",
                     "checkpoint_gib": round(stored / 2**30, 3),
                     "checkpoint_write_s": round(time.perf_counter() - start, 1), "image": f"{args.size}x{args.size}",
                     "modes": {}}
    log(f"checkpoint {folder} ({stored / 2**30:.2f} GiB) ready after {summary['checkpoint_write_s']} s")
    masks: dict[str, torch.Tensor] = {}
    for mode in args.modes + ["fp32"]:
        if mode in ("8bit", "4bit") and device.type != "cuda":
            summary["modes"][mode] = {"skipped": "bitsandbytes quantisation needs CUDA"}
            continue
        if budget.left() < (20 if args.tiny else 60):
            summary["modes"][mode] = {"skipped": "budget"}
            continue
        log(f"{mode} ...")
        numbers, masks[mode] = measure_mode(folder, mode, device, args, budget)
        summary["modes"][mode] = numbers
        log(f"{mode}: {numbers}")
    if "fp32" in masks:
        summary["mask_agreement_vs_fp32"] = {mode: agreement(masks[mode], masks["fp32"])
                                             for mode in masks if mode != "fp32"}
    summary["total_s"] = round(time.perf_counter() - start, 1)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
