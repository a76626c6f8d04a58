"""Parity with ByteDance's own inference code.

The reference outputs in tests/data/parity/<folder>/ were produced by the upstream Sa2VA HF code
(bytedance/Sa2VA @ 9832e1a, ``predict_forward``) under transformers 4.57 on CPU in fp32, from the checkpoint that
``sa2va.testing.write_checkpoint`` writes with the folder's checkpoint.json arguments: SAM2 at the releases' 1024 px
and a tiny language model. The ``qwen3_vl`` (and ``qwen2_5_vl``) image cases have the releases' Hiera-L trunk (~0.9
GB); the clips (``qwen3_vl_clip``, ``llava``) and the LLaVA and InternVL formats have SAM2's Hiera-T trunk, the same
neck, memory and decoder at a ninth of the encoder work (tests/data/parity/README.md, "The SAM2 trunk"). Each
checkpoint is rebuilt here byte for byte (its shard hashes are recorded) and run through our native pipeline with
the same decoding control: the Qwen
cases force every generated token; the InternVL cases force the tokens of a schedule and leave the other steps to
greedy decoding over the trained BPE ids, so equal ids also show equal argmaxes (and the raw logits are compared).
The InternVL cases cover a 1-tile image, a 13-tile image (12 tiles + thumbnail) and a region prompt made through
upstream's ``mask_prompts`` path; ``internvl_phi3`` (Sa2VA-4B's format: the ``phi3_chat`` template, whose answer
ends in the text ``<|end|>`` and stops on it) and ``internvl_single_file`` (Sa2VA-1B's format: one
``model.safetensors``, no index) are the InternVL2.5 releases' formats, and ``internvl_internlm2`` (Sa2VA-8B's:
InternLM2 with its grouped wqkv, the SentencePiece tokenizer and its BOS, ``internlm2_chat``) and
``internvl_internvit6b`` (the same with Sa2VA-26B's InternViT-6B switches; 13 tiles and a region prompt) were made
under transformers 4.49.0, the last version upstream's InternLM2 code generates under. ``llava`` was made with the
LLaVA release's own ``predict_forward`` (not in bytedance/Sa2VA; see tests/data/parity/README.md), with the same
schedule rule. ``qwen3_vl_sam3`` is Sa2VA-Qwen3-VL-4B-SAM3's format (SAM 3's tracker at 1008 px with a 2-layer,
256-wide ViT; ``write_checkpoint(grounding="sam3")``): the same ``predict_forward`` with the SAM3 release's grounding
encoder rebuilt on facebookresearch/sam3's tracker (tests/data/parity/README.md); it needs transformers 5.x
(``Sam3TrackerVideoModel``) on our side and is skipped under 4.57. ``qwen3_vl``'s ``image_object_absent`` and
``qwen3_vl_clip``'s ``video_absent`` shift the [SEG] projection's output (``shifted_projection``) so that
upstream's object scores are
negative, which compares SAM2's absent-object path (no clamp in Sa2VA's masks, the "no object" pointer that the
tracked frame reads from the conditioning frames; SAM2 v1 has no occlusion embedding) on the pictures and frames the
other cases already encode. ``qwen3_vl_sam3``'s ``image_object_absent`` and ``video_absent`` do the same for SAM 3,
whose absent-object path differs: its masks are clamped (an empty mask, on the image and on the 5 conditioning
frames) and a conditioning frame's memory carries the occlusion embedding and the "no object" pointer, which the
tracked frame 5 reads (each of the three, disabled on our side, fails the video case).

Expected: identical prompt ids (every reference holds them; one without them fails) and token ids, identical [SEG] hidden states and projections up to float rounding,
mask probabilities within 1e-4 of the upstream sigmoid(logits), and not one pixel decided otherwise at the 0.5
threshold (``threshold_flips``, counted over every pixel) except where upstream puts the pixel within a tenth of that
tolerance of 0.5 (``check_masks``: it fails on a flip the probability bound allows, as
``test_check_masks_fails_on_a_mask_perturbed_within_the_tolerance`` shows).
"""
import hashlib
import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sa2va
from conftest import SharedEncodings
from sa2va.testing import ForceTokens

