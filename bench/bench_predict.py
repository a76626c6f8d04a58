"""End-to-end predict against the reference algorithm, side by side, in one process on the same weights.

    python bench/bench_predict.py                      # CPU, fp32, answers with 1, 3 and 6 [SEG], 5 runs each
    python bench/bench_predict.py --device cuda --dtype bf16 --runs 10
    python bench/bench_predict.py --model /path/to/Sa2VA-Qwen3-VL-4B --segs 1 3

Without ``--model`` it builds (once, cached under bench/results/checkpoints/) a release-format checkpoint with
full-size SAM2 Hiera-L at 1024 px and a tiny language model, so the time is the grounding pipeline's, not the
language model's. Decoding is forced (``sa2va.testing.ForceTokens``) to ``Sure, it is [SEG] ... it is [SEG].``
with exactly N [SEG].

"ours" is ``Sa2VAModel.predict`` with its encoder cache emptied before every run (every run encodes the image
again, as a new image would). "baseline" follows the reference (``predict_forward`` of ByteDance's Sa2VA code,
docs/design.md, "The reference algorithm") step by step on the same transformers modules and weights:

1. ``generate(..., output_hidden_states=True, return_dict_in_generate=True)``: every layer's hidden states of every
   step are kept until the answer is complete; the [SEG] rows are then picked from the last entry;
2. for every [SEG]: the SAM2 image encoder runs again on the same image (transformers' stock
   ``Sam2VideoModel.get_image_features``), one mask is decoded, and the memory encoder runs on that mask (the
   ``propagate_in_video`` preflight, which the reference also does for a single image);
3. each mask's logits are resized 256 -> 1024 -> (H, W) and passed through a sigmoid.

Both produce the same token ids and masks (asserted, max difference <= 1e-5). Timings alternate ours/baseline;
medians after a warm-up run. Wall time is what the targets are about; process CPU time is printed too because on a
shared machine it is far less noisy. Peak memory is the growth of the process's RSS during a run (CPU) or
``torch.cuda.max_memory_allocated`` above the allocation before it (CUDA).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import sa2va  # noqa: E402
import sa2va.requests  # noqa: E402
from sa2va.compat import sam2_image_features  # noqa: E402
from sa2va.inputs import to_pil  # noqa: E402
from sa2va.grounding.sam2 import sam2_pixels, upsample_logits  # noqa: E402
from sa2va.testing import ForceTokens  # noqa: E402

PROMPT = "<image>Please segment every person in this image."


def test_image() -> np.ndarray:
    """The suite's 480x640 test picture (gradients, a red box, a green disc, noise)."""
    rng = np.random.RandomState(0)
    y, x = np.mgrid[0:480, 0:640]
    img = np.stack([x / 640 * 255, y / 480 * 255, (x + y) / 1120 * 255], -1)
    img[100:300, 150:350] = [220, 40, 40]
    img[((y - 300) ** 2 + (x - 480) ** 2) < 80 ** 2] = [40, 200, 60]
    img += rng.randn(*img.shape) * 4
    return img.clip(0, 255).astype(np.uint8)


def answer_ids(tokenizer, count: int) -> list[int]:
    """``Sure, it is [SEG] it is [SEG] ... .<|im_end|>`` with ``count`` [SEG]."""
    seg = tokenizer.convert_tokens_to_ids("[SEG]")
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    ids = encode("Sure,")
    for _ in range(count):
        ids += encode(" it is") + [seg]
    return ids + encode(".") + [tokenizer.convert_tokens_to_ids("<|im_end|>")]


def prompt_length(model, image) -> int:
    inputs = model.prompt_inputs([image], PROMPT)
    return int(inputs["input_ids"].shape[1])


def ours(model, image, forced: list[int], length: int):
    model.encoder_cache.clear()  # a cold prediction: nothing served from the encoder cache of the previous run
    pred = model.predict(image, PROMPT, logits_processor=[ForceTokens(length, forced)])
    return pred.token_ids, pred.masks


