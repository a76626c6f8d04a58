"""Video: predict_video on a tiny checkpoint (memory propagation, consistent mode, key frames, offload, progress and
cancel), the bounded memory bank against transformers' own SAM2 video helpers, and the video node's outputs."""
import numpy as np
import pytest
import torch
from PIL import Image

import sa2va
from conftest import ids
from nodetools import schema as node_schema
from nodetools import segment_video
from pack import pack_module
from sa2va.errors import Cancelled, InputError
from sa2va.grounding.sam2 import GroundingHead, sam2_config, sam2_pixels
from sa2va.grounding.memory import MemoryBank, encode_memory
from sa2va.testing import TINY_SAM2, ForceTokens
from sa2va.inputs import FrameSource
from sa2va.monitor import Monitor
from sa2va.requests import as_request
from sa2va.video import VideoOptions, key_frame_indices

HEIGHT, WIDTH = 48, 64


def clip(count: int, static: bool = False) -> list[np.ndarray]:
    """``count`` uint8 frames [48, 64, 3]: a grey background and a red box moving right (still when ``static``)."""
    frames = []
    for t in range(count):
        frame = np.full((HEIGHT, WIDTH, 3), 90, np.uint8)
        x = 4 if static else 4 + 4 * t
        frame[12:32, x:x + 20] = [220, 30, 30]
        frame[36:44, 40:60] = [30, 60, 200]
        frames.append(frame)
    return frames


@pytest.fixture(scope="module")
def model(model_factory):
    return model_factory("qwen3_vl")


ANSWER_TOKENS = 32


def forced(model, frames, answer: str, key_frames: int = 5, spacing: str = "first", progress=None, cancelled=None,
           **kwargs):
    """predict_video with decoding forced to ``answer`` (prompt length taken from the key frames' prompt).
    ``progress(done, total)`` sees the frames only (the monitor's units after the answer's ``ANSWER_TOKENS``)."""
    keys = key_frame_indices(len(frames), key_frames, spacing)
    inputs = model.prompt_inputs([frames[k] for k in keys], "Segment the boxes.")
    answer_ids = ids(model, answer) + [model.tokenizer.convert_tokens_to_ids("<|im_end|>")]
    processor = ForceTokens(inputs["input_ids"].shape[1], answer_ids)

    def frame_progress(done: int, total: int) -> None:
        if progress is not None and done > ANSWER_TOKENS:
            progress(done - ANSWER_TOKENS, total - ANSWER_TOKENS)

    return model.predict_video(frames, "<image>Segment the boxes.", max_new_tokens=ANSWER_TOKENS,
                               key_frames=key_frames, key_frame_spacing=spacing, logits_processor=[processor],
                               monitor=Monitor(frame_progress, cancelled), **kwargs)


def test_shapes_text_and_phrases(model):
    video = forced(model, clip(8), "<p>red box</p>[SEG] and <p>blue box</p>[SEG].")
    assert video.masks.shape == (2, 8, HEIGHT, WIDTH) and video.masks.dtype == torch.float32
    assert float(video.masks.min()) >= 0 and float(video.masks.max()) <= 1
    assert video.phrases == ["red box", "blue box"]
    assert video.key_frames == [0, 1, 2, 3, 4]
    assert video.raw_text.endswith("<|im_end|>") and "[SEG]" not in video.text
    assert isinstance(video, sa2va.VideoPrediction)


def test_no_seg_gives_no_tracks_and_finishes_progress(model):
    calls = []
    video = forced(model, clip(6), "It is a box.", progress=lambda done, total: calls.append((done, total)))
    assert video.masks.shape == (0, 6, HEIGHT, WIDTH) and video.text == "It is a box."
    assert calls[-1] == (6, 6)


