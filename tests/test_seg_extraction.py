"""Which [SEG] tokens give masks, which hidden state feeds them, and how the answer text is cleaned."""
import pytest
import torch

from conftest import end_token, forced, ids, natural_answer
from sa2va.answer import clean_text
from sa2va.outputs.labels import object_labels


def test_natural_answer_of_the_synthetic_model_has_one_seg(model_factory, family, image):
    model = model_factory(family)
    pred = model.predict(image, "<image>Please segment the person.", max_new_tokens=32)
    assert pred.raw_text == natural_answer(model)
    assert pred.masks.shape == (1, 480, 640)
    assert pred.text == "Sure, it is."


def test_no_seg_gives_no_mask_but_correct_shape(model_factory, family, image):
    model = model_factory(family)
    answer = ids(model, "Sure.") + [end_token(model)]
    pred = forced(model, image, "What is this?", answer)
    assert pred.masks.shape == (0, 480, 640)
    assert pred.phrases == []
    assert pred.token_ids.tolist() == answer


def test_several_segs_give_one_mask_each_in_order(model_factory, family, image):
    model = model_factory(family)
    end = end_token(model)
    answer = ids(model, "Sure, <p>cat</p>[SEG] and <p>dog</p>[SEG] and the sky[SEG].") + [end]
    pred = forced(model, image, "Segment everything.", answer)
    assert pred.masks.shape == (3, 480, 640)
    assert pred.phrases == ["cat", "dog", "sky"]
    assert "[SEG]" not in pred.text and "<p>" not in pred.text
    # distinct hidden states -> distinct masks
    assert not torch.allclose(pred.masks[0], pred.masks[1])


def test_seg_as_the_very_last_token_is_dropped(model_factory, family, image):
    model = model_factory(family)
    seg = model.tokenizer.convert_tokens_to_ids("[SEG]")
    answer = ids(model, "It is") + [seg, seg]
    pred = forced(model, image, "Segment it.", answer, max_new_tokens=len(answer))
    assert pred.token_ids.tolist() == answer
    assert pred.masks.shape[0] == 1  # the first [SEG] was fed back; the last one never was


def test_seg_typed_in_the_prompt_requests_no_mask(model_factory, image):
    model = model_factory("qwen3_vl")
    end = model.tokenizer.convert_tokens_to_ids("<|im_end|>")
    pred = forced(model, image, "Write [SEG] please.", ids(model, "No.") + [end])
    assert pred.masks.shape[0] == 0


@pytest.mark.parametrize("family_name, pre_norm", [("qwen3_vl", True), ("qwen2_5_vl", False)])
def test_seg_state_is_pre_norm_for_qwen3_and_post_norm_for_qwen25(model_factory, image, family_name, pre_norm):
    """Trap 1: Qwen3-VL's [SEG] state is the last decoder layer's output before the final norm (transformers 4.57
    semantics of the release); Qwen2.5-VL's is after it. Checked by re-running the full sequence in one forward."""
    model = model_factory(family_name)
    seg = model.tokenizer.convert_tokens_to_ids("[SEG]")
    end = model.tokenizer.convert_tokens_to_ids("<|im_end|>")
    answer = ids(model, "It is") + [seg] + ids(model, ".") + [end]
    from sa2va.answer import SegStateCollector
    from sa2va.inputs import to_pil

    inputs = model.adapter.build_inputs(model.processor, [to_pil(image)], "Segment it.")
    from sa2va.testing import ForceTokens

    collector = SegStateCollector(model.adapter.final_norm(model.vlm), seg, model.adapter.seg_state == "pre_norm")
    from transformers import LogitsProcessorList

    with torch.inference_mode():
        model.vlm.generate(**inputs, max_new_tokens=len(answer), do_sample=False, logits_processor=LogitsProcessorList(
            [ForceTokens(inputs["input_ids"].shape[1], answer), collector]))
    collector.remove()
    assert len(collector.states) == 1
    full = torch.cat([inputs["input_ids"], torch.tensor([answer[:-1]])], 1)
    captured = {}
    norm = model.adapter.final_norm(model.vlm)
    handle = norm.register_forward_hook(lambda m, i, o: captured.update(pre=i[0][0], post=o[0]))
    extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    if "mm_token_type_ids" in extra:  # Qwen3-VL marks image tokens; the answer tokens are text (0)
        pad = torch.zeros(1, len(answer) - 1, dtype=extra["mm_token_type_ids"].dtype)
        extra["mm_token_type_ids"] = torch.cat([extra["mm_token_type_ids"], pad], 1)
    with torch.inference_mode():
        model.vlm(input_ids=full, attention_mask=torch.ones_like(full), **extra)
    handle.remove()
    position = inputs["input_ids"].shape[1] + answer.index(seg)
    want = captured["pre" if pre_norm else "post"][position]
    other = captured["post" if pre_norm else "pre"][position]
    assert torch.allclose(collector.states[0], want, atol=1e-4)
    assert not torch.allclose(collector.states[0], other, atol=1e-2)


def test_phrases_rules():
    """Without a request naming an object (the rest is in tests/test_objects.py)."""
    assert object_labels("Sure, <p>the red car</p> [SEG] and <p>a dog</p>[SEG].<|im_end|>", 2) == ["the red car",
                                                                                                  "a dog"]
    assert object_labels("The cat is here. It is [SEG].", 1) == [""], "template boilerplate is no label"
    assert object_labels("[SEG][SEG]", 2) == ["", ""]
    assert object_labels("A [SEG] B [SEG]", 1) == ["A"]


def test_clean_text_removes_markers(model_factory):
    model = model_factory("qwen3_vl")
    token_ids = torch.tensor(ids(model, "Sure, it is [SEG].<|im_end|>"))
    assert clean_text(model.tokenizer, token_ids) == "Sure, it is."