class Baseline:
    """The reference algorithm step by step (see the module docstring) on the model's own modules."""

    def __init__(self, model) -> None:
        self.model = model
        self.sam = model.grounding.model
        self.size = model.grounding.image_size
        self.encoder_passes = 0
        self.memory_passes = 0

    @torch.no_grad()
    def __call__(self, image, forced: list[int], length: int):
        from transformers import GenerationConfig, LogitsProcessorList

        model, sam = self.model, self.sam
        pil = to_pil(image)
        inputs = model.adapter.build_inputs(model.processor, [pil], PROMPT)
        device = next(model.vlm.parameters()).device
        inputs = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in inputs.items()}
        eos = model.adapter.eos_token_ids(model.config, model.tokenizer)
        config = GenerationConfig(max_new_tokens=sa2va.requests.DEFAULT_MAX_NEW_TOKENS, do_sample=False, num_beams=1,
                                  eos_token_id=eos, pad_token_id=model.tokenizer.pad_token_id or eos[0],
                                  output_hidden_states=True, return_dict_in_generate=True)
        # Under transformers 4.57 (the reference) the last entry of hidden_states is the final norm's *input* for
        # Qwen3-VL; 5.x stores its output. For a pre-norm family, the norm's input is kept for every step as well.
        pre_norm, handle = [], None
        if model.adapter.seg_state == "pre_norm":
            handle = model.adapter.final_norm(model.vlm).register_forward_hook(
                lambda module, args, out: pre_norm.append(args[0][0]))
        try:
            out = model.vlm.generate(**inputs, generation_config=config,
                                     logits_processor=LogitsProcessorList([ForceTokens(length, forced)]))
        finally:
            if handle is not None:
                handle.remove()
        sequence = out.sequences[0]
        last = torch.cat(pre_norm) if pre_norm else torch.cat([step[-1][0] for step in out.hidden_states])
        fed = sequence[:-1]
        rows = torch.nonzero(fed == model.seg_id).flatten()
        rows = rows[rows >= inputs["input_ids"].shape[1]]  # [SEG] of the answer only (the prompt has none)
        projection_dtype = next(model.projection.parameters()).dtype
        embeddings = model.projection(last[rows].to(projection_dtype))
        pixels = sam2_pixels([pil], self.size).to(device=model.grounding.device, dtype=model.grounding.dtype)
        shapes = [tuple(s) for s in sam.backbone_feature_sizes]
        masks = []
        for embedding in embeddings:  # one SAM2 video session per [SEG], as the reference does
            levels, _ = sam2_image_features(sam, pixels)  # recomputed for every [SEG]
            self.encoder_passes += 1
            high_res = [levels[i].permute(1, 2, 0).reshape(1, -1, *shapes[i]) for i in range(2)]
            top = levels[2]
            pixel_embedding = (top + sam.no_memory_embedding).permute(1, 2, 0).reshape(1, -1, *shapes[2])
            points = torch.zeros(1, 1, 1, 2, device=pixels.device, dtype=pixels.dtype)
            labels = -torch.ones(1, 1, 1, dtype=torch.int32, device=pixels.device)
            sparse, dense = sam.prompt_encoder(input_points=points, input_labels=labels, input_boxes=None,
                                               input_masks=None)
            sparse = torch.cat([sparse, embedding.view(1, 1, 1, -1).to(sparse.dtype)], dim=2)
            logits, iou, tokens, score = sam.mask_decoder(
                image_embeddings=pixel_embedding, image_positional_embeddings=sam.get_image_wide_positional_embeddings(),
                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=True,
                high_resolution_features=high_res)
            best = int(iou[0, 0].argmax())
            low = logits[0, 0, best][None, None]  # [1, 1, 256, 256], no object-score clamp
            appear = (score[0, 0] > 0).to(tokens.dtype)
            pointer = sam.object_pointer_proj(tokens[0, 0, best])  # kept by the reference for tracking
            pointer = appear * pointer + (1 - appear) * sam.no_object_pointer
            # propagate_in_video preflight: memory encoder on the conditioning frame's (soft) mask
            high = F.interpolate(low.float(), size=(self.size, self.size), mode="bilinear", align_corners=False)
            for_memory = torch.sigmoid(high) * sam.config.sigmoid_scale_for_mem_enc + \
                sam.config.sigmoid_bias_for_mem_enc
            pix_feat = top.permute(1, 2, 0).reshape(1, -1, *shapes[2])
            memory, _ = sam.memory_encoder(pix_feat, for_memory.to(pix_feat.dtype))
            memory = memory.to(torch.bfloat16)  # stored in bf16, unused for a single image
            self.memory_passes += 1
            masks.append(upsample_logits(low, self.size, pil.height, pil.width)[0].sigmoid())
        stacked = torch.stack(masks).cpu() if masks else torch.zeros(0, pil.height, pil.width)
        return sequence[inputs["input_ids"].shape[1]:].cpu(), stacked


