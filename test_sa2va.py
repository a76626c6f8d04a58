"""Installation check for ComfyUI-Sa2VA: run ``python test_sa2va.py`` from the pack folder.

The same as ``python -m sa2va doctor`` (``sa2va/doctor.py``): Python and the library versions against the pack's
minimums, CUDA and each GPU's bf16 support, whether bitsandbytes works, then one real prediction on a tiny random
Sa2VA checkpoint in the release format (no download). One line per check, with the fix for each failure; exit code
0 when every required check passes. ``--quick`` skips the prediction, ``--device cuda`` runs it on the GPU.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sa2va.__main__ import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["doctor", *sys.argv[1:]]))
