"""Sa2VA-LLaVA-1.5 on transformers' LlavaForConditionalGeneration: key map, config, pixels, prompt, predict, video.

Everything runs on the tiny release-format checkpoint of ``sa2va.testing.write_checkpoint(folder, "llava")`` (fp32
shards like the release, 256-px SAM2). Parity with the release's own code is in test_parity.py (``llava/``).
"""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import sa2va
from conftest import forced, ids
from sa2va.hub.checkpoint import detect_family, read_index
from sa2va.compat import vision_cache_supported
from sa2va.errors import CheckpointKeyError, InputError, ModelFolderError
from sa2va.families.llava import (CLIP_MEAN, CLIP_STD, LlavaAdapter, check_config, clip_pixels, native_config,
                                  native_to_release, release_to_native, vision_prefix)
from sa2va.testing import ForceTokens

FAMILY = "llava"
EXTERNAL = ("grounding_encoder.", "text_hidden_fcs.")


def _stored(folder, name):
    index = read_index(folder)
    with safe_open(str(folder / index.tensors[name].shard), "pt") as handle:
        return handle.get_tensor(name)


def _config(folder) -> dict:
    return json.loads((folder / "config.json").read_text())


@pytest.fixture(scope="module")
def folder(checkpoint_factory):
    return checkpoint_factory(FAMILY)


@pytest.fixture(scope="module")
def model(model_factory):
    return model_factory(FAMILY)


# ------------------------------------------------------------------------------------------- format + key map
def test_synthetic_release_has_the_release_layout(folder):
    config = _config(folder)
    assert config["model_type"] == "sa2va_chat" and config["template"] == "vicuna"
    assert config["text_config"]["model_type"] == "llama"
    assert config["vision_config"]["model_type"] == "clip_vision_model"
    assert config["vision_feature_layer"] == -2 and config["vision_feature_select_strategy"] == "default"
    index = read_index(folder)
    assert {info.dtype for info in index.tensors.values()} == {"F32"}
    assert "model.model.vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight" in index.tensors
    assert "model.model.multi_modal_projector.linear_2.bias" in index.tensors
    assert "model.model.language_model.layers.2.mlp.down_proj.weight" in index.tensors
    assert "model.lm_head.weight" in index.tensors
    assert not (folder / "preprocessor_config.json").exists()
    assert detect_family(config) == FAMILY


def test_detection_by_architecture_name():
    assert detect_family({"model_type": "sa2va_chat", "architectures": ["Sa2VAChatModelLlava"]}) == FAMILY


def test_tokenizer_loads_without_remote_code_or_prompt(folder, monkeypatch):
    """config.json names the release's remote code (auto_map); the tokenizer must load without asking about it."""
    def no_input(*args, **kwargs):
        raise AssertionError("the tokenizer asked an interactive question")

    monkeypatch.setattr("builtins.input", no_input)
    assert "auto_map" in _config(folder)
    processor = LlavaAdapter().load_processor(folder, _config(folder))
    assert (processor.tokens_per_image, processor.image_size) == (576, 336)


def test_tokenizer_has_llava_and_sa2va_tokens_in_release_order(folder):
    tokenizer = LlavaAdapter().load_processor(folder, _config(folder)).tokenizer
    names = ["<image>", "<pad>", "[SEG]", "<p>", "</p>", "<vp>", "</vp>"]
    found = [tokenizer.convert_tokens_to_ids(n) for n in names]
    assert found == list(range(found[0], found[0] + len(names)))
    assert found[0] == _config(folder)["image_token_index"]
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<s>", "</s>", "<pad>")
    assert tokenizer.encode("hi")[0] == tokenizer.bos_token_id


def test_key_map_leaves_zero_missing_and_zero_unexpected(folder):
    config = _config(folder)
    native = LlavaAdapter().expected_shapes(config)
    prefix = vision_prefix(native)
    release = [n for n in read_index(folder).names() if not n.startswith(EXTERNAL)]
    mapped = [release_to_native(n, prefix) for n in release]
    assert len(mapped) == len(set(mapped)) and set(mapped) == set(native)
    assert len(release) == 5 + 16 * 3 + 2 + 4 + 1 + 9 * 3 + 1 + 1  # CLIP, projector, Llama, lm_head
    for name in release:
        assert native_to_release(release_to_native(name, prefix), prefix) == name
    assert release_to_native("grounding_encoder.sam2_model.no_mem_embed") is None
    assert release_to_native("model.lm_head.weight") == "lm_head.weight"


def test_release_layout_and_native_model_agree(folder):
    from sa2va.testing.llava import release_shapes

    config = _config(folder)
    native = LlavaAdapter().expected_shapes(config)
    prefix = vision_prefix(native)
    assert {native_to_release(k, prefix): s for k, s in native.items()} == release_shapes(config)


