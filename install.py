"""Install check run by ComfyUI-Manager after it installs requirements.txt.

It installs nothing itself (the pack never runs pip at runtime): it checks that torch is present and that the
installed transformers is new enough, and says what to do otherwise.
"""
import importlib.metadata as metadata
import importlib.util
import logging
import sys
from pathlib import Path


def _load_compat():
    """sa2va/compat.py alone (it imports only the standard library), without the sa2va package, which needs torch:
    the one place that knows the oldest supported transformers."""
    spec = importlib.util.spec_from_file_location("sa2va_compat", Path(__file__).resolve().parent / "sa2va" /
                                                  "compat.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


transformers_problem = _load_compat().transformers_problem

logging.basicConfig(level=logging.INFO, format="[ComfyUI-Sa2VA] %(message)s")
log = logging.getLogger("ComfyUI-Sa2VA")


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def main() -> int:
    ok = True
    if _version("torch") is None:
        log.error("torch is not installed. Install the PyTorch build for your GPU first (https://pytorch.org); "
                  "this pack never installs or replaces torch.")
        ok = False
    problem = transformers_problem()
    if problem:
        log.error("%s", problem)
        ok = False
    if _version("bitsandbytes") is None:
        log.info("bitsandbytes is not installed: optional, only for 8-bit / 4-bit quantization "
                 "(pip install 'bitsandbytes>=0.45')")
    if ok:
        log.info("requirements look fine (torch %s, transformers %s)", _version("torch"), _version("transformers"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
