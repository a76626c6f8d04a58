"""The GPU check's measurements, one function per section; each returns a dict of numbers or raises.

Timings are split by forward hooks (:class:`StageClock`) on the vision tower and the language model inside one
``answer`` call: preprocessing (the processor, the cache keys, the copy to the device and ``generate``'s set-up, up
to the vision tower), the vision tower, the language model's prefill, and decode tokens/s (the steps after the
prefill). The SAM2 image encoder and the mask decoder are timed on their own. No figure divides by a zero time:
:func:`per_second` returns None and the section says why.
"""
from __future__ import annotations

import gc
import statistics
import time
import weakref

import numpy as np
import torch

from sa2va.grounding.sam2 import sam2_pixels
from sa2va.inputs import to_pil
from sa2va.testing import ForceTokens

PROMPT = "Please segment the person."


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
    for _ in range(max(runs, 1)):
        sync(device)
        start = time.perf_counter()
        result = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return result, statistics.median(times)


def per_second(count: float, elapsed: float) -> float | None:
    """``count / elapsed`` rounded, or None when the time is not positive (never a division by zero)."""
    return round(count / elapsed, 2) if elapsed > 0 and count > 0 else None


def answer_ids(tokenizer, segs: int, filler: int = 0) -> list[int]:
    """``Sure, it is [SEG].<|im_end|>`` (``segs`` [SEG]), or ``filler`` tokens without an end (decode speed)."""
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    if filler:
        return (encode(" it is") * filler)[:filler]
    seg = tokenizer.convert_tokens_to_ids("[SEG]")
    return encode("Sure,") + (encode(" it is") + [seg]) * segs + encode(".") + [tokenizer.convert_tokens_to_ids(
        "<|im_end|>")]


class Bench:
    """One loaded model with what every section needs: the image, the prompt length, forced answers."""

    def __init__(self, model, device: torch.device, args) -> None:
        self.model, self.device, self.args = model, device, args
        self.image = picture(args.size)
        self.length = int(model.prompt_inputs([self.image], PROMPT)["input_ids"].shape[1])
        self.short = answer_ids(model.tokenizer, 1)

    def forced(self, ids: list[int], length: int | None = None) -> list:
        return [ForceTokens(self.length if length is None else length, ids)]

    def cold(self, fn):
        def call():
            self.model.encoder_cache.clear()
            return fn()
        return call


class StageClock:
    """Forward hooks on the vision tower and the language model: when each started and ended within a call."""

    def __init__(self, model, device: torch.device) -> None:
        inner = model.vlm.model
        tower = getattr(inner, "visual", None) or getattr(inner, "vision_tower")
        self.device, self.marks = device, []
        self.hooks = []
        for name, module in (("vision", tower), ("language", inner.language_model)):
            self.hooks.append(module.register_forward_pre_hook(lambda *a, n=name: self.mark(n, "start")))
            self.hooks.append(module.register_forward_hook(lambda *a, n=name: self.mark(n, "end")))

    def mark(self, name: str, edge: str) -> None:
        sync(self.device)
        self.marks.append((name, edge, time.perf_counter()))

    def times(self, name: str, edge: str) -> list[float]:
        return [t for n, e, t in self.marks if n == name and e == edge]

    def remove(self) -> None:
        for hook in self.hooks:
            hook.remove()


def stages(bench: Bench) -> dict:
    """One cold ``answer`` of ``decode_tokens`` forced tokens, split by :class:`StageClock`."""
    model, device, steps = bench.model, bench.device, bench.args.decode_tokens
    forced = bench.forced(answer_ids(model.tokenizer, 0, steps))
    model.encoder_cache.clear()
    clock = StageClock(model, device)
    try:
        sync(device)
        start = time.perf_counter()
        answer = model.answer([bench.image], PROMPT, steps, forced)
        sync(device)
        end = time.perf_counter()
    finally:
        clock.remove()
    vision_start, vision_end = clock.times("vision", "start"), clock.times("vision", "end")
    lm_start, lm_end = clock.times("language", "start"), clock.times("language", "end")
    if not vision_start or not lm_end:
        raise RuntimeError(f"the vision tower ran {len(vision_start)} and the language model {len(lm_end)} times")
    prefill = lm_end[0] - lm_start[0]
    decode_steps, decode = len(lm_end) - 1, lm_end[-1] - lm_end[0]
    return {"preprocessing_ms": round((vision_start[0] - start) * 1000, 2),
            "vision_tower_ms": round((vision_end[-1] - vision_start[0]) * 1000, 2),
            "prefill_ms": round(prefill * 1000, 2), "prompt_tokens": bench.length,
            "prefill_tokens_per_s": per_second(bench.length, prefill),
            "decode_tokens": decode_steps, "decode_tokens_per_s": per_second(decode_steps, decode),
            "answer_s": round(end - start, 3), "generated": int(answer.token_ids.numel())}


def sam2_encode(bench: Bench) -> dict:
    head = bench.model.grounding
    pixels = sam2_pixels([to_pil(bench.image)], head.image_size)
    _, encoder = seconds(lambda: head.encode(pixels), bench.device, runs=bench.args.runs + 1)
    return {"sam2_encode_ms": round(encoder * 1000, 2)}


def mask_decode(bench: Bench) -> dict:
    """The mask decoder alone: the image's features come from the encoder cache (filled by a first call)."""
    model = bench.model
    states = model.answer([bench.image], PROMPT, len(bench.short), bench.forced(bench.short)).seg_states
    if not states:
        raise RuntimeError("the forced answer held no [SEG]")
    model.decode_groups([bench.image], [[states]])
    _, decode = seconds(lambda: model.decode_groups([bench.image], [[states]]), bench.device, runs=bench.args.runs)
    return {"mask_decode_ms": round(decode * 1000, 2), "objects": len(states)}


