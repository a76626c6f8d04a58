"""Installation check for ComfyUI-Sa2VA: run ``python test_sa2va.py`` from the pack folder.

Prints versions, the GPU and its bf16 support, whether bitsandbytes works, then builds a tiny random Sa2VA
checkpoint in the release format and runs one real prediction on it (no download). Each check says PASS or FAIL
and, when it fails, what to do. Exit code 0 when every required check passes.
"""
from __future__ import annotations

import importlib
import importlib.metadata as metadata
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

RESULTS: list[tuple[str, bool, str]] = []


def check(name: str, ok: bool, detail: str = "", fix: str = "") -> bool:
    RESULTS.append((name, ok, detail))
    mark = "PASS" if ok else "FAIL"
    print(f"[{mark}] {name}" + (f": {detail}" if detail else ""))
    if not ok and fix:
        print(f"       fix: {fix}")
    return ok


def version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def main() -> int:
    print(f"Python {sys.version.split()[0]} on {sys.platform}")
    required = True
    torch_version = version("torch")
    required &= check("torch installed", torch_version is not None, torch_version or "missing",
                      "install the PyTorch build for your GPU from https://pytorch.org")
    if torch_version is None:
        return 1
    import torch

    from sa2va.compat import MIN_TRANSFORMERS_TEXT, TRANSFORMERS_REQUIREMENT, transformers_problem

    tf = version("transformers")
    problem = transformers_problem()
    required &= check(f"transformers >= {MIN_TRANSFORMERS_TEXT}", problem is None, tf or "missing",
                      f"pip install -U '{TRANSFORMERS_REQUIREMENT}'")
    for module, pip_name in (("safetensors", "safetensors"), ("PIL", "pillow"), ("numpy", "numpy"),
                             ("accelerate", "accelerate"), ("tqdm", "tqdm")):
        try:
            importlib.import_module(module)
            required &= check(f"import {module}", True, version(pip_name) or "")
        except ImportError as exc:
            required &= check(f"import {module}", False, str(exc), f"pip install {pip_name}")
    if torch.cuda.is_available():
        from sa2va.model import default_dtype

        for index in range(torch.cuda.device_count()):
            name = torch.cuda.get_device_name(index)
            major, minor = torch.cuda.get_device_capability(index)
            auto = {torch.bfloat16: "bf16", torch.float16: "fp16"}[default_dtype(f"cuda:{index}")]
            check(f"CUDA GPU cuda:{index}", True, f"{name}, compute capability {major}.{minor}, dtype auto = {auto}"
                  + ("" if auto == "bf16" else " (no native bf16 before compute capability 8.0)"))
    else:
        check("CUDA GPU", True, "none found: models run on the CPU (slow; fine for testing)")
    try:
        import bitsandbytes  # noqa: F401

        check("bitsandbytes (8-bit / 4-bit)", True, version("bitsandbytes") or "")
    except ImportError as exc:
        check("bitsandbytes (8-bit / 4-bit)", False, f"optional, not usable: {exc}",
              "pip install 'bitsandbytes>=0.45'  (only needed for quantization)")

    if not required:
        print("\nSome required checks failed; fix them and run this again.")
        return 1
    import numpy as np

    import sa2va
    from sa2va import testing as synthetic

    with tempfile.TemporaryDirectory() as tmp:
        start = time.time()
        folder = synthetic.write_checkpoint(Path(tmp) / "tiny", "qwen3_vl")
        model = sa2va.load_model(folder, dtype=torch.float32)
        image = (np.random.RandomState(0).rand(120, 160, 3) * 255).astype(np.uint8)
        pred = model.predict(image, "Please segment the person.", max_new_tokens=16)
        ok = pred.masks.shape == (1, 120, 160) and pred.raw_text == "Sure, it is[SEG].<|im_end|>"
        required &= check("tiny Sa2VA checkpoint: load + predict", ok,
                          f"{pred.masks.shape[0]} mask(s), {time.time() - start:.1f}s",
                          "reinstall the requirements; report the output of this script if it persists")
    print("\nAll required checks passed." if required else "\nSome required checks failed.")
    return 0 if required else 1


if __name__ == "__main__":
    sys.exit(main())
