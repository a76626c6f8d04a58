"""segment (one request per image) / answer_batch: batched generation and one SAM2 encoder call for the images of a
batch, with the same results as predict image by image."""
import numpy as np
import pytest
import torch
from PIL import Image

import sa2va
from conftest import end_token, ids
from sa2va.compat import vision_cache_supported
from sa2va.inputs import to_pil
from sa2va.testing import ForceByPromptLength


def _answer(model, count: int) -> list[int]:
    seg = model.tokenizer.convert_tokens_to_ids("[SEG]")
    end = end_token(model)
    out = ids(model, "Sure,")
    for _ in range(count):
        out += ids(model, " it is") + [seg]
    return out + ids(model, ".") + [end]


def _images(image: np.ndarray) -> list[np.ndarray]:
    """Three pictures whose prompts differ in length: 480x640, a crop enlarged to 800x1000, a 960x1280 resize."""
    return [image, np.asarray(Image.fromarray(image[60:460, 100:600]).resize((1000, 800))),
            np.asarray(Image.fromarray(image).resize((1280, 960)))]


def _distinct_prompts(prompt: str) -> list[str]:
    """Three prompts of clearly different lengths: LLaVA squashes every image to 336 px, so its prompt lengths
    follow the text, not the image."""
    second = prompt[:-1] + " on the left of the street, next to the red car and the green tree."
    return [prompt, second, second[:-1] + ", then the dog and the cat, the window, the table, the two chairs and the "
                                          "kitchen, and the blue sky."]


def _forcing(model, images, prompt, seg_counts):
    prompts = [prompt] * len(images) if isinstance(prompt, str) else prompt
    schedules = {}
    for img, text, count in zip(images, prompts, seg_counts):
        inputs = model.prompt_inputs([img], text)
        schedules[inputs["input_ids"].shape[1]] = _answer(model, count)
    lengths = sorted(schedules)
    assert len(lengths) == len(images) and min(np.diff(lengths)) > max(len(a) for a in schedules.values()), lengths
    return ForceByPromptLength(schedules, model.pad_id)


def _encoder_batches(model):
    """Records the batch size of every SAM2 image-encoder pass (the encoder cache is emptied first)."""
    model.encoder_cache.clear()
    seen = []
    patch_embed = model.grounding.model.vision_encoder.backbone.patch_embed
    handle = patch_embed.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    return seen, handle


@pytest.mark.parametrize("encode_batch_size", [None, 1])
def test_segment_equals_predict_per_image(model_factory, family, image, encode_batch_size):
    model = model_factory(family)
    images = _images(image)
    prompt = "<image>Please segment the person."
    if family == "llava":
        prompt = _distinct_prompts(prompt)
    forcing = _forcing(model, images, prompt, [2, 0, 1])
    prompts = [prompt] * len(images) if isinstance(prompt, str) else prompt
    singles = [model.predict(img, text, logits_processor=[forcing]) for img, text in zip(images, prompts)]
    seen, handle = _encoder_batches(model)
    try:
        batch = [p[0] for p in model.segment(images, prompt, logits_processor=[forcing],
                                              encode_batch_size=encode_batch_size)]
    finally:
        handle.remove()
    # the image without [SEG] is never encoded; the two others share one pass unless the batch size is 1
    assert seen == ([2] if encode_batch_size is None else [1, 1])
    assert [p.masks.shape[0] for p in batch] == [2, 0, 1]
    for one, many, img in zip(singles, batch, images):
        assert torch.equal(one.token_ids, many.token_ids)
        assert (one.raw_text, one.text, one.phrases) == (many.raw_text, many.text, many.phrases)
        assert many.masks.shape == (one.masks.shape[0], *img.shape[:2]) and many.masks.dtype == torch.float32
        assert torch.allclose(one.masks, many.masks, atol=1e-5, rtol=0)