def test_tracked_frames_come_from_memory_not_copies(model):
    """On a still clip every conditioning frame gives exactly frame 0's mask (same image, same prompt, no memory),
    while the tracked frames differ from it: their masks come from the memory attention."""
    video = forced(model, clip(8, static=True), "Sure, it is [SEG].")
    masks = video.masks[0]
    for t in range(1, 5):
        assert torch.equal(masks[t], masks[0])
    for t in range(5, 8):
        assert (masks[t] - masks[0]).abs().max() > 0.05, t
    # tracked frames attend to different memories, so they are not copies of each other either
    assert (masks[5] - masks[7]).abs().max() > 1e-4


def test_consistent_mode_equals_per_frame_image_decoding(model, monkeypatch):
    frames = clip(7)
    captured = {}
    original = model.answer

    def spy(*args, **kwargs):
        answer = original(*args, **kwargs)
        captured["states"] = [s.clone() for s in answer.seg_states]
        return answer

    monkeypatch.setattr(model, "answer", spy)
    consistent = forced(model, frames, "Sure, it is [SEG].", mode="consistent")
    memory = forced(model, frames, "Sure, it is [SEG].", mode="memory")
    monkeypatch.undo()
    with torch.inference_mode():
        per_frame = torch.stack([model.masks_for(f, captured["states"])[0] for f in frames])
    assert torch.allclose(consistent.masks[0], per_frame, atol=1e-6)
    # the key frames are decoded the same way in both modes; the others differ (memory vs none)
    assert torch.equal(consistent.masks[:, :5], memory.masks[:, :5])
    assert (consistent.masks[:, 5:] - memory.masks[:, 5:]).abs().max() > 0.05


def test_offload_gives_the_same_masks(model):
    frames = clip(7)
    plain = forced(model, frames, "Sure, [SEG] and [SEG].")
    offloaded = forced(model, frames, "Sure, [SEG] and [SEG].", offload_frames=True, offload_state=True)
    assert plain.masks.shape == (2, 7, HEIGHT, WIDTH)
    assert torch.equal(plain.masks, offloaded.masks)


def test_even_key_frames():
    assert key_frame_indices(10, 5, "even") == [0, 2, 5, 7, 9]       # 2.25 -> 2, 4.5 -> 5, 6.75 -> 7
    assert key_frame_indices(9, 5, "even") == [0, 2, 4, 6, 8]
    assert key_frame_indices(30, 4, "even") == [0, 10, 19, 29]        # 9.67 -> 10, 19.33 -> 19
    assert key_frame_indices(3, 5, "even") == [0, 1, 2]
    assert key_frame_indices(7, 1, "even") == [0]
    assert key_frame_indices(7, 5, "first") == [0, 1, 2, 3, 4]
    assert key_frame_indices(2, 5, "first") == [0, 1]


def test_even_spacing_shows_those_frames_to_the_language_model(model, monkeypatch):
    frames = clip(10)
    seen = {}
    original = model.adapter.build_inputs

    def spy(processor, images, text, **kwargs):
        seen["images"] = [np.asarray(im) for im in images]
        return original(processor, images, text, **kwargs)

    monkeypatch.setattr(model.adapter, "build_inputs", spy)
    video = forced(model, frames, "Sure, it is [SEG].", spacing="even")
    consistent = forced(model, frames, "Sure, it is [SEG].", spacing="even", mode="consistent")
    assert video.key_frames == [0, 2, 5, 7, 9]
    assert len(seen["images"]) == 5
    for image, k in zip(seen["images"], video.key_frames):
        assert np.array_equal(image, frames[k])
    # the key frames are SAM2's conditioning frames: decoded from the prompt alone, as consistent mode does
    keys = video.key_frames
    others = [t for t in range(10) if t not in keys]
    assert torch.equal(video.masks[:, keys], consistent.masks[:, keys])
    assert (video.masks[:, others] - consistent.masks[:, others]).abs().max() > 0.05


