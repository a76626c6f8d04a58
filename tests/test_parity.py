"""Parity with ByteDance's own inference code.

The reference outputs in tests/data/parity/<family>/ were produced by the upstream Sa2VA HF code
(bytedance/Sa2VA @ 9832e1a, ``predict_forward``) under transformers 4.57.0 on CPU in fp32, from the checkpoint that
``sa2va.synthetic.write_checkpoint(family, sam2="full", seed=0)`` writes: full-size SAM2 Hiera-L (1024 px), a tiny
language model. The checkpoint (~0.9 GB) is rebuilt here byte for byte (its shard hashes are recorded) and run
through our native pipeline with the same forced decoding schedule.

Expected: identical token ids, identical [SEG] hidden states and projections up to float rounding, mask
probabilities within 1e-4 of the upstream sigmoid(logits), and zero differing pixels after the 0.5 threshold.
"""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sa2va
from sa2va.synthetic import ForceTokens

DATA = Path(__file__).parent / "data" / "parity"
FAMILIES = sorted(p.name for p in DATA.iterdir() if (p / "reference.json").is_file()) if DATA.is_dir() else []


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**22), b""):
            digest.update(block)
    return digest.hexdigest()


@pytest.fixture(scope="module", params=FAMILIES)
def parity_case(request, checkpoint_factory):
    family = request.param
    meta = json.loads((DATA / family / "checkpoint.json").read_text())
    folder = checkpoint_factory(family, **meta["write_checkpoint"])
    hashes = {p.name: _sha256(p) for p in sorted(folder.glob("*.safetensors"))}
    assert hashes == meta["shard_sha256"], (
        "the synthetic checkpoint no longer reproduces the bytes the reference was made from; regenerate the "
        "reference with the upstream code (see tests/data/parity/README.md)")
    model = sa2va.load_model(folder, dtype=torch.float32, attn_implementation="eager")
    return family, model, json.loads((DATA / family / "reference.json").read_text())


def test_matches_upstream_predict_forward(parity_case):
    family, model, reference = parity_case
    assert reference["transformers_version"] == "4.57.0"
    for case in reference["cases"]:
        ref = np.load(DATA / family / f"{case['name']}.npz")
        image = Image.open(DATA / family / case["input_png"]).convert("RGB")
        inputs = model.adapter.build_inputs(model.processor, [image], case["prompt"].replace("<image>", ""))
        assert inputs["input_ids"].shape[1] == case["prompt_len"]
        assert inputs["image_grid_thw"].tolist() == ref["image_grid_thw"].tolist()
        captured = {}
        original = model._masks

        def spy(images, states):
            captured["states"] = torch.stack(states).clone()
            return original(images, states)

        model._masks = spy
        try:
            pred = model.predict(image, case["prompt"],
                                 logits_processor=[ForceTokens(case["prompt_len"], case["forced_token_ids"])])
        finally:
            del model._masks
        assert pred.token_ids.tolist() == ref["generated_ids"].tolist()
        assert pred.raw_text == case["prediction"]
        assert torch.allclose(captured["states"], torch.from_numpy(ref["seg_hidden"]), atol=1e-5)
        with torch.inference_mode():
            embedding = model.projection(captured["states"])
        assert torch.allclose(embedding, torch.from_numpy(ref["seg_embedding"]), atol=1e-5)
        probabilities = torch.from_numpy(ref["mask_logits"]).float().sigmoid()[:, 0]
        assert pred.masks.shape == probabilities.shape
        difference = (pred.masks - probabilities).abs().max().item()
        assert difference < 1e-4, f"{family}/{case['name']}: max probability difference {difference:.2e}"
        flipped = int(((pred.masks > 0.5) != torch.from_numpy(ref["masks"][:, 0])).sum())
        assert flipped == 0, f"{family}/{case['name']}: {flipped} mask pixels differ from upstream"