def test_segment_takes_a_bhwc_array_and_runs_one_encoder_pass(model_factory, image):
    model = model_factory("qwen3_vl")
    stack = np.stack([image, image[::-1].copy(), np.ascontiguousarray(image[:, ::-1])])
    seen, handle = _encoder_batches(model)
    try:
        batch = [p[0] for p in model.segment(stack, "Please segment the person.", max_new_tokens=16)]
    finally:
        handle.remove()
    assert len(batch) == 3 and all(p.masks.shape == (1, 480, 640) for p in batch)
    assert seen == [3]
    single = model.predict(stack[1], "Please segment the person.", max_new_tokens=16)
    assert torch.allclose(single.masks, batch[1].masks, atol=1e-5, rtol=0)


def test_segment_rejects_single_images_and_bad_group_sizes(model_factory, image):
    model = model_factory("qwen3_vl")
    with pytest.raises(sa2va.InputError, match="list of images"):
        model.segment(image, "Segment it.")
    with pytest.raises(sa2va.InputError, match="list of images"):
        model.segment(Image.fromarray(image), "Segment it.")
    with pytest.raises(sa2va.InputError, match="encode_batch_size"):
        model.segment([image], "Segment it.", encode_batch_size=0)
    with pytest.raises(sa2va.InputError, match="prompt is empty"):
        model.segment([image], " <image> ")
    assert model.segment([], "Segment it.") == []