def check_same(count: int, a, b) -> float:
    ids_a, masks_a = a
    ids_b, masks_b = b
    if not torch.equal(ids_a, ids_b):
        raise AssertionError(f"{count} [SEG]: token ids differ: {ids_a.tolist()} vs {ids_b.tolist()}")
    if masks_a.shape != masks_b.shape or masks_a.shape[0] != count:
        raise AssertionError(f"{count} [SEG]: mask shapes {list(masks_a.shape)} vs {list(masks_b.shape)}")
    difference = float((masks_a - masks_b).abs().max())
    if difference > 1e-5:
        raise AssertionError(f"{count} [SEG]: masks differ by {difference:.2e} (> 1e-5)")
    return difference


@torch.inference_mode()
def breakdown(model, image, forced: list[int], length: int, runs: int, device: torch.device) -> dict:
    """Median seconds of ours' stages: generate, SAM2 encoder, K-mask decode + resize + sigmoid."""
    head = model.grounding
    pil = to_pil(image)
    stages: dict[str, list[float]] = {"preprocess+generate": [], "sam2_encoder": [], "decode+resize": []}
    for _ in range(runs):
        answer, sample = common.timed(lambda: model.answer(
            [pil], PROMPT, sa2va.requests.DEFAULT_MAX_NEW_TOKENS, [ForceTokens(length, forced)]), device)
        states = answer.seg_states
        stages["preprocess+generate"].append(sample.wall)
        features, sample = common.timed(lambda: head.encode(sam2_pixels([pil], head.image_size)), device)
        stages["sam2_encoder"].append(sample.wall)

        def decode():
            embeddings = model.seg_embeddings(states)
            low = head.image_logits(features, embeddings)
            return upsample_logits(low, head.image_size, pil.height, pil.width).sigmoid().cpu()

        _, sample = common.timed(decode, device)
        stages["decode+resize"].append(sample.wall)
    return {k: round(float(np.median(v)), 4) for k, v in stages.items()}


