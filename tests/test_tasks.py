"""Tasks (sa2va/tasks.py, docs/tasks.md): the instruction each task sends for each release, and what each task does
on a tiny checkpoint: describe with masks labels one mask per <p> phrase, describe never runs the grounding head,
ask sends the prompt as typed."""
import numpy as np
import pytest
import torch

from conftest import end_token, ids
from nodetools import schema as node_schema
from nodetools import segment as segment_node
from pack import pack_module
from sa2va.errors import InputError
from sa2va.hub import catalog
from sa2va.monitor import Monitor
from sa2va.tasks import (DESCRIBE_IMAGE, DESCRIBE_VIDEO, GCG_BRIEF, GCG_DETAILED, TASKS, codebase, grounds,
                         task_request)
from sa2va.testing import ForceTokens


def test_each_release_gets_the_grounded_caption_list_it_was_trained_with():
    brief = {"Sa2VA-1B", "Sa2VA-4B", "Sa2VA-8B", "Sa2VA-26B", "Sa2VA-LLaVA-1.5-7B"}
    for entry in catalog.CATALOG:
        expected = "v1" if entry.name in brief else "v2"
        assert codebase(entry.name, entry.family, {}) == expected, entry.name
    # a renamed folder: the chat templates only the InternVL2.5 releases use say v1
    assert codebase("my-4b", "internvl", {"template": "phi3-chat"}) == "v1"
    assert codebase("my-8b", "internvl", {"template": "internlm2_chat"}) == "v1"
    assert codebase("my-internvl3", "internvl", {"template": "qwen_chat"}) == "v2"


def test_task_requests_are_the_trained_instructions():
    assert TASKS == ("segment", "describe with masks", "describe", "ask")
    assert task_request("segment", "hair") == "Please segment the hair."
    assert task_request("segment", "Where is the cat?") == "Where is the cat?"
    assert task_request("ask", "hair") == "hair", "ask sends the prompt as typed"
    assert task_request("describe with masks", "ignored", "v1") == GCG_BRIEF
    assert task_request("describe with masks", "ignored", "v2") == GCG_DETAILED
    assert GCG_BRIEF == ("Could you please give me a brief description of the image? Please respond with "
                         "interleaved segmentation masks for the corresponding parts of the answer.")
    assert GCG_DETAILED == GCG_BRIEF.replace("brief", "detailed")
    assert task_request("describe", "ignored") == DESCRIBE_IMAGE == "Please describe the image."
    assert task_request("describe", "", video=True) == DESCRIBE_VIDEO == "Please describe the video content."
    assert [grounds(t) for t in TASKS] == [True, True, False, True]
    with pytest.raises(InputError, match="task must be one of 'segment', 'describe with masks', 'describe', 'ask'"):
        task_request("caption", "x")


@pytest.fixture(scope="module")
def model(model_factory):
    return model_factory("qwen3_vl")


def _run(model, image, task: str, prompt: str, answer: str, monkeypatch):
    """predict with ``task``, decoding forced to ``answer``; returns the prediction and the requests the language
    model was sent."""
    request = task_request(task, prompt, model.codebase)
    inputs = model.prompt_inputs([image], request)
    sent = []
    original = model.generator.prompt_inputs

    def spy(images, prompt, regions=None):
        sent.append(prompt)
        return original(images, prompt, regions=regions)

    forced = ForceTokens(inputs["input_ids"].shape[1], ids(model, answer) + [end_token(model)])
    with monkeypatch.context() as patch:
        patch.setattr(model.generator, "prompt_inputs", spy)
        pred = model.predict(image, prompt, max_new_tokens=48, logits_processor=[forced], task=task)
    return pred, sent


def test_describe_with_masks_sends_the_trained_instruction_and_labels_one_mask_per_phrase(model, image,
                                                                                        monkeypatch):
    pred, sent = _run(model, image, "describe with masks", "", "<p> A red square</p> [SEG] next to <p> a green "
                      "circle</p> [SEG].", monkeypatch)
    assert sent == [GCG_DETAILED] and model.codebase == "v2"
    assert pred.masks.shape == (2, 480, 640) and pred.scores.shape == (2,)
    assert pred.phrases == ["A red square", "a green circle"], "the <p> phrases as the model wrote them"
    assert pred.text == "A red square next to a green circle."
    # a [SEG] without its own <p> phrase is named by the answer's words, never by the instruction
    bare, _ = _run(model, image, "describe with masks", "", "<p> A cat</p> [SEG] on a sofa [SEG].", monkeypatch)
    assert bare.phrases == ["A cat", "on a sofa"]