def test_progress_per_frame_and_cancel_mid_clip(model, monkeypatch):
    calls = []
    encoded = []
    original = model.grounding.encode
    monkeypatch.setattr(model.grounding, "encode", lambda pixels: encoded.append(1) or original(pixels))
    with pytest.raises(Cancelled, match="Video segmentation was cancelled after 3 of 8 frames"):
        forced(model, clip(8), "Sure, it is [SEG].", progress=lambda done, total: calls.append((done, total)),
               cancelled=lambda: len(calls) >= 3)
    assert calls == [(1, 8), (2, 8), (3, 8)]
    assert len(encoded) == 3
    calls.clear()
    encoded.clear()
    forced(model, clip(8), "Sure, it is [SEG].", progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, 8) for i in range(1, 9)]
    assert len(encoded) == 8, "the SAM2 image encoder runs once per frame"


def test_frames_as_array_tensor_or_lazy_sequence_agree(model):
    frames = clip(3)

    class Lazy:
        def __len__(self):
            return len(frames)

        def __getitem__(self, i):
            return Image.fromarray(frames[i])

    reference = forced(model, frames, "Sure, it is [SEG].", mode="consistent").masks
    assert reference.shape == (1, 3, HEIGHT, WIDTH)
    for container in (np.stack(frames), torch.from_numpy(np.stack(frames)), Lazy()):
        assert torch.equal(forced(model, container, "Sure, it is [SEG].", mode="consistent").masks, reference)


def test_bad_video_inputs(model):
    frames = clip(3)
    with pytest.raises(InputError, match="takes a sequence of frames"):
        model.predict_video(frames[0], "Segment the box.")
    with pytest.raises(InputError, match="clip has no frames"):
        model.predict_video([], "Segment the box.")
    with pytest.raises(InputError, match="key_frames must be a positive integer"):
        model.predict_video(frames, "Segment the box.", key_frames=0)
    with pytest.raises(InputError, match="key_frame_spacing must be"):
        model.predict_video(frames, "Segment the box.", key_frame_spacing="random")
    with pytest.raises(InputError, match="mode must be"):
        model.predict_video(frames, "Segment the box.", mode="fast")
    with pytest.raises(InputError, match="prompt is empty"):
        model.predict_video(frames, "<image> ")
    with pytest.raises(InputError, match="uint8"):
        model.predict_video([f.astype(np.float32) for f in frames], "Segment the box.", max_new_tokens=2)
    assert len(FrameSource(np.zeros((4, 8, 8, 3), np.uint8))) == 4


# ----------------------------------------------------------------------------------------------- memory bank
@pytest.fixture(scope="module")
def tiny_sam2():
    from transformers import Sam2VideoModel

    torch.manual_seed(0)
    sam = Sam2VideoModel(sam2_config(TINY_SAM2)).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in sam.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    return sam


