"""Installation check: ``python -m sa2va doctor`` (also ``python test_sa2va.py`` in the pack folder).

:func:`run_checks` returns one :class:`Check` per fact: Python and every distribution of
:data:`sa2va.compat.REQUIREMENTS` against its minimum version, CUDA and each GPU (name, compute capability, native
bf16), whether bitsandbytes imports and quantizes, and one real prediction on a tiny synthetic model written to a
temporary folder (no download). Each failed check carries the fix. Nothing here prints; the CLI formats the results
with :func:`format_check` and exits with :func:`exit_code`.

torch and transformers are imported only by the checks that need them, so a missing or broken install is reported
as a failed check instead of an import error.
"""
from __future__ import annotations

import importlib
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .compat import MIN_PYTHON, REQUIREMENTS, at_least, installed_version, transformers_problem
from .errors import Sa2VAError

logger = logging.getLogger(__name__)

#: the answer the tiny synthetic model gives (its weights are biased to say it), and the image it segments
TINY_ANSWER = "Sure, it is[SEG].<|im_end|>"
TINY_IMAGE_SIZE = (120, 160)
#: native bf16 tensor cores from this compute capability on (Ampere)
BF16_CAPABILITY = (8, 0)
PYTORCH_URL = "https://pytorch.org/get-started/locally/"


@dataclass(frozen=True)
class Check:
    """One result. ok: the check passed; required: a failure makes the installation unusable (otherwise only an
    optional feature, or speed, is affected); detail: what was found; fix: what to do when it failed."""

    name: str
    ok: bool
    detail: str = ""
    fix: str = ""
    required: bool = True

    @property
    def status(self) -> str:
        """PASS, FAIL (a required check failed) or WARN (an optional one failed)."""
        if self.ok:
            return "PASS"
        return "FAIL" if self.required else "WARN"


def check_python() -> Check:
    """The running Python against :data:`sa2va.compat.MIN_PYTHON`."""
    version = ".".join(str(v) for v in sys.version_info[:3])
    need = ".".join(str(v) for v in MIN_PYTHON)
    return Check(f"Python >= {need}", sys.version_info[:2] >= MIN_PYTHON, f"{version} on {sys.platform}",
                 f"use Python {need} or newer (ComfyUI's embedded Python qualifies)")


def check_packages() -> list[Check]:
    """Every distribution of :data:`sa2va.compat.REQUIREMENTS`: installed, and at least its minimum version."""
    out = []
    for req in REQUIREMENTS:
        version = installed_version(req.name)
        name = f"{req.name} >= {req.minimum}"
        purpose = "" if req.required else f" (optional: {req.purpose})"
        if req.name == "torch":
            fix = (f"install the PyTorch build for your GPU from {PYTORCH_URL} into this Python; requirements.txt "
                   f"never installs torch")
        else:
            fix = f"pip install -U '{req.name}>={req.minimum}'"
        if version is None:
            out.append(Check(name, False, "not installed" + purpose, fix, req.required))
        else:
            ok = at_least(version, req.minimum)
            out.append(Check(name, ok, version + ("" if ok else " is too old") + purpose, fix, req.required))
    return out


def _torch():
    """torch, or None when it cannot be imported."""
    try:
        return importlib.import_module("torch")
    except ImportError as exc:
        logger.debug("torch does not import: %s", exc)
        return None


def resolve_device(name: str = "auto") -> str:
    """The device a command runs on: ``auto`` is CUDA when torch sees a GPU, else the CPU (also when torch does not
    import: the checks then say why); any other name is returned as given."""
    if name != "auto":
        return name
    torch = _torch()
    return "cuda" if torch is not None and torch.cuda.is_available() else "cpu"


def device_line(name: str, resolved: str) -> str:
    """The first line the CLI prints: the device it runs on, and why when it was chosen."""
    return f"device: {resolved}" + (" (auto: " + ("a CUDA GPU is available)" if resolved == "cuda" else
                                                  "no CUDA GPU available)") if name == "auto" else "")


def check_cuda() -> list[Check]:
    """CUDA availability, then one check per GPU: name, compute capability and native bf16 (capability >= 8.0)."""
    torch = _torch()
    if torch is None:
        return [Check("CUDA", False, "skipped: torch does not import", "fix the torch check first", required=False)]
    if not torch.cuda.is_available():
        build = torch.version.cuda
        if build:
            detail = f"torch {torch.__version__} is a CUDA {build} build but sees no GPU"
            fix = "with an NVIDIA GPU: check that nvidia-smi lists it, the driver supports CUDA " + \
                f"{build}, and CUDA_VISIBLE_DEVICES does not hide it"
        else:
            detail = f"torch {torch.__version__} is a CPU build"
            fix = f"with an NVIDIA GPU: install a CUDA build of PyTorch ({PYTORCH_URL}) into this Python"
        return [Check("CUDA", False, detail + ": models run on the CPU (slow; fine for testing)", fix,
                      required=False)]
    count = torch.cuda.device_count()
    out = [Check("CUDA", True, f"CUDA {torch.version.cuda}, {count} GPU(s)", required=False)]
    for index in range(count):
        capability = tuple(torch.cuda.get_device_capability(index))
        bf16 = capability >= BF16_CAPABILITY
        detail = (f"{torch.cuda.get_device_name(index)}, compute capability {capability[0]}.{capability[1]}, "
                  f"native bf16 {'yes' if bf16 else 'no'}")
        out.append(Check(f"GPU cuda:{index}", bf16, detail,
                         "this GPU has no native bf16: dtype auto uses fp16 on it (bf16 would be emulated, slowly)",
                         required=False))
    return out


