"""End-to-end predict: soft probabilities, and the shared-feature fast path equal to the reference algorithm."""
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import end_token, forced, ids
from sa2va.grounding.sam2 import sam2_pixels, upsample_logits


def _answer_with_segs(model, count):
    seg = model.tokenizer.convert_tokens_to_ids("[SEG]")
    end = end_token(model)
    out = ids(model, "Sure,")
    for _ in range(count):
        out += ids(model, " it is") + [seg]
    return out + [end]


def _reference_masks(model, pil, states):
    """The reference algorithm step by step: per [SEG], encode the image again and decode that mask alone."""
    head = model.grounding
    logits = []
    for state in states:
        embedding = model.projection(state[None])
        features = head.encode(sam2_pixels([pil], head.image_size))
        low = head.image_logits(features, embedding)
        logits.append(upsample_logits(low, head.image_size, pil.height, pil.width)[0])
    return torch.stack(logits)


def test_predict_returns_soft_probabilities(model_factory, family, image):
    model = model_factory(family)
    pred = forced(model, image, "<image>Segment it.", _answer_with_segs(model, 2))
    assert pred.masks.dtype == torch.float32
    assert pred.masks.shape == (2, 480, 640)
    assert float(pred.masks.min()) >= 0.0 and float(pred.masks.max()) <= 1.0
    soft = ((pred.masks > 0.01) & (pred.masks < 0.99)).float().mean()
    assert soft > 0.01, "masks must be probabilities, not binarised"


def test_batched_decode_equals_per_seg_reference(model_factory, family, image):
    """Features computed once and 3 masks decoded in one call equal the reference's per-[SEG] encode+decode."""
    model = model_factory(family)
    pil = Image.fromarray(image)
    captured = {}
    original = model.decoder.decode_groups

    def spy(images, groups, *args, **kwargs):
        captured["states"] = [s.clone() for s in groups[0][0]]
        return original(images, groups, *args, **kwargs)

    model.decoder.decode_groups = spy
    try:
        pred = forced(model, image, "Segment it.", _answer_with_segs(model, 3))
    finally:
        del model.decoder.decode_groups
    with torch.inference_mode():
        reference = _reference_masks(model, pil, captured["states"]).sigmoid()
    assert pred.masks.shape == reference.shape == (3, 480, 640)
    assert torch.allclose(pred.masks, reference, atol=1e-5)


def test_image_encoder_runs_once_for_several_segs(model_factory, image):
    model = model_factory("qwen3_vl")
    model.encoder_cache.clear()  # the image may have been encoded by an earlier test
    calls = []
    # the patch embedding runs once per encoder pass, on the fast path and on get_image_features alike
    patch_embed = model.grounding.model.vision_encoder.backbone.patch_embed
    handle = patch_embed.register_forward_hook(lambda *a: calls.append(1))
    try:
        pred = forced(model, image, "Segment it.", _answer_with_segs(model, 3))
    finally:
        handle.remove()
    assert pred.masks.shape[0] == 3
    assert len(calls) == 1


def test_no_object_score_clamp(model_factory, image):
    """Sa2VA disabled SAM2's -1024 clamp for 'absent' objects: a negative object score leaves the logits alone."""
    model = model_factory("qwen2_5_vl")
    head = model.grounding
    bias = head.model.mask_decoder.pred_obj_score_head.proj_out.bias
    saved = bias.detach().clone()
    embeddings = torch.randn(2, 256, generator=torch.Generator().manual_seed(0))
    features = head.encode(sam2_pixels([Image.fromarray(image)], head.image_size))
    try:
        with torch.inference_mode():
            bias.fill_(-50.0)
            absent = head.decode(head.pixel_embedding(features), features.high_res, embeddings)
            bias.fill_(50.0)
            present = head.decode(head.pixel_embedding(features), features.high_res, embeddings)
    finally:
        with torch.no_grad():
            bias.copy_(saved)
    assert (absent.object_score < 0).all() and (present.object_score > 0).all()
    assert torch.equal(absent.low_res_logits, present.low_res_logits)
    assert absent.low_res_logits.min() > -1000
    # the object score still gates the object pointer
    assert torch.allclose(absent.object_pointer, head.model.no_object_pointer.expand(2, -1))


def test_input_types_and_sizes(model_factory):
    model = model_factory("qwen3_vl")
    rng = np.random.RandomState(3)
    rgba = rng.randint(0, 256, (40, 60, 4), dtype=np.uint8)
    grey = rng.randint(0, 256, (50, 30), dtype=np.uint8)
    for img, size in ((rgba, (40, 60)), (grey, (50, 30)), (Image.fromarray(grey), (50, 30)),
                      (np.zeros((1, 1, 3), np.uint8), (1, 1))):
        pred = model.predict(img, "Please segment the person.", max_new_tokens=16)
        assert pred.masks.shape[1:] == size


def test_bad_inputs_raise_clear_errors(model_factory, image):
    import sa2va

    model = model_factory("qwen3_vl")
    with pytest.raises(sa2va.InputError, match="prompt is empty"):
        model.predict(image, "  <image> ")
    with pytest.raises(sa2va.InputError, match=r"prompt is too long \(100000 characters, at most 16384\)"):
        model.predict(image, "x" * 100_000)
    with pytest.raises(sa2va.InputError, match="uint8"):
        model.predict(image.astype(np.float32), "Segment it.")
    with pytest.raises(sa2va.InputError, match="channels"):
        model.predict(np.zeros((4, 4, 2), np.uint8), "Segment it.")


def test_predict_twice_gives_identical_results(model_factory, image):
    model = model_factory("qwen2_5_vl")
    a = model.predict(image, "Please segment the person.", max_new_tokens=16)
    b = model.predict(image, "Please segment the person.", max_new_tokens=16)
    assert torch.equal(a.token_ids, b.token_ids) and torch.equal(a.masks, b.masks)