def test_memory_bank_matches_transformers_video_helpers(tiny_sam2):
    """Our memory (encode, bank, attention) against transformers' own private helpers fed a session that keeps every
    frame: conditioning frames 0, 3 and 7 ("even"-like), 24 frames (past the 16-pointer window), two objects
    tracked together against two one-object sessions. Equal to float rounding, though the bank forgets old frames."""
    private = pytest.importorskip("transformers.models.sam2_video.modeling_sam2_video")
    if not all(hasattr(tiny_sam2, n) for n in ("_prepare_memory_conditioned_features", "_encode_new_memory")) or \
            not hasattr(private, "Sam2VideoInferenceSession"):
        pytest.skip("this transformers version has no private SAM2 video helpers to compare with")
    sam, head = tiny_sam2, GroundingHead(tiny_sam2)
    total, conditioning, objects = 24, [0, 3, 7], 2
    sessions = [private.Sam2VideoInferenceSession(video=torch.zeros(total, 3, 8, 8), dtype=torch.float32)
                for _ in range(objects)]
    stores = [s.output_dict_per_obj[s.obj_id_to_idx(100)] for s in sessions]
    bank = MemoryBank(sam, total, torch.device("cpu"))
    generator = torch.Generator().manual_seed(2)
    worst, sizes = 0.0, []
    with torch.inference_mode():
        language = torch.randn(objects, 256, generator=generator)
        for frame in conditioning + [t for t in range(total) if t not in conditioning]:
            features = head.encode(torch.randn(1, 3, 256, 256, generator=generator))
            top, position = features.top, features.position
            if frame in conditioning:
                out = head.decode(head.pixel_embedding(features), features.high_res, language)
                low, pointer, score = out.low_res_logits, out.object_pointer, out.object_score
            else:
                mine = bank.condition(frame, top, position, features.size)
                outs = []
                for k, session in enumerate(sessions):
                    theirs = sam._prepare_memory_conditioned_features(
                        inference_session=session, frame_idx=frame, obj_idx=0, is_initial_conditioning_frame=False,
                        current_vision_features=top, current_vision_positional_embeddings=position,
                        num_total_frames=total)
                    worst = max(worst, float((theirs - mine[k:k + 1]).abs().max()))
                    outs.append(head.decode(mine[k:k + 1], features.high_res, None))
                low = torch.cat([o.low_res_logits for o in outs])
                pointer = torch.cat([o.object_pointer for o in outs])
                score = torch.cat([o.object_score for o in outs])
            high = torch.nn.functional.interpolate(low.float(), size=(256, 256), mode="bilinear", align_corners=False)
            memory, memory_position = encode_memory(sam, top, features.size, high)
            key = "cond_frame_outputs" if frame in conditioning else "non_cond_frame_outputs"
            for k, store in enumerate(stores):
                theirs, theirs_position = sam._encode_new_memory(
                    current_vision_feats=top, pred_masks_high_res=high[k:k + 1], object_score_logits=score[k:k + 1],
                    is_mask_from_pts=False)
                assert torch.equal(theirs, memory[:, k:k + 1]) and torch.equal(theirs_position, memory_position)
                store[key][frame] = {"maskmem_features": theirs, "maskmem_pos_enc": theirs_position,
                                     "object_pointer": pointer[k:k + 1], "object_score_logits": score[k:k + 1]}
            if frame in conditioning:
                bank.add_conditioning(frame, memory, pointer, memory_position)
            else:
                bank.add_tracked(frame, memory, pointer, memory_position)
                sizes.append(bank.size_bytes())
    assert worst < 1e-5, worst
    # bounded: 15 tracked frames kept (pointers), only the last 6 with features; the size stops growing
    assert len(bank.tracked) == 15 and sum(e.features is not None for e in bank.tracked.values()) == 6
    assert sizes[-1] == sizes[-2] == max(sizes)
    tokens, feature_bytes, pointer_bytes = 16 * 16, 16 * 16 * objects * 64 * 2, objects * 256 * 4
    assert bank.size_bytes() == 3 * (feature_bytes + pointer_bytes) + 15 * pointer_bytes + 6 * feature_bytes + \
        tokens * 64 * 4


# --------------------------------------------------------------------------------------------------- the node
video_node = pack_module("nodes.video")
loader = pack_module("nodes.loader")
node_errors = pack_module("sa2va.errors")
node_synthetic = pack_module("sa2va.testing")


@pytest.fixture
def handle(qwen3_handle):
    return qwen3_handle


def _force_video(handle, monkeypatch, answer: str):
    model = handle.model
    original = model.predict_video

    def predict_video(frames, prompt, **kwargs):
        options = kwargs.get("options") or VideoOptions(**{k: v for k, v in kwargs.items()
                                                            if k in ("key_frames", "key_frame_spacing")})
        keys = key_frame_indices(len(frames), options.key_frames, options.key_frame_spacing)
        inputs = model.prompt_inputs([frames[k] for k in keys], as_request(prompt))
        answer_ids = ids(model, answer) + [model.tokenizer.convert_tokens_to_ids("<|im_end|>")]
        processor = node_synthetic.ForceTokens(inputs["input_ids"].shape[1], answer_ids)
        return original(frames, prompt, logits_processor=[processor], **kwargs)

    monkeypatch.setattr(model, "predict_video", predict_video)


