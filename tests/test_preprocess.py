"""Prompt and pixel preprocessing against the reference algorithm (docs/design.md, "Prompt and pixels" and "SAM2 input")."""
import numpy as np
import pytest
import torch
from PIL import Image

from sa2va.families.qwen_vl import fetch_resize, smart_resize
from sa2va.grounding.sam2 import SAM2_PIXEL_MEAN, SAM2_PIXEL_STD, sam2_pixels


@pytest.mark.parametrize("size", [(480, 640), (375, 500), (1, 1), (16, 16), (1080, 1920), (8192, 8192),
                                  (37, 999), (3000, 20)])
def test_smart_resize_matches_qwen_vl_utils(size):
    qwen_vl_utils = pytest.importorskip("qwen_vl_utils")
    h, w = size
    if max(h, w) / min(h, w) > 200:
        pytest.skip("extreme aspect ratio is rejected")
    expected = qwen_vl_utils.smart_resize(h, w, factor=28, min_pixels=4 * 28 * 28, max_pixels=16384 * 28 * 28)
    assert smart_resize(h, w) == tuple(expected)


def test_double_resize_640x480_matches_the_spec(model_factory):
    """640x480 -> 644x476 (fetch_image) -> 768x576 (Qwen3-VL, 432 tokens) / 756x560 (Qwen2.5-VL, 540 tokens)."""
    image = Image.new("RGB", (640, 480), (10, 20, 30))
    assert fetch_resize(image).size == (644, 476)
    for family, grid, tokens in (("qwen3_vl", (1, 36, 48), 432), ("qwen2_5_vl", (1, 40, 54), 540)):
        model = model_factory(family)
        inputs = model.adapter.build_inputs(model.processor, [image], "Please segment the cat.")
        assert tuple(inputs["image_grid_thw"][0].tolist()) == grid
        image_id = model.config["image_token_id"]
        assert int((inputs["input_ids"] == image_id).sum()) == tokens


def test_chat_prompt_per_family(model_factory):
    image = Image.new("RGB", (64, 64))
    q3 = model_factory("qwen3_vl")
    text3 = q3.tokenizer.decode(q3.adapter.build_inputs(q3.processor, [image], "Hi")["input_ids"][0])
    collapsed = text3.replace("<|image_pad|>", "")
    assert collapsed == "<|im_start|>user\n<|vision_start|><|vision_end|>Hi<|im_end|>\n<|im_start|>assistant\n"
    q25 = model_factory("qwen2_5_vl")
    text25 = q25.tokenizer.decode(q25.adapter.build_inputs(q25.processor, [image], "Hi")["input_ids"][0])
    assert text25.replace("<|image_pad|>", "") == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|vision_end|>Hi<|im_end|>\n<|im_start|>assistant\n")


def test_sam2_normalisation_uses_bf16_rounded_constants():
    assert SAM2_PIXEL_MEAN.tolist() == [0.484375, 0.455078125, 0.40625]
    assert SAM2_PIXEL_STD.tolist() == [0.228515625, 0.2236328125, 0.224609375]


def test_sam2_pixels_square_bicubic_resize_ignores_aspect():
    rng = np.random.RandomState(1)
    array = rng.randint(0, 256, (30, 50, 3), dtype=np.uint8)
    image = Image.fromarray(array)
    x = sam2_pixels([image], 64)
    assert x.shape == (1, 3, 64, 64) and x.dtype == torch.float32
    resized = np.asarray(image.resize((64, 64), Image.BICUBIC)).astype(np.float32) / 255.0
    expected = (torch.from_numpy(resized).permute(2, 0, 1) - SAM2_PIXEL_MEAN[:, None, None]) / \
        SAM2_PIXEL_STD[:, None, None]
    assert torch.equal(x[0], expected)
