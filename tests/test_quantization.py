"""bitsandbytes 8-bit and 4-bit on CPU: the language model quantised, everything else in the compute dtype."""
import pytest
import torch

import sa2va

bnb = pytest.importorskip("bitsandbytes")


@pytest.mark.parametrize("mode, layer_class", [("8bit", "Linear8bitLt"), ("4bit", "Linear4bit")])
def test_quantized_language_model_predicts(checkpoint_factory, image, mode, layer_class):
    model = sa2va.load_model(checkpoint_factory("qwen3_vl"), dtype=torch.bfloat16, quantization=mode)
    lm = model.vlm.model.language_model
    assert type(lm.layers[0].mlp.up_proj).__name__ == layer_class
    assert type(lm.layers[0].self_attn.q_proj).__name__ == layer_class
    assert type(model.vlm.lm_head) is torch.nn.Linear
    visual = [m for m in model.vlm.model.visual.modules() if isinstance(m, torch.nn.Linear)]
    assert visual and all(type(m) is torch.nn.Linear for m in visual)
    assert {p.dtype for p in model.grounding.model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.projection.parameters()} == {torch.bfloat16}
    pred = model.predict(image, "Please segment the person.", max_new_tokens=16)
    assert pred.raw_text == "Sure, it is[SEG].<|im_end|>"
    assert pred.masks.shape == (1, 480, 640)
    assert torch.isfinite(pred.masks).all()