def test_every_loaded_tensor_equals_the_release(model, folder):
    state = model.vlm.state_dict()
    prefix = vision_prefix(state)
    for name in read_index(folder).names():
        if not name.startswith(EXTERNAL):
            assert torch.equal(state[release_to_native(name, prefix)], _stored(folder, name)), name


def test_lm_head_is_not_tied_to_the_embeddings(model, folder):
    embed = _stored(folder, "model.model.language_model.embed_tokens.weight")
    head = _stored(folder, "model.lm_head.weight")
    assert not torch.equal(embed, head)
    assert torch.equal(model.vlm.get_input_embeddings().weight, embed)
    assert torch.equal(model.vlm.get_output_embeddings().weight, head)
    assert model.vlm.config.tie_word_embeddings is False
    assert model.vlm.config.text_config.tie_word_embeddings is False


def test_missing_tensor_is_a_clear_error(folder, tmp_path):
    name = "model.model.vision_tower.vision_model.encoder.layers.0.mlp.fc1.bias"
    target = tmp_path / "broken"
    shutil.copytree(folder, target)
    index = json.loads((target / "model.safetensors.index.json").read_text())
    shard = target / index["weight_map"].pop(name)
    state = load_file(str(shard))
    del state[name]
    save_file(state, str(shard), metadata={"format": "pt"})
    (target / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointKeyError, match=r"1 missing \(e\.g\. model\.model\.vision_tower\.vision_model\."):
        sa2va.load_model(target, dtype=torch.float32)


# ------------------------------------------------------------------------------------------------- config
def test_native_config_follows_the_release(folder):
    native = native_config(_config(folder), torch.float32)
    assert native.image_token_id == _config(folder)["image_token_index"]
    assert native.vision_feature_layer == -2 and native.vision_feature_select_strategy == "default"
    assert native.projector_hidden_act == "gelu" and native.multimodal_projector_bias is True
    assert native.vision_config.hidden_act == "quick_gelu" and native.vision_config.image_size == 336
    assert native.text_config.num_key_value_heads == native.text_config.num_attention_heads
    assert native.tie_word_embeddings is False and native.text_config.tie_word_embeddings is False


@pytest.mark.parametrize("change, message", [
    ({"template": "qwen_chat"}, "chat template 'qwen_chat'"),
    ({"vision_feature_select_strategy": "full"}, "only one layer without the class token"),
    ({"vision_feature_layer": [-2, -5]}, "only one layer without the class token"),
    ({"text_config": {"model_type": "mistral"}}, "only a Llama language model with a CLIP vision tower"),
])
def test_unsupported_llava_variants_are_refused(folder, change, message):
    config = _config(folder)
    for key, value in change.items():
        if isinstance(value, dict):
            config[key].update(value)
        else:
            config[key] = value
    with pytest.raises(ModelFolderError, match=message):
        check_config(config, folder)


def test_incomplete_config_is_refused(folder):
    config = _config(folder)
    del config["vision_config"]["patch_size"]
    with pytest.raises(ModelFolderError, match="lacks vision_config.patch_size"):
        check_config(config, folder)


def test_tokenizer_without_seg_is_refused(folder, tmp_path):
    target = tmp_path / "base_tokenizer"
    shutil.copytree(folder, target)
    data = json.loads((target / "tokenizer.json").read_text())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != "[SEG]"]
    (target / "tokenizer.json").write_text(json.dumps(data))
    config = json.loads((target / "tokenizer_config.json").read_text())
    config["added_tokens_decoder"] = {k: v for k, v in config["added_tokens_decoder"].items()
                                      if v["content"] != "[SEG]"}
    (target / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFolderError, match=r"the tokenizer has no \[SEG\] token"):
        LlavaAdapter().load_processor(target, {})


def test_image_token_id_mismatch_is_refused(folder):
    config = _config(folder)
    config["image_token_index"] += 1
    with pytest.raises(ModelFolderError, match="differs from config.json's image_token_index"):
        LlavaAdapter().load_processor(folder, config)


# ------------------------------------------------------------------------------------------------- pixels
def test_clip_pixels_squash_to_336_with_clip_statistics():
    """The release's torchvision pipeline written out with PIL and numpy: a bicubic squash (no crop), /255, CLIP
    mean/std in float32."""
    rng = np.random.RandomState(1)
    image = Image.fromarray(rng.randint(0, 256, (240, 480, 3), dtype=np.uint8))
    squashed = np.asarray(image.resize((336, 336), Image.Resampling.BICUBIC), dtype=np.float32) / np.float32(255)
    expected = (squashed - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32)
    pixels = clip_pixels([image], 336)
    assert pixels.shape == (1, 3, 336, 336) and pixels.dtype == torch.float32
    assert torch.equal(pixels[0], torch.from_numpy(expected.transpose(2, 0, 1).copy()))


