"""Loading casts tensor by tensor: an fp32 release loaded as bf16 never holds a second full copy.

Peak anonymous memory (RssAnon: memory-mapped shard pages do not count) is sampled in a fresh process while the
full-size-SAM2 checkpoint (0.86 GiB of fp32) loads as bf16, and compared with the bytes the loaded model keeps."""
import json
import subprocess
import sys

from conftest import ROOT

SCRIPT = r"""
import json, sys, threading, time, torch
sys.path.insert(0, sys.argv[2])
import sa2va
from transformers import Sam2VideoModel, Qwen3VLForConditionalGeneration  # noqa: F401  (imports warmed up)

def anon():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon"):
                return int(line.split()[1]) * 1024

peak, done = [0], [False]
def sample():
    while not done[0]:
        peak[0] = max(peak[0], anon())
        time.sleep(0.001)
base = anon()
thread = threading.Thread(target=sample)
thread.start()
model = sa2va.load_model(sys.argv[1], dtype=torch.bfloat16)
done[0] = True
thread.join()
parts = (model.vlm, model.grounding.model, model.projection)
resident = sum(t.numel() * t.element_size() for p in parts for t in list(p.parameters()) + list(p.buffers()))
print(json.dumps({"resident": resident, "peak_growth": peak[0] - base}))
"""


def test_bf16_load_of_fp32_release_peaks_below_1_3x_resident(checkpoint_factory):
    meta = json.loads((ROOT / "tests/data/parity/qwen3_vl/checkpoint.json").read_text())
    folder = checkpoint_factory("qwen3_vl", **meta["write_checkpoint"])
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(folder), str(ROOT)], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    numbers = json.loads(result.stdout.strip().splitlines()[-1])
    stored = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    assert numbers["resident"] < 0.55 * stored  # it really is bf16 now
    assert numbers["peak_growth"] <= 1.3 * numbers["resident"], numbers
