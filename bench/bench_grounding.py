"""Seconds per frame of the grounding image encoders, side by side: SAM2 Hiera-L (1024 px, the SAM2 releases) and
SAM 3's tracker (ViT-L/14 at 1008 px, Sa2VA-Qwen3-VL-4B-SAM3).

    python bench/bench_grounding.py                    # CPU, fp32, 3 runs each after one warm-up
    python bench/bench_grounding.py --device cuda --dtype bf16 --runs 10

Both encoders are built at their releases' full geometry with random weights (transformers' ``Sam2VideoModel`` and
``Sam3TrackerVideoModel``, no checkpoint on disk: the weights' values do not change the time) and run through the
pack's own path, ``GroundingHead.encode``, on the same 640x480 picture: resize to the encoder's size, normalise, the
backbone and the neck, as a video frame or a new image costs. Runs alternate between the two encoders so that both
see the same machine load; medians of wall and process CPU time, and the peak memory growth of a pass. SAM 3 needs
transformers 5.x; without it only SAM2 is timed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from bench_predict import test_image  # noqa: E402

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from sa2va.errors import DependencyError  # noqa: E402
from sa2va.grounding.rules import SAM3_RULES  # noqa: E402
from sa2va.grounding.sam2 import GroundingHead, sam2_config, sam2_pixels  # noqa: E402
from sa2va.grounding.sam3 import sam3_config, sam3_model_class  # noqa: E402


def build_heads(device: torch.device, dtype: torch.dtype) -> dict[str, GroundingHead]:
    """Full-size random SAM2 Hiera-L and (where transformers has it) SAM 3 tracker heads."""
    from transformers import Sam2VideoModel

    torch.manual_seed(0)
    heads = {"SAM2 Hiera-L (1024 px)": GroundingHead(Sam2VideoModel(sam2_config()).to(device, dtype).eval())}
    try:
        model_class = sam3_model_class()
    except DependencyError as exc:
        print(f"SAM 3 not timed: {exc}")
        return heads
    heads["SAM 3 tracker ViT-L/14 (1008 px)"] = GroundingHead(model_class(sam3_config()).to(device, dtype).eval(),
                                                              rules=SAM3_RULES)
    return heads


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--runs", type=int, default=3, help="timed passes per encoder")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--json", help="output path (default bench/results/grounding-<device>.json)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), common.parse_dtype(args.dtype)
    heads = build_heads(device, dtype)
    image = Image.fromarray(test_image())
    series = {name: common.Series() for name in heads}
    with torch.inference_mode():
        def encode(head: GroundingHead):
            return lambda: head.encode(sam2_pixels([image], head.image_size).to(device=device, dtype=dtype))

        for head in heads.values():
            common.timed(encode(head), device)  # warm-up
        names = list(heads)
        for r in range(args.runs):
            for name in (names if r % 2 == 0 else names[::-1]):
                series[name].samples.append(common.timed(encode(heads[name]), device)[1])
    params = {name: sum(p.numel() for p in head.model.vision_encoder.parameters()) for name, head in heads.items()}
    rows = [[name, f"{params[name] / 1e6:.0f}M", heads[name].image_size, f"{s.median('wall'):.2f}",
             f"{s.median('cpu'):.2f}", common.mb(max(x.peak_memory for x in s.samples))] for name, s in series.items()]
    print(f"{args.device}, {args.dtype}, {torch.get_num_threads()} threads, median of {args.runs} alternating passes "
          f"after one warm-up")
    print(common.table(["encoder", "vision parameters", "input px", "wall s / frame", "CPU s / frame",
                        "peak growth (MB)"], rows))
    out = common.write_json({"environment": common.environment(device), "dtype": args.dtype,
                             "encoders": {name: {"vision_parameters": params[name], **s.as_json()}
                                          for name, s in series.items()}},
                            args.json, f"grounding-{device.type}.json")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