def test_video_node_outputs_are_object_major_and_aligned(handle, monkeypatch):
    _force_video(handle, monkeypatch, "<p>red box</p>[SEG] and <p>blue box</p>[SEG].")
    frames = torch.from_numpy(np.stack(clip(6))).float() / 255
    soft = segment_video(frames, "boxes", handle, max_new_tokens=32, apply_mask_threshold=False)
    assert len(soft.phrases.splitlines()) == 2
    assert soft.masks.shape == (12, HEIGHT, WIDTH) and soft.merged_mask.shape == (6, HEIGHT, WIDTH)
    assert soft.overlay.shape == (6, HEIGHT, WIDTH, 3)
    assert soft.phrases.splitlines() == ["0: red box (masks 0-5)", "1: blue box (masks 6-11)"]
    assert soft.text == "red box and blue box."
    tracks = soft.masks.reshape(2, 6, HEIGHT, WIDTH)
    assert torch.equal(soft.merged_mask, tracks.amax(0))
    # object-major: the library's [N, T, H, W] flattened object by object
    direct = handle.model.predict_video(video_node.ClipFrames(frames), "Please segment the boxes.",
                                        max_new_tokens=32).masks
    assert torch.equal(tracks, direct)
    hard = segment_video(frames, "boxes", handle, max_new_tokens=32, mask_threshold=0.4)
    assert torch.equal(hard.masks, (soft.masks >= 0.4).float())
    assert float(soft.overlay.min()) >= 0 and float(soft.overlay.max()) <= 1
    assert not torch.equal(soft.overlay, frames), "the overlay draws the masks"


def test_video_node_without_objects_gives_empty_masks(handle, monkeypatch):
    _force_video(handle, monkeypatch, "It is a box.")
    frames = torch.rand(5, 24, 32, 3)
    result = segment_video(frames, "boxes", handle, max_new_tokens=16, mode="consistent")
    assert result.phrases == "(none)" and result.text == "It is a box."
    assert result.masks.shape == (5, 24, 32) and float(result.masks.abs().sum()) == 0
    assert result.merged_mask.shape == (5, 24, 32) and torch.allclose(result.overlay, frames)


def test_video_node_cancel_raises_comfy_interrupt(handle, monkeypatch):
    comfy = pack_module("nodes.comfy")
    state = {"frames": 0, "stop": False}

    def throw():
        if state["stop"]:
            raise comfy.Interrupted("cancelled")

    monkeypatch.setattr(comfy, "interrupted", lambda: state["stop"])
    monkeypatch.setattr(comfy, "throw_if_interrupted", throw)
    original = comfy.Progress.set

    def on_progress(self, value, total=None):
        if value > 16:            # the frame part of the bar (tokens first)
            state["frames"] += 1
            state["stop"] = state["frames"] >= 2
        return original(self, value, total)

    monkeypatch.setattr(comfy.Progress, "set", on_progress)
    with pytest.raises(comfy.Interrupted):
        segment_video(torch.rand(8, 24, 32, 3), "box", handle, max_new_tokens=16)
    assert state["frames"] == 2


def test_video_node_bad_inputs(handle):
    with pytest.raises(node_errors.InputError, match="Expected a ComfyUI IMAGE batch"):
        segment_video(torch.rand(8, 8, 3), "box", handle)
    with pytest.raises(node_errors.InputError, match="prompt is empty"):
        segment_video(torch.rand(2, 8, 8, 3), "  ", handle)
    with pytest.raises(node_errors.InputError, match="mask_threshold"):
        segment_video(torch.rand(2, 8, 8, 3), "box", handle, mask_threshold=2.0)
    with pytest.raises(node_errors.InputError, match="mode must be 'memory' or 'consistent'"):
        segment_video(torch.rand(2, 8, 8, 3), "box", handle, mode="fast")