@torch.inference_mode()
def encoder_only(model, image, runs: int, device: torch.device) -> dict:
    """Median wall/CPU seconds of one SAM2 image-encoder pass: ours (GroundingHead.encode) vs stock."""
    head = model.grounding
    pixels = sam2_pixels([to_pil(image)], head.image_size).to(device=head.device, dtype=head.dtype)
    series = {"ours": common.Series(), "stock": common.Series()}
    calls = {"ours": lambda: head.encode(pixels),
             "stock": lambda: sam2_image_features(head.model, pixels)}
    for name in calls:
        common.timed(calls[name], device)  # warm-up
    for r in range(runs):
        for name in (("ours", "stock") if r % 2 == 0 else ("stock", "ours")):
            series[name].samples.append(common.timed(calls[name], device)[1])
    return {name: s.as_json() for name, s in series.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a model folder (default: build a full-SAM2 synthetic checkpoint)")
    parser.add_argument("--family", default="qwen3_vl", choices=["qwen3_vl", "qwen2_5_vl"],
                        help="family of the synthetic checkpoint")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, choices=["fp32", "bf16", "fp16"],
                        help="default: fp32 on CPU, bf16 on CUDA")
    parser.add_argument("--segs", type=int, nargs="+", default=[1, 3, 6])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per implementation and [SEG] count")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of each first (the first also checks)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--compile-sam2", action="store_true", help="load_model(compile_sam2=True) for ours")
    parser.add_argument("--no-extras", action="store_true", help="skip the encoder-only and breakdown timings")
    parser.add_argument("--json", help="output path (default bench/results/predict-<device>.json)")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = common.parse_dtype(args.dtype or ("bf16" if device.type == "cuda" else "fp32"))
    folder = Path(args.model) if args.model else common.checkpoint(args.family, f"{args.family}-full-sam2",
                                                                   sam2="full")
    model = sa2va.load_model(folder, device=device, dtype=dtype, compile_sam2=args.compile_sam2)
    image = test_image()
    length = prompt_length(model, image)
    baseline = Baseline(model)
    env = common.environment(device)
    print(f"model {folder} ({model.family}), {device}, {dtype}, {env['torch_threads']} threads, "
          f"torch {env['torch']}, transformers {env['transformers']}, image 480x640, prompt {length} tokens",
          flush=True)

    results = []
    for count in args.segs:
        forced = answer_ids(model.tokenizer, count)
        series = {"ours": common.Series(), "baseline": common.Series()}
        calls = {"ours": lambda: ours(model, image, forced, length), "baseline": lambda: baseline(image, forced, length)}
        first = {name: common.timed(calls[name], device) for name in ("ours", "baseline")}
        difference = check_same(count, first["ours"][0], first["baseline"][0])
        for _ in range(args.warmup - 1):
            for name in calls:
                check_same(count, first["ours"][0], common.timed(calls[name], device)[0])
        passes = baseline.encoder_passes
        for r in range(args.runs):
            for name in (("ours", "baseline") if r % 2 == 0 else ("baseline", "ours")):
                output, sample = common.timed(calls[name], device)
                check_same(count, first["ours"][0], output)
                series[name].samples.append(sample)
        per_run = (baseline.encoder_passes - passes) // args.runs
        row = {"segs": count, "max_mask_difference": difference, "baseline_encoder_passes": per_run,
               "ours_encoder_passes": 1, "ours": series["ours"].as_json(), "baseline": series["baseline"].as_json()}
        row["ratio_wall"] = round(row["ours"]["median_wall_s"] / row["baseline"]["median_wall_s"], 3)
        row["ratio_cpu"] = round(row["ours"]["median_cpu_s"] / row["baseline"]["median_cpu_s"], 3)
        results.append(row)
        print(f"{count} [SEG]: ours {row['ours']['median_wall_s']:.2f} s, baseline "
              f"{row['baseline']['median_wall_s']:.2f} s, ratio {row['ratio_wall']:.2f} "
              f"(max mask difference {difference:.1e})", flush=True)

    extras = {}
    if not args.no_extras:
        extras["encoder_pass"] = encoder_only(model, image, args.runs, device)
        biggest = max(args.segs)
        extras["breakdown_ours"] = {"segs": biggest, "median_wall_s": breakdown(
            model, image, answer_ids(model.tokenizer, biggest), length, max(3, args.runs // 2), device)}

    memory_name = "peak RSS growth (MB)" if device.type == "cpu" else "peak CUDA alloc (MB)"
    rows = [[r["segs"], f"{r['ours']['median_wall_s']:.2f}", f"{r['baseline']['median_wall_s']:.2f}",
             f"{r['ratio_wall']:.2f}", f"{r['ours']['median_cpu_s']:.2f}", f"{r['baseline']['median_cpu_s']:.2f}",
             f"{r['ratio_cpu']:.2f}", common.mb(r["ours"]["max_peak_memory_bytes"]),
             common.mb(r["baseline"]["max_peak_memory_bytes"]), f"1 / {r['baseline_encoder_passes']}"]
            for r in results]
    print()
    print(f"median of {args.runs} alternating runs after {args.warmup} warm-up")
    print(common.table(["[SEG]", "ours wall s", "baseline wall s", "ratio", "ours CPU s", "baseline CPU s",
                        "CPU ratio", f"ours {memory_name}", f"baseline {memory_name}", "encoder passes"], rows))
    if extras:
        enc = extras["encoder_pass"]
        print()
        print(common.table(["one SAM2 image-encoder pass", "median wall s", "median CPU s"],
                           [[name, f"{enc[name]['median_wall_s']:.2f}", f"{enc[name]['median_cpu_s']:.2f}"]
                            for name in ("ours", "stock")]))
        parts = extras["breakdown_ours"]["median_wall_s"]
        print()
        print(f"ours, {extras['breakdown_ours']['segs']} [SEG], stage medians:")
        print(common.table(["stage", "wall s"], [[k, f"{v:.3f}"] for k, v in parts.items()]))
    path = common.write_json({"benchmark": "predict", "environment": env, "model": str(folder),
                              "family": model.family, "dtype": str(dtype), "runs": args.runs,
                              "warmup": args.warmup, "compile_sam2": args.compile_sam2, "prompt_tokens": length,
                              "results": results, **extras}, args.json, f"predict-{device.type}.json")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
