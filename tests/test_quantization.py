"""bitsandbytes 8-bit and 4-bit on CPU: the language model quantised, everything else in the compute dtype."""
import pytest
import torch

import sa2va
from sa2va.hub.checkpoint import read_index
from sa2va.quantization import estimated_bytes

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


def computed_buffer_bytes(model) -> int:
    """Bytes of the buffers transformers computes at load time and never stores (rotary tables: transformers 4.57's
    SAM2 memory attention keeps its cos/sin tables, 5.x computes them on the fly); no checkpoint shape counts them."""
    total = 0
    for module in (model.vlm, model.grounding.model, model.projection):
        stored = set(module.state_dict())
        total += sum(b.numel() * b.element_size() for n, b in module.named_buffers() if n not in stored)
    return total


def assert_estimate_matches(folder, model, mode) -> None:
    estimate = estimated_bytes(((n, t.shape) for n, t in read_index(folder).tensors.items()), mode, torch.bfloat16)
    actual = model.memory_bytes() - computed_buffer_bytes(model)
    assert abs(estimate - actual) <= 0.01 * actual, (estimate, actual)


@pytest.mark.parametrize("mode", [None, "8bit", "4bit"])
def test_the_size_estimated_before_loading_matches_the_loaded_model(checkpoint_factory, mode):
    """What the Loader asks ComfyUI to make room for (from the shards' shapes) is what the model's weights then
    take."""
    folder = checkpoint_factory("qwen3_vl")
    assert_estimate_matches(folder, sa2va.load_model(folder, dtype=torch.bfloat16, quantization=mode), mode)


@pytest.mark.parametrize("mode", [None, "8bit", "4bit"])
def test_the_size_estimate_of_internlm2_counts_its_attention_projections_unquantised(checkpoint_factory, mode):
    """Sa2VA-8B/26B's format: the fused wqkv is split into q/k/v after loading, which stay in the compute dtype."""
    pytest.importorskip("sentencepiece")
    folder = checkpoint_factory("internvl", decoder="internlm2", weight_dtype=None)
    assert_estimate_matches(folder, sa2va.load_model(folder, dtype=torch.bfloat16, quantization=mode), mode)


@pytest.mark.parametrize("mode, layer_class", [("8bit", "Linear8bitLt"), ("4bit", "Linear4bit")])
def test_quantized_internlm2_keeps_its_split_attention_projections(checkpoint_factory, image, mode, layer_class):
    """Sa2VA-8B/26B's format: the q/k/v projections are filled from the fused wqkv after loading, so they stay in
    the compute dtype (equal to the split release tensor); the MLP and o_proj are quantised."""
    pytest.importorskip("sentencepiece")
    from safetensors import safe_open

    from sa2va.hub.checkpoint import read_config, read_index
    from sa2va.families.internlm2 import split_wqkv

    folder = checkpoint_factory("internvl", decoder="internlm2", weight_dtype=None)
    model = sa2va.load_model(folder, dtype=torch.bfloat16, quantization=mode)
    layer = model.vlm.model.language_model.layers[0]
    assert type(layer.mlp.up_proj).__name__ == layer_class
    assert type(layer.self_attn.o_proj).__name__ == layer_class
    assert all(type(getattr(layer.self_attn, f"{p}_proj")) is torch.nn.Linear for p in "qkv")
    llm = read_config(folder)["llm_config"]
    name = "language_model.model.layers.0.attention.wqkv.weight"
    with safe_open(str(folder / read_index(folder).tensors[name].shard), "pt") as handle:
        q, k, v = split_wqkv(handle.get_tensor(name), llm["num_attention_heads"], llm["num_key_value_heads"])
    assert torch.equal(layer.self_attn.q_proj.weight, q.to(torch.bfloat16))
    assert torch.equal(layer.self_attn.v_proj.weight, v.to(torch.bfloat16))
    pred = model.predict(image, "Please segment the person.", max_new_tokens=16)
    assert pred.raw_text == "Sure, it is [SEG] .<|im_end|>"
    assert pred.masks.shape == (1, 480, 640) and torch.isfinite(pred.masks).all()