DATA = Path(__file__).parent / "data" / "parity"
#: qwen3_vl first: tests/test_memory.py leaves that very checkpoint in the session's checkpoint factory, which keeps
#: one full-size checkpoint at a time
FAMILIES = sorted((p.name for p in DATA.iterdir() if (p / "checkpoint.json").is_file()),
                  key=lambda name: (name != "qwen3_vl", name)) if DATA.is_dir() else []
#: the transformers version upstream's code ran under: 4.57.0 or 4.57.6 (the references regenerated on 2026-12-07;
#: their arrays came out bit for bit as under 4.57.0), or 4.49.0 for InternLM2 (Sa2VA-8B/26B's format), whose remote
#: code cannot generate under later versions
UPSTREAM_TRANSFORMERS = ("4.57.0", "4.57.6", "4.49.0")


class Schedule:
    """The reference's decoding control: the scheduled token at scheduled steps (counted from the prompt length),
    otherwise greedy over ids below ``free_limit``. Records the raw scores it receives."""

    def __init__(self, prompt_length: int, schedule: dict[int, int], free_limit: int) -> None:
        self.prompt_length, self.schedule, self.free_limit = prompt_length, schedule, free_limit
        self.raw: list[torch.Tensor] = []

    def __call__(self, input_ids, scores):
        self.raw.append(scores[0].detach().clone())
        step = input_ids.shape[1] - self.prompt_length
        out = torch.full_like(scores, float("-inf"))
        if step in self.schedule:
            out[:, self.schedule[step]] = 0
        else:
            out[:, :self.free_limit] = scores[:, :self.free_limit]
        return out


#: probabilities are compared to upstream within this tolerance
TOLERANCE = 1e-4


# The clips keep TOLERANCE on every frame, under every kernel set. Measured (issue 27, x86 with AVX2 as its best
# kernels, 2026-12-08): each clip run in full (check_video's computation) once under ATEN_CPU_CAPABILITY=default and
# once under avx2; max |p_ours - p_upstream| per frame stayed within 4.6e-6 (llava video, frames 0-6: default
# 1.2e-6 1.3e-6 1.4e-6 1.2e-6 1.1e-6 2.7e-6 3.1e-6, avx2 1.5e-6 1.1e-6 1.6e-6 1.3e-6 1.4e-6 4.6e-6 3.6e-6;
# qwen3_vl_clip video and video_absent within 4.2e-6 under both), and the spread between the two kernel sets,
# max |p_default - p_avx2|, within 5.2e-6 on every frame of the three clips. (With SAM2's Hiera-L trunk, before the
# clips moved to Hiera-T, the llava clip's frame 6 came to 1.18e-4 under default kernels and needed its own bound.)

#: a pixel may be decided otherwise than upstream at 0.5 only where upstream puts it within this fraction of the
#: probability bound from 0.5: the measured differences are ~1e-6 on most pixels (one such flip in qwen3_vl_sam3's
#: image_two_seg), far below the bound, which only a few pixels come near
FLIP_BAND = 0.1


def threshold_flips(ours: torch.Tensor, upstream_mask: torch.Tensor) -> torch.Tensor:
    """The pixels whose decision at the threshold (p > 0.5) differs from upstream's mask, counted directly over every
    pixel (a bool tensor)."""
    return (ours > 0.5) != upstream_mask


def check_masks(ours: torch.Tensor, upstream_p: torch.Tensor, upstream_mask: torch.Tensor, tolerance: float,
                where: str) -> None:
    """Probabilities within ``tolerance`` of upstream's, and no pixel decided otherwise at 0.5 unless upstream puts
    it within ``FLIP_BAND * tolerance`` of 0.5: a pixel pushed across the threshold fails even when its probability
    stays within the tolerance."""
    difference = (ours - upstream_p).abs().max().item()
    assert difference < tolerance, f"{where}: max probability difference {difference:.2e} (bound {tolerance:.1e})"
    flipped = threshold_flips(ours, upstream_mask)
    stray = int((flipped & ((upstream_p - 0.5).abs() > FLIP_BAND * tolerance)).sum())
    assert stray == 0, (f"{where}: {stray} mask pixels decided otherwise than upstream at 0.5 ({int(flipped.sum())} "
                        f"in all, the others within {FLIP_BAND * tolerance:.0e} of it)")


