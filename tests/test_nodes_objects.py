"""Sa2VA Segmentation's instance outputs through the node logic: labels, scores, boxes, min_score, region prompts and
one prompt per line, on tiny checkpoints (bridge in plain mode, the node run by keyword as ComfyUI runs it)."""
import json
import re
import shutil

import numpy as np
import pytest
import torch

from conftest import ids
from nodetools import force_answers, segment
from pack import pack_module

loader = pack_module("nodes.loader")
comfy = pack_module("nodes.comfy")
common = pack_module("nodes.common")
errors = pack_module("sa2va.errors")
boxes_lib = pack_module("sa2va.outputs.boxes")
RAW = {"process_details": False}  # the model's probabilities, unrefined


def boxes_of(result) -> list:
    """The boxes output as records (JSON text outside ComfyUI, which has no BOUNDING_BOX type)."""
    return json.loads(result.boxes) if isinstance(result.boxes, str) else result.boxes


def pixels(image):
    """A ComfyUI IMAGE's first image as the node hands it to the model."""
    return common.to_uint8(common.sanitize(image)[0])


@pytest.fixture
def models_dir(tmp_path, monkeypatch, checkpoint_factory):
    base = tmp_path / "models" / "sa2va"
    base.mkdir(parents=True)
    shutil.copytree(checkpoint_factory("qwen3_vl"), base / "tiny-qwen3")
    shutil.copytree(checkpoint_factory("internvl"), base / "tiny-internvl")
    monkeypatch.setenv("SA2VA_MODELS_DIR", str(base))
    return base


@pytest.fixture
def handle(models_dir):
    return loader.load_handle(model="tiny-qwen3", dtype="fp32", device="cpu")


def test_labels_scores_and_boxes_line_up_with_the_masks(handle, monkeypatch):
    tok = handle.model.tokenizer
    seg, end = tok.convert_tokens_to_ids("[SEG]"), tok.convert_tokens_to_ids("<|im_end|>")
    answer = ids(handle.model, "Sure, it is") + [seg] + ids(handle.model, " and") + [seg, end]
    force_answers(handle.model, monkeypatch, answer)
    r = segment(torch.rand(2, 40, 48, 3), "Please segment the cat and the dog.", handle, max_new_tokens=16,
                mask_threshold=0.5)
    records_per_image = boxes_of(r)
    assert r.phrases.splitlines() == ["0: cat", "0: dog", "1: cat", "1: dog"]
    score_lines = r.scores.splitlines()
    assert len(score_lines) == 4 and all(line.split(": ")[1][0].isdigit() for line in score_lines)
    assert len(records_per_image) == 2
    for i, records in enumerate(records_per_image):
        for record in records:
            mask = r.masks[record["mask_index"]]
            assert record["mask_index"] // 2 == i
            x1, y1, x2, y2 = boxes_lib.mask_boxes(mask[None], 0.5)[0]
            assert (record["x"], record["y"], record["width"], record["height"]) == (x1, y1, x2 - x1, y2 - y1)
            assert record["label"] == ("cat", "dog")[record["mask_index"] % 2]
            # the box record keeps 4 decimals, the scores line 3: equal up to their rounding (no double rounding)
            printed = float(score_lines[record["mask_index"]].split(": ")[1][:5])
            assert abs(record["score"] - printed) <= 0.5e-3 + 0.5e-4 + 1e-9
    # non-empty masks have a box, empty ones none
    assert sum(len(b) for b in records_per_image) == int((r.masks.flatten(1).amax(1) > 0).sum())
    # as a node output: the records themselves with ComfyUI's BOUNDING_BOX type, JSON text without it
    assert isinstance(r.boxes, str)
    monkeypatch.setattr(comfy, "bounding_box_type", lambda: False)
    assert json.loads(comfy.boxes_output(records_per_image)) == records_per_image
    monkeypatch.setattr(comfy, "bounding_box_type", lambda: True)
    assert comfy.boxes_output(records_per_image) is records_per_image


def test_scores_follow_the_prediction_and_min_score_drops_objects(handle):
    image = torch.rand(1, 40, 48, 3)
    kept = segment(image, "person", handle, max_new_tokens=16, apply_mask_threshold=False, **RAW)
    pred = handle.model.predict(pixels(image), "Please segment the person.", max_new_tokens=16)
    assert kept.phrases == "0: person"
    score = float(pred.scores[0])
    assert kept.scores == (f"0: {score:.3f} (iou {float(pred.iou_scores[0]):.3f}, "
                           f"object {float(pred.object_scores[0]):.3f})")
    assert torch.equal(kept.masks, pred.masks)
    dropped = segment(image, "person", handle, max_new_tokens=16, min_score=min(1.0, score + 1e-3))
    assert dropped.masks.shape == (1, 40, 48) and float(dropped.masks.abs().sum()) == 0
    assert dropped.phrases == "0: (none)" and dropped.scores == "0: (none)" and boxes_of(dropped) == [[]]
    with pytest.raises(errors.InputError, match="min_score must be between 0 and 1"):
        segment(image, "person", handle, min_score=1.5)


