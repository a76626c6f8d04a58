"""Node classes run the way ComfyUI runs them: every declared input passed by keyword (declared defaults for
what a test does not set), outputs named as the schema names them. The schema comes from a small test double of
``comfy_api.latest.io`` (CI has no ComfyUI)."""
from __future__ import annotations

import types

from pack import pack_module


class Spec:
    def __init__(self, kind, name=None, **kw):
        self.kind, self.name, self.kw = kind, name, kw

    @property
    def id(self):
        return self.name

    @property
    def optional(self) -> bool:
        return bool(self.kw.get("optional", False))

    @optional.setter
    def optional(self, value: bool) -> None:
        self.kw = {**self.kw, "optional": value}


def _socket(kind):
    return types.SimpleNamespace(Input=lambda name, **kw: Spec(kind, name, **kw), Output=lambda **kw: Spec(kind, **kw))


FAKE_IO = types.SimpleNamespace(
    ComfyNode=object, Schema=lambda **kw: kw, NodeOutput=lambda *a: a, Custom=_socket,
    Hidden=types.SimpleNamespace(unique_id="UNIQUE_ID", prompt="PROMPT"),
    **{k: _socket(k) for k in ("Combo", "Int", "Float", "Boolean", "String", "Image", "Mask")})


#: the same with ``io.DynamicCombo`` (ComfyUI 0.8 and newer): the Segmentation and Video nodes group their inputs
DYNAMIC_IO = types.SimpleNamespace(**vars(FAKE_IO), DynamicCombo=types.SimpleNamespace(
    Option=lambda key, inputs: types.SimpleNamespace(key=key, inputs=inputs),
    Input=lambda name, options, **kw: Spec("DynamicCombo", name, options=options, **kw)))


def schema(node: type, io=FAKE_IO) -> dict:
    """The keyword arguments ``node.define_schema()`` gives ``io.Schema`` (``io``: the test double it runs on)."""
    comfy = pack_module("nodes.comfy")
    saved = comfy.io
    comfy.io = io
    try:
        return node.define_schema()
    finally:
        comfy.io = saved


def run(node: type, **given) -> types.SimpleNamespace:
    """``node.execute`` with ``given`` plus the declared default of every other input that has one; the outputs by
    their display names."""
    declared = schema(node)
    names = {s.name for s in declared["inputs"]}
    unknown = set(given) - names
    assert not unknown, f"{node.__name__} declares no input {unknown}"
    kwargs = {s.name: s.kw["default"] for s in declared["inputs"] if "default" in s.kw and s.name not in given}
    kwargs.update(given)
    values = node.execute(**kwargs)
    outputs = [s.kw["display_name"] for s in declared["outputs"]]
    assert len(values) == len(outputs)
    return types.SimpleNamespace(**dict(zip(outputs, values)))


def segment(image, prompt, model=None, **given):
    """Sa2VA Segmentation."""
    return run(pack_module("nodes.segmentation").Sa2VASegmentation, image=image, segmentation_prompt=prompt,
               model=model, **given)


def segment_video(frames, prompt, model=None, **given):
    """Sa2VA Video Segmentation."""
    return run(pack_module("nodes.video").Sa2VAVideoSegmentation, frames=frames, prompt=prompt, model=model, **given)


def refine_mask(image, mask, **given):
    """Sa2VA Refine Mask."""
    return run(pack_module("nodes.refine").Sa2VARefineMask, image=image, mask=mask, **given)


def force_answers(model, monkeypatch, answer_ids: list[int]) -> None:
    """Make ``model.segment`` (the nodes' engine call) answer ``answer_ids`` to every request, batched or not: the
    forcing follows each row's own prompt length (:class:`sa2va.testing.ForceByPromptLength`)."""
    from sa2va.engine import image_list, requests_per_image
    from sa2va.requests import as_request
    from sa2va.testing import ForceByPromptLength

    original = model.segment

    def forced(images, requests, regions=None, **kwargs):
        pils = image_list(images)
        per_image = requests_per_image(requests, len(pils))
        lengths = {model.prompt_inputs([pil], as_request(request), regions=region)["input_ids"].shape[1]
                   for pil, requests_of, region in zip(pils, per_image, regions or [None] * len(pils))
                   for request in requests_of}
        processor = ForceByPromptLength({n: answer_ids for n in lengths}, model.pad_id)
        return original(images, requests, regions=regions, logits_processor=[processor], **kwargs)

    monkeypatch.setattr(model, "segment", forced)