def test_check_masks_fails_on_a_mask_perturbed_within_the_tolerance():
    """The check of the checks: the reference passes against itself; moving one pixel across 0.5 by less than the
    tolerance fails (on the flip count), and moving one far from 0.5 by twice the tolerance fails (on the bound)."""
    ref = np.load(DATA / "qwen3_vl" / "image_single_seg.npz")
    upstream_p = torch.from_numpy(ref["mask_logits"]).float().sigmoid()[:, 0]
    upstream_mask = torch.from_numpy(ref["masks"][:, 0])
    check_masks(upstream_p.clone(), upstream_p, upstream_mask, TOLERANCE, "itself")
    distance = (upstream_p - 0.5).abs().flatten()
    pixel = int(torch.nonzero((distance > 0.2 * TOLERANCE) & (distance < 0.4 * TOLERANCE))[0])
    crossed = upstream_p.clone().flatten()
    crossed[pixel] = 1 - crossed[pixel]  # the mirror image across 0.5: moved by less than the tolerance
    assert abs(float(crossed[pixel] - upstream_p.flatten()[pixel])) < TOLERANCE
    with pytest.raises(AssertionError, match="1 mask pixels decided otherwise"):
        check_masks(crossed.view_as(upstream_p), upstream_p, upstream_mask, TOLERANCE, "crossed")
    farthest = int(distance.argmax())
    shifted = upstream_p.clone().flatten()
    shifted[farthest] += 2 * TOLERANCE if shifted[farthest] < 0.5 else -2 * TOLERANCE
    with pytest.raises(AssertionError, match="max probability difference"):
        check_masks(shifted.view_as(upstream_p), upstream_p, upstream_mask, TOLERANCE, "shifted")


@contextmanager
def shifted_projection(model, case: dict):
    """The reference's ``seg_embedding_shift``, if the case names one: the [SEG] projection's output plus that
    float32 vector (what upstream's ``text_hidden_fcs`` gave with the same forward hook; the same as a projection whose
    last bias differs by it). It is how the cases whose object scores are negative were made from the checkpoint and
    pictures the other cases use, so no new weights and no new encoder pass are needed."""
    shift = case.get("seg_embedding_shift")
    if shift is None:
        yield
        return
    vector = torch.tensor(shift, dtype=torch.float32)
    assert vector.shape == (256,)
    handle = model.projection.register_forward_hook(lambda module, inputs, output: output + vector.to(output))
    try:
        yield
    finally:
        handle.remove()


def check_object_absent(case: dict, count: int, where: str) -> None:
    """A shifted case exists to compare what SAM2 does with an absent object (no object-score clamp in Sa2VA's
    masks, the "no object" pointer in the memory): the first ``count`` object scores upstream recorded must be
    negative, or the case has silently become a positive one."""
    if "seg_embedding_shift" not in case:
        return
    scores = case["object_scores_in_call_order"][:count]
    assert len(scores) == count and max(scores) < 0, f"{where}: upstream's object scores {scores}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**22), b""):
            digest.update(block)
    return digest.hexdigest()


@pytest.fixture(scope="module", autouse=True)
def reuse_sam2_weights():
    """The checkpoint writers draw the full-size SAM2 (224M values, ~10 s on 2 cores) for every family's checkpoint;
    its values depend on the seed only, so this module keeps the last one drawn and hands the writers the same
    tensors (they copy or cast, never change them in place; the shard hashes each case checks would show it)."""
    from sa2va.testing import common, internvl, llava, qwen

    drawn: dict = {}

    def sam2_release_state(sam2_block, seed):
        key = (json.dumps(sam2_block, sort_keys=True), seed)
        if key not in drawn:
            drawn.clear()
            drawn[key] = common.sam2_release_state(sam2_block, seed)
        return dict(drawn[key])

    with pytest.MonkeyPatch.context() as patch:
        for writer in (qwen, internvl, llava):
            patch.setattr(writer, "sam2_release_state", sam2_release_state)
        yield
    drawn.clear()