def test_regions_input_equals_the_library_path(models_dir):
    internvl = loader.load_handle(model="tiny-internvl", dtype="fp32", device="cpu")
    image = torch.rand(1, 56, 64, 3)
    regions = torch.zeros(2, 56, 64)
    regions[0, 4:30, 6:40] = 1.0
    regions[1, 30:50, 20:60] = 0.8
    prompt = "Please segment the object similar to region1."
    node = segment(image, prompt, internvl, max_new_tokens=16, apply_mask_threshold=False, regions=regions, **RAW)
    library = internvl.model.predict(pixels(image), prompt, max_new_tokens=16,
                                     regions=[r.numpy() >= 0.5 for r in regions])
    without = internvl.model.predict(pixels(image), prompt, max_new_tokens=16)
    assert library.masks.shape[0] >= 1
    assert torch.equal(node.masks, library.masks)
    assert not torch.equal(library.masks, without.masks), "the regions reach the model"
    assert node.phrases.splitlines() == [f"0: {p}" for p in library.phrases]
    # a region mask of another size is resized to the image; a batch gets the same number of regions per image
    small = segment(image, prompt, internvl, max_new_tokens=16, apply_mask_threshold=False,
                    regions=regions[:, ::2, ::2], **RAW)
    assert small.masks.shape == node.masks.shape
    with pytest.raises(errors.InputError, match="does not fit the IMAGE batch"):
        segment(torch.rand(2, 56, 64, 3), prompt, internvl, max_new_tokens=4, regions=regions[:1])


def test_regions_on_a_family_trained_without_them_is_a_clear_error(handle):
    with pytest.raises(errors.InputError, match="Region prompts need a Sa2VA-InternVL3 model"):
        segment(torch.rand(1, 20, 24, 3), "What is in region1?", handle, max_new_tokens=4,
                regions=torch.ones(1, 20, 24))


def test_one_prompt_per_line_equals_the_lines_run_one_by_one(handle):
    image = torch.rand(1, 40, 48, 3)
    options = dict(max_new_tokens=16, apply_mask_threshold=False, **RAW)
    together = segment(image, "person\n\n  the red box\n", handle, prompt_per_line=True, **options)
    first = segment(image, "person", handle, **options)
    second = segment(image, "the red box", handle, **options)
    # the lines are generated as one batch: masks equal up to float rounding (1e-5), as batched images are
    one_by_one = torch.cat([first.masks, second.masks])
    assert torch.allclose(together.masks, one_by_one, atol=1e-5, rtol=0)
    assert together.phrases.splitlines() == ["0: person", "0: red box"]
    numbers = [[float(x) for x in re.findall(r"\d+\.\d+", line)] for line in together.scores.splitlines()]
    expected = [[float(x) for x in re.findall(r"\d+\.\d+", line)]
                for line in first.scores.splitlines() + second.scores.splitlines()]
    assert len(numbers) == 2 and np.allclose(numbers, expected, atol=1.01e-3)  # printed with 3 decimals
    assert together.text == first.text + "\n" + second.text
    assert torch.allclose(together.merged_mask[0], one_by_one.amax(0), atol=1e-5, rtol=0)
    # without the option the two lines are one request
    single = segment(image, "person\nthe red box", handle, **options)
    assert single.masks.shape[0] == 1
    with pytest.raises(errors.InputError, match="prompt is empty"):
        segment(image, "\n  \n", handle, prompt_per_line=True)


def test_a_line_that_finds_nothing_keeps_its_place(handle, monkeypatch):
    tok = handle.model.tokenizer
    end = tok.convert_tokens_to_ids("<|im_end|>")
    force_answers(handle.model, monkeypatch, ids(handle.model, "It is not here.") + [end])
    r = segment(torch.rand(1, 20, 24, 3), "the cat\nthe dog", handle, prompt_per_line=True, max_new_tokens=8)
    assert r.masks.shape == (2, 20, 24) and float(r.masks.abs().sum()) == 0
    assert r.phrases.splitlines() == ["0: (none) cat", "0: (none) dog"]
    assert boxes_of(r) == [[]]