def end_to_end(bench: Bench) -> tuple[dict, torch.Tensor]:
    model = bench.model
    pred, total = seconds(bench.cold(lambda: model.predict(bench.image, PROMPT, logits_processor=bench.forced(
        bench.short))), bench.device, runs=bench.args.runs)
    if pred.masks.shape[0] == 0:
        raise RuntimeError(f"the answer held no [SEG]: {pred.raw_text!r}")
    return {"end_to_end_s": round(total, 3), "masks": int(pred.masks.shape[0])}, pred.masks


def video(bench: Bench) -> dict:
    """``predict_video`` on ``frames`` frames; fails unless the answer produced a [SEG] (masks for every frame)."""
    model, args = bench.model, bench.args
    frames = [picture(args.video_size, seed=i % 7) for i in range(args.frames)]
    length = int(model.prompt_inputs(frames[:5], PROMPT)["input_ids"].shape[1])
    result, total = seconds(bench.cold(lambda: model.predict_video(frames, PROMPT, logits_processor=bench.forced(
        bench.short, length))), bench.device)
    if result.masks.shape[0] == 0 or "[SEG]" not in result.raw_text:
        raise RuntimeError(f"the video answer produced no [SEG]: {result.raw_text!r}")
    return {"video_frames_per_s": per_second(args.frames, total), "video_s": round(total, 3),
            "objects": int(result.masks.shape[0]), "frames": int(result.masks.shape[1])}


def agreement(masks: torch.Tensor, reference: torch.Tensor) -> dict:
    """IoU of the masks thresholded at 0.5 and the largest probability difference, against ``reference``."""
    if masks.shape != reference.shape or masks.numel() == 0:
        raise RuntimeError(f"mask shapes {list(masks.shape)} vs {list(reference.shape)}")
    a, b = masks > 0.5, reference > 0.5
    union = int((a | b).sum())
    return {"iou": round(int((a & b).sum()) / union, 5) if union else 1.0,
            "max_abs_dp": round(float((masks.float() - reference.float()).abs().max()), 5)}


def batch(bench: Bench) -> dict:
    """``segment`` of ``batch`` images in one call against ``predict`` one by one: speed, ids equal, mask IoU."""
    model, count = bench.model, bench.args.batch
    images = [picture(bench.args.size, seed=i) for i in range(count)]
    batched, together = seconds(bench.cold(lambda: model.segment(images, PROMPT, logits_processor=bench.forced(
        bench.short), generate_batch_size=count)), bench.device)
    singles, alone = seconds(bench.cold(lambda: [model.predict(image, PROMPT, logits_processor=bench.forced(
        bench.short)) for image in images]), bench.device)
    pairs = [(rows[0], single) for rows, single in zip(batched, singles)]
    ious = [agreement(b.masks, s.masks)["iou"] for b, s in pairs]
    return {f"batch{count}_images_per_s": per_second(count, together),
            "one_by_one_images_per_s": per_second(count, alone),
            "ids_equal": all(torch.equal(b.token_ids, s.token_ids) for b, s in pairs), "min_mask_iou": min(ious),
            "max_abs_dp": max(agreement(b.masks, s.masks)["max_abs_dp"] for b, s in pairs)}


def compile_check(bench: Bench) -> dict:
    """The SAM2 image encoder with ``torch.compile`` (inductor) against eager: ms per pass and max difference."""
    from sa2va.grounding.sam2 import GroundingHead

    head, device = bench.model.grounding, bench.device
    pixels = sam2_pixels([to_pil(bench.image)], head.image_size)
    eager, eager_s = seconds(lambda: head.encode(pixels), device, runs=3)
    compiled = GroundingHead(head.model, compile_encoder=True)
    _, first_s = seconds(lambda: compiled.encode(pixels), device)
    result, compiled_s = seconds(lambda: compiled.encode(pixels), device, runs=3)
    difference = max(float((a.float() - b.float()).abs().max()) for a, b in
                     zip(eager.high_res + [eager.top], result.high_res + [result.top]))
    return {"eager_ms": round(eager_s * 1000, 1), "compiled_ms": round(compiled_s * 1000, 1),
            "compile_first_call_s": round(first_s, 1), "max_feature_difference": difference}


def model_tensors(model) -> list[torch.Tensor]:
    """The weights, buffers and cached features of a loaded model."""
    parts = (model.vlm, model.projection, model.grounding.model)
    return [t for p in parts for t in list(p.parameters()) + list(p.buffers())] + model.encoder_cache.tensors()


def unload(holder: dict, device: torch.device, allocated_before_load: int) -> dict:
    """Let go of everything in ``holder`` (the model under "model", with its encoder cache filled by the sections
    before, and the :class:`Bench` around it) and report
    what is left: the bytes of its tensors still alive (0 means everything went), and on CUDA the memory still
    allocated above what it was before the load."""
    refs = [(weakref.ref(t), t.numel() * t.element_size()) for t in model_tensors(holder["model"])]
    cached = holder["model"].encoder_cache.nbytes
    holder.clear()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    out = {"model_bytes": sum(n for _, n in refs), "cache_bytes_before_unload": cached,
           "bytes_alive_after_unload": sum(n for ref, n in refs if ref() is not None)}
    if device.type == "cuda":
        out["gpu_allocated_above_baseline_mib"] = round((torch.cuda.memory_allocated(device) -
                                                         allocated_before_load) / 2**20, 2)
        out["gpu_reserved_mib"] = round(torch.cuda.memory_reserved(device) / 2**20, 2)
    return out