@pytest.fixture(scope="module")
def shared_encodings():
    """The image encoder's outputs, shared by this module's models (conftest.SharedEncodings): the families' full-size
    SAM2 weights are equal where their bytes are (Qwen2.5-VL, Qwen3-VL, LLaVA and the InternLM2 formats in fp32;
    the InternVL2.5 formats in bf16) and several references use the same pictures and frames."""
    return SharedEncodings()


@pytest.fixture(scope="module", params=FAMILIES)
def parity_case(request, checkpoint_factory, shared_encodings):
    family = request.param  # the data folder; checkpoint.json names the family when the folder is not one
    meta = json.loads((DATA / family / "checkpoint.json").read_text())
    if meta["write_checkpoint"].get("grounding") == "sam3":
        import transformers

        if getattr(transformers, "Sam3TrackerVideoModel", None) is None:
            pytest.skip("SAM3 grounding needs transformers 5.x (Sam3TrackerVideoModel)")
    folder = checkpoint_factory(meta.get("family", family), **meta["write_checkpoint"])
    hashes = {p.name: _sha256(p) for p in sorted(folder.glob("*.safetensors"))}
    assert hashes == meta["shard_sha256"], (
        "the synthetic checkpoint no longer reproduces the bytes the reference was made from; regenerate the "
        "reference with the upstream code (see tests/data/parity/README.md)")
    model = sa2va.load_model(folder, dtype=torch.float32, attn_implementation="eager")
    shared_encodings.attach(model)
    images = DATA / family / "reference.json"  # a folder may hold clips only (qwen3_vl_clip)
    return family, model, json.loads(images.read_text()) if images.is_file() else None


def test_matches_upstream_predict_forward(parity_case):
    family, model, reference = parity_case
    if reference is None:
        pytest.skip(f"no image reference for {family}")
    assert reference["transformers_version"] in UPSTREAM_TRANSFORMERS
    for case in reference["cases"]:
        ref = np.load(DATA / family / f"{case['name']}.npz")
        image = Image.open(DATA / family / case["input_png"]).convert("RGB")
        regions = [np.array(Image.open(DATA / family / p)) != 0 for p in case.get("region_pngs", [])] or None
        inputs = model.adapter.build_inputs(model.processor, [image], case["prompt"].replace("<image>", ""),
                                            regions=regions)
        assert inputs["input_ids"].shape[1] == case["prompt_len"]
        if "image_grid_thw" in ref:
            assert inputs["image_grid_thw"].tolist() == ref["image_grid_thw"].tolist()
        assert "input_ids" in ref, f"{family}/{case['name']}: the reference holds no prompt ids; regenerate it"
        assert inputs["input_ids"][0].tolist() == ref["input_ids"].tolist()
        if "pixel_values_sha256" in case:
            from sa2va.families.internvl import tile_image, tile_pixels

            pixels = tile_pixels(tile_image(image))
            assert list(pixels.shape) == case["pixel_values_shape"]
            assert hashlib.sha256(pixels.numpy().tobytes()).hexdigest() == case["pixel_values_sha256"]
        if "clip_pixels_sha256" in case:  # LLaVA: one 336-px squash per image
            pixels = inputs["pixel_values"]
            assert list(pixels.shape) == case["pixel_values_shape"]
            assert hashlib.sha256(pixels.numpy().tobytes()).hexdigest() == case["clip_pixels_sha256"]
        check_object_absent(case, len(ref["seg_hidden"]), f"{family}/{case['name']}")
        if "schedule" in case:
            processor = Schedule(case["prompt_len"], {int(k): v for k, v in case["schedule"].items()},
                                 reference["free_vocab_limit"])
        else:
            processor = ForceTokens(case["prompt_len"], case["forced_token_ids"])
        answer = model.answer([image], case["prompt"], logits_processor=[processor], regions=regions)
        assert answer.token_ids.tolist() == ref["generated_ids"].tolist()
        assert answer.raw_text == case["prediction"]
        if "raw_logits" in ref:
            logits = torch.stack(processor.raw)
            assert logits.shape == ref["raw_logits"].shape
            assert torch.allclose(logits, torch.from_numpy(ref["raw_logits"]), atol=1e-4)
        states = torch.stack(answer.seg_states)
        with shifted_projection(model, case), torch.inference_mode():
            masks = model.masks_for(image, answer.seg_states)
            embedding = model.seg_embeddings(answer.seg_states)
        assert torch.allclose(states, torch.from_numpy(ref["seg_hidden"]), atol=1e-5)
        assert torch.allclose(embedding, torch.from_numpy(ref["seg_embedding"]), atol=1e-5)
        probabilities = torch.from_numpy(ref["mask_logits"]).float().sigmoid()[:, 0]
        assert masks.shape == probabilities.shape
        check_masks(masks, probabilities, torch.from_numpy(ref["masks"][:, 0]), TOLERANCE, f"{family}/{case['name']}")