def check_bitsandbytes() -> Check:
    """bitsandbytes imports and round-trips a tensor through 4-bit NF4 (on the first GPU, else on the CPU)."""
    name = "bitsandbytes quantization"
    fix = "pip install -U 'bitsandbytes>=0.45' (only needed for quantization 8bit / 4bit)"
    torch = _torch()
    if torch is None:
        return Check(name, False, "skipped: torch does not import", "fix the torch check first", required=False)
    try:
        functional = importlib.import_module("bitsandbytes.functional")
    except ImportError as exc:
        return Check(name, False, f"does not import: {exc}", fix, required=False)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    values = torch.linspace(-1.0, 1.0, 4096, device=device).reshape(64, 64)
    try:
        packed, state = functional.quantize_4bit(values, quant_type="nf4")
        error = (functional.dequantize_4bit(packed, state) - values).abs().max().item()
    except (RuntimeError, NotImplementedError, AttributeError, OSError) as exc:
        return Check(name, False, f"imports, but 4-bit quantization on {device} fails: {exc}", fix, required=False)
    ok = error < 0.15
    return Check(name, ok, f"{installed_version('bitsandbytes')}, NF4 round trip on {device}: max error {error:.3f}",
                 fix, required=False)


def check_prediction(device: str = "cpu") -> Check:
    """Write a tiny synthetic Sa2VA checkpoint to a temporary folder, load it and run one real prediction."""
    name = "tiny model: load + predict"
    fix = "reinstall the requirements; if it persists, report the output of python -m sa2va doctor"
    torch = _torch()
    if torch is None or transformers_problem():
        return Check(name, False, "skipped: torch or transformers is missing or too old", "fix the checks above first")
    try:
        import numpy as np

        from . import testing
        from .loading import load_model

        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="sa2va-doctor-") as tmp:
            folder = testing.write_checkpoint(Path(tmp) / "tiny", "qwen3_vl")
            model = load_model(folder, device=device, dtype=torch.float32)
            height, width = TINY_IMAGE_SIZE
            image = (np.random.RandomState(0).rand(height, width, 3) * 255).astype(np.uint8)
            pred = model.predict(image, "Please segment the person.", max_new_tokens=16)
    except (Sa2VAError, ImportError, RuntimeError, OSError) as exc:
        return Check(name, False, f"{type(exc).__name__}: {exc}", fix)
    masks = pred.masks
    problems = []
    if pred.raw_text != TINY_ANSWER:
        problems.append(f"answer {pred.raw_text!r}, expected {TINY_ANSWER!r}")
    if tuple(masks.shape) != (1, *TINY_IMAGE_SIZE):
        problems.append(f"masks {tuple(masks.shape)}, expected {(1, *TINY_IMAGE_SIZE)}")
    elif not bool(torch.isfinite(masks).all()) or masks.min() < 0 or masks.max() > 1:
        problems.append("mask values outside 0..1")
    detail = "; ".join(problems) or \
        f"{masks.shape[0]} mask(s) on {device} in {time.perf_counter() - start:.1f} s"
    return Check(name, not problems, detail, fix)


def run_checks(predict: bool = True, device: str = "cpu",
               report: Callable[[Check], None] | None = None) -> list[Check]:
    """Every check in order; ``report`` (e.g. a printer) is called with each result as soon as it is known.
    predict=False skips the tiny model (seconds instead of a minute on a slow CPU)."""
    checks: list[Check] = []

    def add(*found: Check) -> None:
        for check in found:
            checks.append(check)
            if report is not None:
                report(check)

    add(check_python())
    add(*check_packages())
    add(*check_cuda())
    add(check_bitsandbytes())
    if predict:
        add(check_prediction(device))
    return checks


def format_check(check: Check) -> str:
    """``[PASS] name: detail`` or ``[FAIL] name: detail -- fix: ...`` (one line)."""
    line = f"[{check.status}] {check.name}" + (f": {check.detail}" if check.detail else "")
    if not check.ok and check.fix:
        line += f" -- fix: {check.fix}"
    return line


def exit_code(checks: list[Check]) -> int:
    """0 when every required check passed, else 1."""
    return 1 if any(c.required and not c.ok for c in checks) else 0
