"""Install check run by ComfyUI-Manager after it installs requirements.txt.

It installs nothing itself (the pack never runs pip at runtime): it checks that torch is present and that the
installed transformers is new enough, and says what to do otherwise.
"""
import importlib.metadata as metadata
import logging
import sys

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
    transformers = _version("transformers")
    if transformers is None or int(transformers.split(".")[0]) < 5:
        log.error("transformers %s found; Sa2VA needs transformers>=5.0: pip install -U 'transformers>=5.0'",
                  transformers)
        ok = False
    if ok:
        log.info("requirements look fine (torch %s, transformers %s)", _version("torch"), transformers)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