def test_clip_pixels_match_torchvision():
    transforms = pytest.importorskip("torchvision.transforms")
    image = Image.fromarray(np.random.RandomState(2).randint(0, 256, (300, 200, 3), dtype=np.uint8))
    pipeline = transforms.Compose([
        transforms.Resize((336, 336), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.ToTensor(), transforms.Normalize(mean=CLIP_MEAN, std=CLIP_STD)])
    assert torch.equal(clip_pixels([image], 336)[0], pipeline(image))


# ------------------------------------------------------------------------------------------------- prompt
def test_prompt_ids_follow_the_vicuna_instruction(model):
    tokenizer = model.tokenizer
    image = Image.new("RGB", (100, 80), (10, 20, 30))
    inputs = model.prompt_inputs([image], "Please segment the cat.")
    expected = tokenizer.encode("USER: " + "<image>" * 576 + "\nPlease segment the cat. ASSISTANT:")
    assert inputs["input_ids"][0].tolist() == expected
    # a <image> written in the prompt is replaced by the block in place, without the newline (the release's code)
    marked = model.prompt_inputs([image], "Look: <image>Please segment the cat.")["input_ids"][0].tolist()
    assert marked == tokenizer.encode("USER: Look: " + "<image>" * 576 + "Please segment the cat. ASSISTANT:")
    assert expected[0] == tokenizer.bos_token_id
    assert int((inputs["input_ids"] == tokenizer.convert_tokens_to_ids("<image>")).sum()) == 576
    assert inputs["pixel_values"].shape == (1, 3, 336, 336)
    assert inputs["attention_mask"].tolist() == [[1] * len(expected)]


def test_video_frames_are_joined_by_newlines(model):
    tokenizer = model.tokenizer
    frames = [Image.new("RGB", (64, 48), (i * 40, 0, 0)) for i in range(3)]
    inputs = model.prompt_inputs(frames, "Track the ball.")
    block = "\n".join(["<image>" * 576] * 3)
    assert inputs["input_ids"][0].tolist() == tokenizer.encode(f"USER: {block}\nTrack the ball. ASSISTANT:")
    assert inputs["pixel_values"].shape == (3, 3, 336, 336)


def test_text_only_prompt_has_no_image_block(model):
    inputs = model.adapter.build_inputs(model.processor, [], "Hello.")
    assert inputs["input_ids"][0].tolist() == model.tokenizer.encode("USER: Hello. ASSISTANT:")
    assert "pixel_values" not in inputs


def test_eos_is_end_of_sentence_only(model):
    tokenizer = model.tokenizer
    assert model.adapter.eos_token_ids(model.config, tokenizer) == [tokenizer.convert_tokens_to_ids("</s>")]
    assert model.adapter.stop_words(model.config) == ()
    assert model.pad_id == tokenizer.convert_tokens_to_ids("<pad>")


def test_regions_are_refused(model, image):
    with pytest.raises(InputError, match="Sa2VA-LLaVA was not trained with them"):
        model.predict(image, "What is in region1?", regions=[np.ones(image.shape[:2], bool)])


# ------------------------------------------------------------------------------------------------ predict
def test_predict_end_to_end(model, image):
    pred = model.predict(image, "<image>Please segment the person.", max_new_tokens=32)
    assert pred.raw_text == "Sure, it is [SEG].</s>"
    assert pred.text == "Sure, it is."
    assert pred.masks.shape == (1, 480, 640) and pred.masks.dtype == torch.float32
    assert ((pred.masks > 0.01) & (pred.masks < 0.99)).float().mean() > 0.01
    assert pred.phrases == ["person"]


def test_seg_state_is_the_final_norm_output(model, image):
    """[SEG] feeds the post-norm state computed when the [SEG] token is fed back (no off-by-one)."""
    seg, end = (model.tokenizer.convert_tokens_to_ids(t) for t in ("[SEG]", "</s>"))
    answer = ids(model, "It is") + [seg] + ids(model, " and") + [seg, end]
    pil = Image.fromarray(image)
    prompt_length = model.prompt_inputs([pil], "Segment it.")["input_ids"].shape[1]
    result = model.answer([pil], "Segment it.", logits_processor=[ForceTokens(prompt_length, answer)])
    assert result.token_ids.tolist() == answer and len(result.seg_states) == 2
    assert forced(model, image, "Segment it.", answer).masks.shape[0] == 2
    assert model.adapter.seg_state == "post_norm"
    inputs = model.prompt_inputs([pil], "Segment it.")
    full = torch.cat([inputs["input_ids"], torch.tensor([answer[:-1]])], dim=1)
    with torch.inference_mode():
        out = model.vlm.model(input_ids=full, pixel_values=inputs["pixel_values"])  # teacher-forced, one pass
    rows = (full[0] == seg).nonzero().flatten()
    assert rows.tolist() == [prompt_length + i for i, token in enumerate(answer) if token == seg]
    assert torch.allclose(torch.stack(result.seg_states), out.last_hidden_state[0, rows], atol=1e-5)


def test_answer_batch_matches_one_by_one(model, image):
    """Left-padded batches of prompts of different lengths give the ids and states of single requests."""
    pil = Image.fromarray(image)
    other = Image.fromarray(image[::-1].copy())
    prompts = ["Please segment the person.", "Segment the cat and the dog on the left of the picture."]
    single = [model.answer([im], p, max_new_tokens=12) for im, p in zip((pil, other), prompts)]
    batched = model.answer_batch([pil, other], prompts, max_new_tokens=12)
    for one, many in zip(single, batched):
        assert many.token_ids.tolist() == one.token_ids.tolist()
        assert len(many.seg_states) == len(one.seg_states) == 1
        assert torch.allclose(many.seg_states[0], one.seg_states[0], atol=1e-4)


def test_encoder_cache_serves_the_second_prompt(model, image):
    if not vision_cache_supported():
        pytest.skip("the vision cache needs transformers 5.x")
    pil = Image.fromarray(image[:, ::-1].copy())
    model.encoder_cache.clear()
    first = model.answer([pil], "Please segment the person.", max_new_tokens=12)
    calls = []
    tower = model.vlm.model.vision_tower
    handle = tower.register_forward_hook(lambda *args: calls.append(1))
    try:
        second = model.answer([pil], "Please segment the person.", max_new_tokens=12)
    finally:
        handle.remove()
    assert calls == []
    assert second.token_ids.tolist() == first.token_ids.tolist()
    assert torch.equal(second.seg_states[0], first.seg_states[0])


def test_video_uses_five_key_frames(model):
    frames = np.zeros((7, 48, 64, 3), np.uint8)
    for t in range(7):
        frames[t, 10:30, 5 + 6 * t:25 + 6 * t] = (220, 30, 30)
    seen = []
    build = model.adapter.build_inputs

    def spy(processor, images, text, regions=None):
        seen.append(len(images))
        return build(processor, images, text, regions=regions)

    model.adapter.build_inputs = spy
    try:
        video = model.predict_video(frames, "Please segment the red ball.", max_new_tokens=12)
    finally:
        del model.adapter.build_inputs
    assert seen == [5]
    assert video.raw_text == "Sure, it is [SEG].</s>"
    assert video.key_frames == [0, 1, 2, 3, 4]
    assert video.masks.shape == (1, 7, 48, 64)


# ------------------------------------------------------------------------------------------------ catalog
def test_catalog_entry_and_file_list(folder):
    from sa2va.hub import catalog
    from sa2va.hub.download import missing_files, required_files

    entry = catalog.find("ByteDance/Sa2VA-LLaVA-1.5-7B")
    assert (entry.name, entry.family, entry.download_gb, entry.shards) == ("Sa2VA-LLaVA-1.5-7B", FAMILY, 29.2, 6)
    assert entry.weight_files()[0] == "model.safetensors.index.json"
    assert entry.weight_files()[-1] == "model-00006-of-00006.safetensors"
    assert "preprocessor_config.json" not in required_files(FAMILY)
    assert missing_files(folder, required_files(FAMILY)) == []


# ----------------------------------------------------------------------------------------------- quantised
def test_8bit_keeps_vision_tower_and_projector_unquantised(checkpoint_factory, image):
    pytest.importorskip("bitsandbytes")
    model = sa2va.load_model(checkpoint_factory(FAMILY), dtype=torch.bfloat16, quantization="8bit")
    lm = model.vlm.model.language_model
    assert type(lm.layers[0].self_attn.q_proj).__name__ == "Linear8bitLt"
    assert type(lm.layers[0].mlp.down_proj).__name__ == "Linear8bitLt"
    assert type(model.vlm.lm_head) is torch.nn.Linear
    for part in (model.vlm.model.vision_tower, model.vlm.model.multi_modal_projector):
        linears = [m for m in part.modules() if isinstance(m, torch.nn.Linear)]
        assert linears and all(type(m) is torch.nn.Linear for m in linears)
        assert {p.dtype for p in part.parameters()} == {torch.bfloat16}
    pred = model.predict(image, "Please segment the person.", max_new_tokens=16)
    assert pred.masks.shape == (1, 480, 640) and torch.isfinite(pred.masks).all()