def test_video_matches_upstream_predict_forward(parity_case):
    """predict_video (memory mode, the reference's 5 key frames) against upstream ``predict_forward(video=...)``:
    7 frames of 320x240 with a moving disc, frames 0-4 conditioning frames, 5-6 tracked with SAM2's memory."""
    family, model, _ = parity_case
    paths = sorted((DATA / family).glob("video*.json"))
    if not paths:
        pytest.skip(f"no video reference for {family}")
    for path in paths:
        check_video(family, model, path)


def check_video(family: str, model, path: Path) -> None:
    """One clip reference (``video.json``, or ``video_absent.json`` whose [SEG] projection is shifted so that the
    object scores are negative) against our predict_video."""
    reference = json.loads(path.read_text())
    case = reference["case"]
    assert reference["transformers_version"] in ("4.57.0", "4.57.6")
    ref = np.load(path.with_suffix(".npz"))
    frames = [np.array(Image.open(DATA / family / p).convert("RGB")) for p in case["input_pngs"]]
    assert len(frames) == case["num_frames"] >= 6
    check_object_absent(case, len(case["conditioning_frames"]) * len(ref["seg_hidden"]), f"{family}/{path.stem}")
    keys = [Image.fromarray(f) for f in frames[:5]]
    inputs = model.adapter.build_inputs(model.processor, keys, case["prompt"].replace("<image>", ""))
    assert inputs["input_ids"][0].tolist() == ref["input_ids"].tolist()
    if "image_grid_thw" in ref:
        assert inputs["image_grid_thw"].tolist() == ref["image_grid_thw"].tolist()
    answers = []
    answer = model.answer

    def spy(*args, **kwargs):
        answers.append(answer(*args, **kwargs))
        return answers[-1]

    model.answer = spy  # records what predict_video's public seam returned
    try:
        with shifted_projection(model, case):
            video = model.predict_video(frames, case["prompt"], logits_processor=[
                ForceTokens(case["prompt_len"], case["forced_token_ids"])])
    finally:
        del model.answer
    assert len(answers) == 1
    assert video.token_ids.tolist() == ref["generated_ids"].tolist()
    assert video.raw_text == case["prediction"]
    assert video.key_frames == case["conditioning_frames"]
    assert torch.allclose(torch.stack(answers[0].seg_states), torch.from_numpy(ref["seg_hidden"]), atol=1e-5)
    with shifted_projection(model, case), torch.inference_mode():
        embedding = model.seg_embeddings(answers[0].seg_states)
    assert torch.allclose(embedding, torch.from_numpy(ref["seg_embedding"]), atol=1e-5)
    probabilities = torch.from_numpy(ref["mask_logits"]).float().sigmoid()       # [K, T, h, w]
    assert video.masks.shape == probabilities.shape
    upstream_masks = torch.from_numpy(ref["masks"])
    for t in range(video.masks.shape[1]):
        check_masks(video.masks[:, t], probabilities[:, t], upstream_masks[:, t], TOLERANCE,
                    f"{family}/{path.stem} frame {t}")
