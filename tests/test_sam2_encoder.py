"""The grounding head's SAM2 image-encoder path: the same numbers as transformers' get_image_features, less work."""
import pytest
import torch
from PIL import Image

import sa2va
from sa2va.compat import sam2_image_features
from sa2va.grounding import hiera
from sa2va.grounding.hiera import fast_encoder_supported
from sa2va.grounding.sam2 import GroundingHead, sam2_pixels


def _stock(head, pixels):
    """Features the way transformers computes them: get_image_features, unflattened like GroundingHead.encode."""
    levels, positions = sam2_image_features(head.model, pixels.to(head.dtype))
    shapes = [tuple(s) for s in head.model.backbone_feature_sizes]
    batch = pixels.shape[0]
    high_res = [levels[i].permute(1, 2, 0).reshape(batch, -1, *shapes[i]) for i in range(2)]
    return high_res, levels[2], positions[2]


def test_fast_encoder_is_bit_identical_to_get_image_features(model_factory, image, monkeypatch):
    head = model_factory("qwen3_vl").grounding
    monkeypatch.setattr(head, "cpu_kernels", "addmm")
    assert head.fast_encoder and fast_encoder_supported(head.model)
    pil = Image.fromarray(image)
    pixels = sam2_pixels([pil, pil.transpose(Image.FLIP_LEFT_RIGHT)], head.image_size)
    with torch.inference_mode():
        features = head.encode(pixels)
        high_res, top, position = _stock(head, pixels)
        again = head.encode(pixels)  # cached positional embeddings give the same numbers
    for ours, theirs in zip(features.high_res, high_res):
        assert torch.equal(ours, theirs)
    assert torch.equal(features.top, top) and torch.equal(features.position, position)
    assert features.size == tuple(head.model.backbone_feature_sizes[2])
    assert torch.equal(again.top, features.top)


def test_fast_encoder_follows_weight_changes(model_factory, image, monkeypatch):
    """The cached window positional embedding and dense prompt embedding are rebuilt when the weights change."""
    head = model_factory("qwen2_5_vl").grounding
    monkeypatch.setattr(head, "cpu_kernels", "addmm")
    pixels = sam2_pixels([Image.fromarray(image)], head.image_size)
    pos_embed = head.model.vision_encoder.backbone.pos_embed
    dense = head.model.shared_image_embedding.positional_embedding
    saved = pos_embed.detach().clone(), dense.detach().clone()
    try:
        with torch.inference_mode():
            head.encode(pixels)
            before = head.image_wide_position().clone()
            with torch.no_grad():
                pos_embed.mul_(3.0)
                dense.mul_(2.0)
            features = head.encode(pixels)
            high_res, top, _ = _stock(head, pixels)
            after = head.image_wide_position()
        assert torch.equal(features.top, top) and torch.equal(features.high_res[0], high_res[0])
        assert torch.equal(after, head.model.get_image_wide_positional_embeddings())
        assert not torch.equal(after, before)
    finally:
        with torch.no_grad():
            pos_embed.copy_(saved[0])
            dense.copy_(saved[1])


def test_stock_path_is_used_when_the_encoder_structure_is_unknown(model_factory, image, monkeypatch):
    model = model_factory("qwen3_vl")
    head = GroundingHead(model.grounding.model)
    monkeypatch.setattr(head, "fast_encoder", False)
    monkeypatch.setattr(model.grounding, "cpu_kernels", "addmm")
    pixels = sam2_pixels([Image.fromarray(image)], head.image_size)
    with torch.inference_mode():
        stock = head.encode(pixels)
        fast = model.grounding.encode(pixels)
    assert torch.equal(stock.top, fast.top) and torch.equal(stock.high_res[1], fast.high_res[1])


class _CountingOneDnn:
    """Stands in for oneDNN's linear op and counts the calls of each fused form."""

    def __init__(self, op, wrong: bool = False) -> None:
        self.op, self.wrong, self.calls = op, wrong, {"none": 0, "gelu": 0, "add": 0}

    def __call__(self, x, weight, bias, attr, scalars, algorithm):
        self.calls[attr] += 1
        out = self.op(x, weight, bias, attr, scalars, algorithm)
        return out + 1e-3 if self.wrong else out

    def binary(self, x, other, weight, bias, attr):
        self.calls[attr] += 1
        return self.op.binary(x, other, weight, bias, attr)