def test_video_node_schema_with_a_test_double(monkeypatch):
    """The declared V3 schema (id, inputs, defaults, tooltips, outputs) against a stand-in for comfy_api.latest."""
    import asyncio

    comfy = pack_module("nodes.comfy")
    extension = pack_module("nodes.extension")
    seen = {}
    monkeypatch.setattr(comfy, "extension", lambda nodes: seen.setdefault("nodes", nodes))
    asyncio.run(extension.comfy_entrypoint())
    video_class = pack_module("nodes.video").Sa2VAVideoSegmentation
    assert video_class in seen["nodes"] and len(seen["nodes"]) == 4
    recorded = {"Sa2VAVideoSegmentation": node_schema(video_class)}
    schema = recorded["Sa2VAVideoSegmentation"]
    assert schema["display_name"] == "Sa2VA Video Segmentation" and schema["category"] == "Sa2VA"
    for spec in schema["inputs"] + schema["outputs"]:
        assert spec.kw.get("tooltip"), spec.name or spec.kw.get("display_name")
    inputs = {s.name: s for s in schema["inputs"]}
    assert list(inputs) == ["frames", "prompt", "model_name", "key_frames", "key_frame_spacing", "mode",
                            "offload_frames", "offload_state", "max_new_tokens", "mask_threshold",
                            "apply_mask_threshold", "clean_vram_after", "dtype", "quantization", "model",
                            "min_score", "task"]
    assert inputs["frames"].kind == "Image" and inputs["prompt"].kw["multiline"] is True
    assert inputs["key_frames"].kw["default"] == 5 and inputs["key_frames"].kw["min"] == 1
    assert inputs["key_frame_spacing"].kw["options"] == ["first", "even"]
    assert inputs["key_frame_spacing"].kw["default"] == "first"
    assert inputs["mode"].kw["options"] == ["memory", "consistent"] and inputs["mode"].kw["default"] == "memory"
    assert inputs["model"].kind == "SA2VA_MODEL" and inputs["model"].kw["optional"] is True
    # new outputs only at the end: saved workflows link outputs by index
    assert [s.kw["display_name"] for s in schema["outputs"]] == ["masks", "merged_mask", "overlay", "text",
                                                                "phrases", "scores", "boxes"]
    assert [s.kind for s in schema["outputs"]] == ["Mask", "Mask", "Image", "String", "String", "String", "String"]
    assert inputs["min_score"].kw["optional"] is True and inputs["min_score"].kw["default"] == 0.0
    assert inputs["task"].kw["optional"] is True and inputs["task"].kw["default"] == "segment"
    assert inputs["task"].kw["options"] == ["segment", "describe with masks", "describe", "ask"]


def test_video_node_module_does_not_import_transformers_at_import_time():
    import subprocess
    import sys

    code = ("import sys; sys.path.insert(0, 'tests'); from pack import pack_module; pack_module('nodes.video'); "
            "print('transformers' in sys.modules)")
    root = str(pack_module("nodes.comfy").__file__).rsplit("/nodes/", 1)[0]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------------------------------ video objects
def test_key_frame_scores_keep_each_objects_best_key_frame():
    from sa2va.video import KeyFrameScores

    scores = KeyFrameScores(3)
    logit = torch.logit(torch.tensor([0.5, 0.9, 0.2]))[:, None]
    scores.add(torch.tensor([0.8, 0.1, 0.5]), logit)                       # products 0.40, 0.09, 0.10
    scores.add(torch.tensor([0.4, 0.5, 0.5]), torch.logit(torch.tensor([0.9, 0.9, 0.2]))[:, None])  # .36 .45 .10
    assert torch.allclose(scores.iou, torch.tensor([0.8, 0.5, 0.5]))
    assert torch.allclose(scores.object, torch.tensor([0.5, 0.9, 0.2]))  # object 2 ties: its first key frame


@pytest.mark.parametrize("mode", ["memory", "consistent"])
def test_video_scores_are_the_decoders_on_the_best_key_frame(model, mode):
    frames = clip(6)
    captured = {}
    original = model.seg_embeddings

    def spy(states):
        captured["embeddings"] = original(states)
        return captured["embeddings"]

    model.seg_embeddings = spy
    try:
        pred = forced(model, frames, "<p>red box</p>[SEG] and <p>blue box</p>[SEG].", key_frames=3, mode=mode)
    finally:
        del model.seg_embeddings
    head = model.grounding
    per_key = []
    with torch.inference_mode():
        for k in pred.key_frames:
            out = head.image_decode(head.encode(sam2_pixels([Image.fromarray(frames[k])], head.image_size)),
                                    captured["embeddings"])
            per_key.append((out.iou.float(), out.object_score[:, 0].float().sigmoid()))
    products = torch.stack([iou * obj for iou, obj in per_key])              # [K, N]
    best = products.argmax(0)
    assert pred.iou_scores.shape == pred.object_scores.shape == pred.scores.shape == (2,)
    for n in range(2):
        iou, obj = per_key[int(best[n])]
        assert torch.allclose(pred.iou_scores[n], iou[n], atol=1e-6)
        assert torch.allclose(pred.object_scores[n], obj[n], atol=1e-6)
    assert torch.allclose(pred.scores, products.max(0).values, atol=1e-6)


