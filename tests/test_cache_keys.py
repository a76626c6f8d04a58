"""Encoder-cache keys (issue 26): made on the CPU from the source image and every setting that changes the numbers,
never from a tensor on the device; identical images of one batch are encoded once by both encoders."""
import numpy as np
import pytest
import torch
from PIL import Image

from sa2va import cache as cache_module
from sa2va.compat import vision_cache_supported


def test_the_image_digest_is_the_same_from_every_source_and_changes_with_one_bit(image):
    pil = Image.fromarray(image)
    digest = cache_module.image_digest(image)
    assert cache_module.image_digest(pil) == digest == cache_module.image_digest(cache_module.keyed_image(image))
    changed = image.copy()
    changed[7, 11, 2] ^= 1
    assert cache_module.image_digest(changed) != digest
    assert cache_module.image_digest(image[:, :-1].copy()) != digest  # the shape is part of it
    odd = np.zeros((3, 5, 3), np.uint8)  # 45 bytes: a tail shorter than one 64-bit word
    tail = odd.copy()
    tail[-1, -1, -1] = 1
    assert cache_module.pixel_digest(odd) != cache_module.pixel_digest(tail)


def test_identical_units_of_one_call_are_computed_once():
    cache = cache_module.EncoderCache(limit_bytes=10**6)
    asked = []

    def compute(indices):
        asked.append(list(indices))
        return [torch.full((2,), float(i)) for i in indices]

    values, all_new = cache_module.cached_per_unit(cache, ["a", "b", "a", "c", "b"], compute)
    assert asked == [[0, 1, 3]] and not all_new
    assert [float(v[0]) for v in values] == [0, 1, 0, 3, 1]
    values, _ = cache_module.cached_per_unit(cache, ["c", "a"], compute)
    assert asked == [[0, 1, 3]] and [float(v[0]) for v in values] == [3, 0]


def test_the_grounding_key_holds_every_setting_that_changes_the_numbers(model_factory, image):
    model = model_factory("qwen3_vl")
    head = model.grounding
    key = model.decoder.image_key(image)
    assert key == model.decoder.image_key(Image.fromarray(image))
    head.cpu_kernels = "addmm"
    try:
        assert model.decoder.image_key(image) != key  # the fused kernels round differently
    finally:
        head.cpu_kernels = "onednn"
    head.compiled = "inductor"
    try:
        assert model.decoder.image_key(image) != key
    finally:
        head.compiled = None


@pytest.fixture
def no_tensor_hashing(monkeypatch):
    """content_key may not be given a tensor by the vision wrappers (it would copy it from the device)."""
    from sa2va.families import base, qwen_vl

    real = cache_module.content_key

    def checked(*parts):
        assert not any(torch.is_tensor(p) for p in parts), "a key was hashed from a tensor"
        return real(*parts)

    for module in (base, qwen_vl, cache_module):
        monkeypatch.setattr(module, "content_key", checked)


@pytest.mark.skipif(not vision_cache_supported(), reason="the vision cache needs transformers 5.x")
@pytest.mark.parametrize("family_name", ["qwen3_vl", "internvl"])
def test_identical_images_of_a_batch_run_each_encoder_once(model_factory, family_name, image, no_tensor_hashing):
    model = model_factory(family_name)
    model.encoder_cache.clear()
    tower = model.vlm.model.vision_tower if family_name == "internvl" else model.vlm.model.visual
    units, sam2 = [], []
    hooks = [tower.register_forward_hook(lambda m, a, o: units.append(a[0].shape[0] if a else 0)),
             model.grounding.model.vision_encoder.backbone.patch_embed.register_forward_hook(
                 lambda m, a, o: sam2.append(a[0].shape[0]))]
    try:
        once = model.segment([image], "Please segment the person.", max_new_tokens=8)
        model.encoder_cache.clear()
        single = list(units)
        units.clear()
        sam2.clear()
        twice = model.segment([image, image.copy()], "Please segment the person.", max_new_tokens=8)
    finally:
        for hook in hooks:
            hook.remove()
    assert units == single  # one tower call, holding the units (image or tiles) of one image only
    assert sam2 in ([], [1])  # SAM2 ran once if the answer held a [SEG]
    for prediction in twice:
        assert torch.equal(prediction[0].token_ids, once[0][0].token_ids)
        assert torch.allclose(prediction[0].masks, once[0][0].masks, atol=1e-5, rtol=0)  # batched rows round


@pytest.mark.skipif(not vision_cache_supported(), reason="the vision cache needs transformers 5.x")
def test_without_served_keys_the_tower_runs_uncached(model_factory, image):
    model = model_factory("qwen3_vl")
    model.encoder_cache.clear()
    inputs = model.prompt_inputs([image], "Please segment the person.")
    model.generator.generate(inputs, ["Please segment the person."], 4)  # no unit keys: nothing cached
    assert len(model.encoder_cache) == 0
    model.answer([image], "Please segment the person.", max_new_tokens=4)
    assert len(model.encoder_cache) == 1 and model.encoder_cache.misses == 1