class RowCounter:
    """A score-neutral logits processor that records the batch size of every generation step's first call."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def __call__(self, input_ids, scores):
        self.calls.append(tuple(input_ids.shape))
        return scores

    def batches(self) -> list[int]:
        """Rows of each ``generate`` call (a call starts where the sequence length drops or the row count changes)."""
        out, previous = [], None
        for rows, length in self.calls:
            if previous is None or length <= previous[1] or rows != previous[0]:
                out.append(rows)
            previous = (rows, length)
        return out


@pytest.mark.parametrize("family_name", ["qwen3_vl", "qwen2_5_vl", "internvl", "llava"])
def test_answer_batch_gives_the_ids_and_states_of_one_by_one_answers(model_factory, image, family_name):
    model = model_factory(family_name)
    # InternVL's prompt length follows the tile count (1, 5 and 13 tiles here), Qwen's the pixel count
    images = _images(image) if family_name != "internvl" else [
        image[:200, :200].copy(), np.asarray(Image.fromarray(image).resize((1280, 320))), image]
    prompt = "Please segment the person."
    if family_name == "llava":
        prompt = _distinct_prompts(prompt)
    prompts = [prompt] * len(images) if isinstance(prompt, str) else prompt
    forcing = _forcing(model, images, prompt, [2, 0, 1])
    singles = [model.answer([img], text, logits_processor=[forcing]) for img, text in zip(images, prompts)]
    counter = RowCounter()
    batch = model.answer_batch(images, prompt, logits_processor=[forcing, counter], batch_size=None)
    assert counter.batches() == [3]  # one generate call for the three requests
    assert [len(a.seg_states) for a in batch] == [2, 0, 1]
    for one, many in zip(singles, batch):
        assert torch.equal(one.token_ids, many.token_ids)
        assert (one.raw_text, one.text, one.phrases) == (many.raw_text, many.text, many.phrases)
        for a, b in zip(one.seg_states, many.seg_states):
            assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), float((a - b).abs().max())


def test_answer_batch_bounds_the_rows_per_generate_call(model_factory, image):
    model = model_factory("qwen3_vl")
    images = _images(image)
    counter = RowCounter()
    answers = model.answer_batch(images, "Segment it.", max_new_tokens=4, logits_processor=[counter], batch_size=2)
    assert counter.batches() == [2, 1] and len(answers) == 3
    with pytest.raises(sa2va.InputError, match="generate_batch_size"):
        model.answer_batch(images, "Segment it.", batch_size=0)
    with pytest.raises(sa2va.InputError, match="one prompt per image"):
        model.answer_batch(images, ["a", "b"])


def test_segment_takes_one_prompt_per_image_and_encodes_each_image_once(model_factory, image):
    model = model_factory("qwen3_vl")
    images = [image, image, _images(image)[1]]
    prompts = ["Please segment the person.", "Please segment the red box and the green disc in this picture now.",
               "Please segment the person."]
    forcing = _forcing(model, images, prompts, [1, 2, 1])
    singles = [model.predict(img, text, logits_processor=[forcing]) for img, text in zip(images, prompts)]
    seen, handle = _encoder_batches(model)
    try:
        batch = [p[0] for p in model.segment(images, prompts, logits_processor=[forcing], generate_batch_size=3)]
    finally:
        handle.remove()
    assert seen == [2]  # the image shown twice is encoded once
    for one, many in zip(singles, batch):
        assert torch.equal(one.token_ids, many.token_ids)
        assert torch.allclose(one.masks, many.masks, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family_name", ["qwen3_vl", "qwen2_5_vl", "internvl", "llava"])
def test_a_second_prompt_on_the_same_image_skips_both_encoders(model_factory, family_name, image):
    model = model_factory(family_name)
    model.encoder_cache.clear()
    vision_calls, sam2_calls = [], []
    tower = model.vlm.model.vision_tower if family_name in ("internvl", "llava") else model.vlm.model.visual
    hooks = [tower.register_forward_hook(lambda m, a, o: vision_calls.append(1)),
             model.grounding.model.vision_encoder.backbone.patch_embed.register_forward_hook(
                 lambda m, a, o: sam2_calls.append(1))]
    prompts = ["Please segment the person.", "Please segment the red box."]
    try:
        first = [model.predict(image, text, max_new_tokens=12) for text in prompts]
        # the second prompt hit both caches (the vision tower's only under transformers 5.x)
        tower_runs = 1 if vision_cache_supported() else 2
        assert (len(vision_calls), len(sam2_calls)) == (tower_runs, 1)
        # one SAM2 entry, one vision entry per image (Qwen) or tile (InternVL)
        assert model.encoder_cache.hits >= (2 if vision_cache_supported() else 1)
        other = image[::-1].copy()  # other content: both encoders run again
        model.predict(other, prompts[0], max_new_tokens=12)
        assert (len(vision_calls), len(sam2_calls)) == (tower_runs + 1, 2)
    finally:
        for hook in hooks:
            hook.remove()
    limit = model.encoder_cache.limit_bytes
    model.encoder_cache.limit_bytes = 0  # off: the same predictions without the cache
    try:
        again = [model.predict(image, text, max_new_tokens=12) for text in prompts]
    finally:
        model.encoder_cache.limit_bytes = limit
    for cached, plain in zip(first, again):
        assert torch.equal(cached.token_ids, plain.token_ids)
        assert torch.equal(cached.masks, plain.masks)


def test_the_encoder_cache_is_bounded_in_bytes_and_least_recently_used():
    from sa2va.cache import EncoderCache, content_key

    cache = EncoderCache(limit_bytes=3 * 400)
    tensors = {name: torch.full((100,), float(i)) for i, name in enumerate("abcd")}  # 400 bytes each
    for name in "abc":
        cache.put(name, tensors[name])
    assert cache.get("a") is tensors["a"]  # "a" is now the most recently used
    cache.put("d", tensors["d"])
    assert cache.get("b") is None and len(cache) == 3 and cache.nbytes == 1200
    cache.put("huge", torch.zeros(1000))  # larger than the whole limit: never stored
    assert cache.get("huge") is None and cache.nbytes == 1200
    cache.limit_bytes = 400
    assert len(cache) == 1 and cache.get("d") is tensors["d"]
    same = np.zeros((4, 4, 3), np.uint8)
    assert content_key(Image.fromarray(same)) == content_key(Image.fromarray(same.copy()))
    assert content_key(Image.fromarray(same)) != content_key(Image.fromarray(same + 1))
    assert content_key(torch.zeros(4)) != content_key(torch.zeros(2, 2))  # shape is part of the key


def test_load_model_takes_the_cache_limit(checkpoint_factory, monkeypatch):
    with pytest.raises(sa2va.InputError, match="encoder_cache_mb"):
        sa2va.load_model(checkpoint_factory("qwen3_vl"), dtype="fp32", encoder_cache_mb=-1)
    monkeypatch.setenv("SA2VA_ENCODER_CACHE_MB", "3")
    from sa2va.cache import EncoderCache

    assert EncoderCache().limit_bytes == 3 * 2**20