def test_video_node_scores_boxes_and_min_score(handle, monkeypatch):
    import json

    _force_video(handle, monkeypatch, "<p>red box</p>[SEG] and <p>blue box</p>[SEG].")
    frames = torch.from_numpy(np.stack(clip(6))).float() / 255
    result = segment_video(frames, "boxes", handle, max_new_tokens=32, mask_threshold=0.5)
    direct = handle.model.predict_video(video_node.ClipFrames(frames), "Please segment the boxes.", max_new_tokens=32)
    lines = result.scores.splitlines()
    assert len(lines) == 2
    for k, line in enumerate(lines):
        s, i, o = float(direct.scores[k]), float(direct.iou_scores[k]), float(direct.object_scores[k])
        assert line == f"{k}: {s:.3f} (iou {i:.3f}, object {o:.3f})"
    boxes = json.loads(result.boxes)              # no BOUNDING_BOX type outside ComfyUI: JSON text
    assert len(boxes) == 6, "one list per frame"
    tracks = result.masks.reshape(2, 6, HEIGHT, WIDTH)
    for t, records in enumerate(boxes):
        expected = []
        for k in range(2):                        # brute-force scan of each object's mask in this frame
            ys, xs = np.nonzero(tracks[k, t].numpy() >= 0.5)
            if len(ys):
                expected.append({"x": int(xs.min()), "y": int(ys.min()), "width": int(xs.max() + 1 - xs.min()),
                                 "height": int(ys.max() + 1 - ys.min()), "score": round(float(direct.scores[k]), 4),
                                 "label": ["red box", "blue box"][k], "object": k, "mask_index": k * 6 + t})
        assert records == expected
    # min_score drops whole tracks, and every output follows
    level = (float(direct.scores.min()) + float(direct.scores.max())) / 2
    assert float(direct.scores.min()) < level < float(direct.scores.max())
    kept = int(direct.scores.argmax())
    fewer = segment_video(frames, "boxes", handle, max_new_tokens=32, mask_threshold=0.5, min_score=level)
    assert fewer.masks.shape == (6, HEIGHT, WIDTH) and torch.equal(fewer.masks, tracks[kept])
    assert fewer.phrases == f"0: {['red box', 'blue box'][kept]} (masks 0-5)"
    assert fewer.scores.startswith("0: ") and len(fewer.scores.splitlines()) == 1
    assert all(r["object"] == 0 and r["label"] == ["red box", "blue box"][kept] for f in json.loads(fewer.boxes)
               for r in f)
    with pytest.raises(node_errors.InputError, match="min_score must be between 0 and 1"):
        segment_video(frames, "boxes", handle, min_score=1.5)


def test_video_node_boxes_use_the_bounding_box_type_where_comfyui_has_it(handle, monkeypatch):
    comfy = pack_module("nodes.comfy")
    monkeypatch.setattr(comfy, "bounding_box_type", lambda: True)
    _force_video(handle, monkeypatch, "It is [SEG].")
    result = segment_video(torch.rand(3, 24, 32, 3), "box", handle, max_new_tokens=16, mode="consistent",
                           apply_mask_threshold=False, mask_threshold=0.0)
    assert isinstance(result.boxes, list) and len(result.boxes) == 3
    assert all(len(frame) == 1 and frame[0]["object"] == 0 for frame in result.boxes), "soft masks cover every pixel"