@pytest.mark.skipif(not hiera.onednn_linears_usable(torch.float32), reason="no oneDNN linear kernels on this CPU")
def test_onednn_kernels_run_every_linear_fused_and_match_get_image_features(model_factory, image, monkeypatch):
    """The default CPU path: every block's qkv, output projection + residual and MLP (GELU, residual) as fused
    oneDNN kernels; the features equal the stock ones within float rounding, not bit for bit."""
    head = model_factory("qwen3_vl").grounding
    assert head.cpu_kernels == "onednn"
    counting = _CountingOneDnn(hiera._onednn_linear())
    monkeypatch.setattr(hiera, "_onednn_linear", lambda: counting)
    pixels = sam2_pixels([Image.fromarray(image)], head.image_size)
    with torch.inference_mode():
        features = head.encode(pixels)
        high_res, top, _ = _stock(head, pixels)
    blocks = len(head.model.vision_encoder.backbone.blocks)
    assert counting.calls == {"none": blocks, "gelu": blocks, "add": 2 * blocks}
    for ours, theirs in zip([*features.high_res, features.top], [*high_res, top]):
        scale = float(theirs.abs().max())
        assert torch.allclose(ours, theirs, atol=1e-5 * scale, rtol=0)


def test_onednn_kernels_that_disagree_are_not_used(model_factory, image, monkeypatch):
    """The one-time check before first use: kernels whose results differ from addmm leave the stock products in
    place, bit for bit."""
    if hiera._onednn_linear() is None:
        pytest.skip("no oneDNN linear kernel in this torch build")
    monkeypatch.setattr(hiera, "_ONEDNN_CHECKED", {})
    wrong = _CountingOneDnn(hiera._onednn_linear(), wrong=True)
    monkeypatch.setattr(hiera, "_onednn_linear", lambda: wrong)
    assert not hiera.onednn_linears_usable(torch.float32)
    head = model_factory("qwen3_vl").grounding
    pixels = sam2_pixels([Image.fromarray(image)], head.image_size)
    with torch.inference_mode():
        features = head.encode(pixels)
        _, top, _ = _stock(head, pixels)
    assert torch.equal(features.top, top)
    assert wrong.calls["none"] == 1  # the check's own call, none from the encoder


def test_onednn_check_leaves_the_global_random_state_alone(monkeypatch):
    """The one-time check before first use draws from its own generator: a seeded user sequence is unchanged."""
    monkeypatch.setattr(hiera, "_ONEDNN_CHECKED", {})
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    hiera.onednn_linears_usable(torch.float32)
    assert torch.equal(torch.rand(3), expected)


def test_cpu_kernels_rejects_other_values(model_factory, image, monkeypatch):
    head = model_factory("qwen3_vl").grounding
    monkeypatch.setattr(head, "cpu_kernels", "mkl")
    with pytest.raises(ValueError, match="cpu_kernels must be"), torch.inference_mode():
        head.encode(sam2_pixels([Image.fromarray(image)], head.image_size))


def test_compile_sam2_wraps_the_image_encoder(checkpoint_factory, image):
    """The plumbing of load_model(compile_sam2=...): torch.compile with the named backend around the image encoder.
    The 'eager' backend exercises dynamo tracing on CPU without a C++ toolchain; the results are unchanged."""
    folder = checkpoint_factory("qwen3_vl")
    plain = sa2va.load_model(folder, dtype=torch.float32)
    compiled = sa2va.load_model(folder, dtype=torch.float32, compile_sam2="eager")
    assert plain.grounding.compiled is None and compiled.grounding.compiled == "eager"
    torch._dynamo.reset()
    a = plain.predict(image, "Please segment the person.", max_new_tokens=16)
    b = compiled.predict(image, "Please segment the person.", max_new_tokens=16)
    assert a.masks.shape[0] == 1
    assert torch.equal(a.token_ids, b.token_ids) and torch.allclose(a.masks, b.masks, atol=1e-5, rtol=0)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1


@pytest.mark.parametrize("bad", [1, "", 0.5])
def test_compile_sam2_rejects_other_values(checkpoint_factory, bad):
    with pytest.raises(sa2va.InputError, match="compile_sam2 must be"):
        sa2va.load_model(checkpoint_factory("qwen3_vl"), dtype=torch.float32, compile_sam2=bad)