def test_describe_never_runs_the_grounding_head(model, image, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the grounding head ran")

    for name in ("encode", "decode", "image_decode"):
        monkeypatch.setattr(model.grounding, name, refuse)
    monkeypatch.setattr(model.decoder, "seg_embeddings", refuse)
    pred, sent = _run(model, image, "describe", "what is ignored", "A red square [SEG] on a gradient.", monkeypatch)
    assert sent == [DESCRIBE_IMAGE]
    assert pred.masks.shape == (0, 480, 640) and pred.phrases == [] and pred.scores.shape == (0,)
    assert pred.text == "A red square on a gradient."
    # the same answer under "segment" does run it (the spies above would have caught it)
    with pytest.raises(AssertionError, match="the grounding head ran"):
        _run(model, image, "segment", "square", "A red square [SEG] on a gradient.", monkeypatch)


def test_ask_sends_the_prompt_as_typed_and_masks_only_when_the_answer_has_seg(model, image, monkeypatch):
    text, sent = _run(model, image, "ask", "red square", "It is red.", monkeypatch)
    assert sent == ["red square"] and text.masks.shape[0] == 0 and text.text == "It is red."
    masked, sent = _run(model, image, "ask", "Which shape is red?", "The square [SEG].", monkeypatch)
    assert sent == ["Which shape is red?"] and masked.masks.shape == (1, 480, 640)


def test_video_describe_never_runs_the_grounding_head(model, monkeypatch):
    frames = np.zeros((4, 32, 48, 3), np.uint8)
    inputs = model.prompt_inputs([frames[k] for k in range(4)], DESCRIBE_VIDEO)
    forced = ForceTokens(inputs["input_ids"].shape[1], ids(model, "A dark clip [SEG].") + [end_token(model)])

    def refuse(*args, **kwargs):
        raise AssertionError("the grounding head ran")

    for name in ("encode", "decode", "image_decode"):
        monkeypatch.setattr(model.grounding, name, refuse)
    video = model.predict_video(frames, "", max_new_tokens=16, key_frames=4, logits_processor=[forced],
                                monitor=Monitor(), task="describe")
    assert video.text == "A dark clip." and video.masks.shape == (0, 4, 32, 48) and video.phrases == []
    assert video.scores.shape == (0,)


def test_nodes_offer_the_task_last_and_optional():
    for module, node in (("nodes.segmentation", "Sa2VASegmentation"), ("nodes.video", "Sa2VAVideoSegmentation")):
        inputs = node_schema(getattr(pack_module(module), node))["inputs"]
        assert inputs[-1].name == "task" and inputs[-1].kw["optional"] is True
        assert inputs[-1].kw["options"] == list(TASKS) and inputs[-1].kw["default"] == "segment"


loader = pack_module("nodes.loader")


@pytest.fixture
def handle(qwen3_handle):
    return qwen3_handle


def test_image_node_describe_with_masks_gives_labelled_masks_and_describe_text_only(handle, monkeypatch):
    model = handle.model
    original = model.segment
    answers = {"describe with masks": "<p> A square</p> [SEG] and <p> a circle</p> [SEG].",
               "describe": "A square and a circle."}

    def forced(images, requests, task="segment", **kwargs):
        request = task_request(task, "", model.codebase)
        length = model.prompt_inputs([images[0]], request)["input_ids"].shape[1]
        processor = ForceTokens(length, ids(model, answers[task]) + [end_token(model)])
        return original(images, requests, task=task, logits_processor=[processor], **kwargs)

    monkeypatch.setattr(model, "segment", forced)
    picture = torch.rand(1, 40, 56, 3)
    grounded = segment_node(picture, "", handle, task="describe with masks", max_new_tokens=32)
    assert grounded.masks.shape == (2, 40, 56)
    assert grounded.phrases.splitlines() == ["0: A square", "0: a circle"]
    assert grounded.text == "A square and a circle."
    text_only = segment_node(picture, "", handle, task="describe", max_new_tokens=32)
    assert text_only.text == "A square and a circle." and text_only.phrases == "0: (none)"
    assert text_only.masks.shape == (1, 40, 56) and float(text_only.masks.abs().sum()) == 0
