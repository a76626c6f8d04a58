"""Install check run by ComfyUI-Manager after it installs requirements.txt.

It installs nothing itself (the pack never runs pip at runtime): it checks Python and the installed versions against
the pack's minimums (``sa2va/compat.py``, the one table of them) with the first checks of ``python -m sa2va
doctor``, and says what to do otherwise. The full check (GPUs, bitsandbytes, a real prediction) is
``python -m sa2va doctor`` or ``python test_sa2va.py``.
"""
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sa2va.compat import installed_version  # noqa: E402
from sa2va.doctor import check_packages, check_python, exit_code  # noqa: E402

logging.basicConfig(level=logging.INFO, format="[ComfyUI-Sa2VA] %(message)s")
log = logging.getLogger("ComfyUI-Sa2VA")


def main() -> int:
    """Log every failed version check with its fix; 0 when every required one passed."""
    checks = [check_python(), *check_packages()]
    for check in checks:
        if not check.ok:
            log.log(logging.ERROR if check.required else logging.WARNING, "%s: %s. Fix: %s", check.name,
                    check.detail, check.fix)
    code = exit_code(checks)
    if code == 0:
        log.info("requirements look fine (%s); run python -m sa2va doctor in the pack folder for the full check",
                 ", ".join(f"{name} {installed_version(name)}" for name in ("torch", "transformers")))
    return code


if __name__ == "__main__":
    sys.exit(main())
