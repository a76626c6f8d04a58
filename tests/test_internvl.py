"""Sa2VA-InternVL3 on transformers' InternVLForConditionalGeneration: key map, config, tiling, prompt, predict, regions.

Everything runs on the tiny release-format checkpoint of ``sa2va.testing.write_checkpoint(folder, "internvl")``
(bf16 shards like the releases, 256-px SAM2). Parity with the upstream code is in test_parity.py.
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
from sa2va.compat import internvl_image_features
from sa2va.errors import CheckpointKeyError, InputError, ModelFolderError
from sa2va.families import internvl
from sa2va.families.internvl import (InternVLAdapter, native_config, native_to_release, region_cells,
                                     release_to_native, tile_grid, tile_image, tile_pixels)
from sa2va.testing import ForceTokens

FAMILY = "internvl"


def _stored(folder, name):
    index = read_index(folder)
    with safe_open(str(folder / index.tensors[name].shard), "pt") as handle:
        return handle.get_tensor(name)


@pytest.fixture(scope="module")
def model(model_factory):
    return model_factory(FAMILY)


@pytest.fixture(scope="module")
def folder(checkpoint_factory):
    return checkpoint_factory(FAMILY)


# ------------------------------------------------------------------------------------------- format + key map
def test_synthetic_release_has_the_upstream_layout(folder):
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "sa2va_chat" and config["template"] == "qwen_chat"
    assert config["llm_config"]["architectures"] == ["Qwen2ForCausalLM"]
    assert config["vision_config"]["architectures"] == ["InternVisionModel"]
    index = read_index(folder)
    assert {info.dtype for info in index.tensors.values()} == {"BF16"}
    assert "vision_model.encoder.layers.0.attn.qkv.weight" in index.tensors
    assert "language_model.lm_head.weight" in index.tensors
    assert not (folder / "preprocessor_config.json").exists()
    assert detect_family(config) == FAMILY


def test_key_map_leaves_zero_missing_and_zero_unexpected(folder):
    config = json.loads((folder / "config.json").read_text())
    adapter = InternVLAdapter()
    expected = set(adapter.expected_shapes(config))
    release = [n for n in read_index(folder).names()
               if not n.startswith(("grounding_encoder.", "text_hidden_fcs."))]
    mapped = [native for name in release for native in release_to_native(name)]
    assert len(mapped) == len(set(mapped))
    assert set(mapped) == expected
    assert len(release) == 4 + 2 * 14 + 6 + 3 * 12 + 2 + 1  # vision, mlp1, LLM layers, norm + embed, lm_head
    for name in release:
        assert {native_to_release(n) for n in release_to_native(name)} == {name}
    assert release_to_native("grounding_encoder.sam2_model.no_mem_embed") == []


@pytest.mark.parametrize("switches", [
    {},                                                                      # InternViT-300M (the releases)
    {"norm_type": "rms_norm", "qkv_bias": False, "qk_normalization": True},  # InternViT-6B style
])
def test_release_layout_and_native_model_agree_for_both_vit_styles(folder, switches):
    from sa2va.testing.internvl import release_shapes

    config = json.loads((folder / "config.json").read_text())
    config["vision_config"].update(switches)
    assert InternVLAdapter().expected_release_shapes(config) == release_shapes(config)


def test_fused_qkv_is_split_into_q_k_v_rows(model, folder):
    qkv = _stored(folder, "vision_model.encoder.layers.1.attn.qkv.weight").float()
    bias = _stored(folder, "vision_model.encoder.layers.1.attn.qkv.bias").float()
    attention = model.vlm.model.vision_tower.encoder.layer[1].attention
    width = qkv.shape[1]
    for i, proj in enumerate((attention.q_proj, attention.k_proj, attention.v_proj)):
        assert torch.equal(proj.weight, qkv[i * width:(i + 1) * width])
        assert torch.equal(proj.bias, bias[i * width:(i + 1) * width])


def test_every_loaded_tensor_equals_the_release(model, folder):
    state = model.vlm.state_dict()
    index = read_index(folder)
    for name in index.names():
        if name.startswith(("grounding_encoder.", "text_hidden_fcs.")) or ".attn.qkv." in name:
            continue
        (native,) = release_to_native(name)
        assert torch.equal(state[native], _stored(folder, name).float()), name


def test_lm_head_does_not_overwrite_the_embeddings(model, folder):
    """SPEC trap: InternVLConfig ties the embeddings by default; loading would then write lm_head over them."""
    embed = _stored(folder, "language_model.model.embed_tokens.weight").float()
    head = _stored(folder, "language_model.lm_head.weight").float()
    assert not torch.equal(embed, head)
    loaded_embed = model.vlm.get_input_embeddings().weight
    loaded_head = model.vlm.get_output_embeddings().weight
    assert torch.equal(loaded_embed, embed)
    assert torch.equal(loaded_head, head)
    assert loaded_embed.data_ptr() != loaded_head.data_ptr()
    assert model.vlm.config.tie_word_embeddings is False
    assert model.vlm.config.text_config.tie_word_embeddings is False


def test_missing_tensor_is_a_clear_error(folder, tmp_path):
    target = tmp_path / "broken"
    shutil.copytree(folder, target)
    shard = next(target.glob("model-*.safetensors"))
    state = load_file(str(shard))
    del state["vision_model.encoder.layers.0.attn.qkv.bias"]
    save_file(state, str(shard), metadata={"format": "pt"})
    index = json.loads((target / "model.safetensors.index.json").read_text())
    del index["weight_map"]["vision_model.encoder.layers.0.attn.qkv.bias"]
    (target / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointKeyError, match=r"1 missing \(e\.g\. vision_model\.encoder\.layers\.0\.attn\.qkv"):
        sa2va.load_model(target, dtype=torch.float32)


# ------------------------------------------------------------------------------------------------- config
def test_native_config_spells_out_the_switches(folder, model):
    config = json.loads((folder / "config.json").read_text())
    image_token = model.tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    native = native_config(config, image_token, torch.bfloat16)
    vision, text = native.vision_config, native.text_config
    assert (vision.norm_type, vision.attention_bias, vision.use_qk_norm) == ("layer_norm", True, False)
    assert vision.use_mean_pooling is True and vision.use_mask_token is False
    assert (vision.hidden_size, vision.num_hidden_layers) == (32, 2)
    assert list(vision.image_size) == [448, 448] and list(vision.patch_size) == [14, 14]
    assert native.image_token_id == image_token == 440
    assert native.vision_feature_layer == -1 and native.vision_feature_select_strategy == "default"
    assert native.downsample_ratio == 0.5 and native.projector_hidden_act == "gelu"
    assert native.tie_word_embeddings is False and text.tie_word_embeddings is False
    assert native.dtype == vision.dtype == text.dtype == torch.bfloat16
    rope = getattr(text, "rope_parameters", None) or text.rope_scaling  # 5.x name / 4.57 name
    assert rope["rope_type"] == "dynamic" and rope["factor"] == 2.0
    assert text.vocab_size == config["llm_config"]["vocab_size"] and text.hidden_size == 64
    # absent InternViT keys take the *upstream* defaults (rms_norm, no qkv bias, qk-norm), not transformers' ones
    bare = json.loads(json.dumps(config))
    for key in ("norm_type", "qkv_bias", "qk_normalization"):
        del bare["vision_config"][key]
    vision = native_config(bare, image_token, torch.float32).vision_config
    assert (vision.norm_type, vision.attention_bias, vision.use_qk_norm) == ("rms_norm", False, True)


@pytest.mark.parametrize("change, message", [
    ({"ps_version": "v1"}, "pixel-shuffle 'v2'"),
    ({"llm_config": {"architectures": ["Phi3ForCausalLM"]}}, "InternVisionModel \\+ Qwen2ForCausalLM"),
])
def test_unsupported_internvl_variants_are_refused(folder, change, message):
    config = json.loads((folder / "config.json").read_text())
    for key, value in change.items():
        if isinstance(value, dict):
            config[key].update(value)
        else:
            config[key] = value
    with pytest.raises(ModelFolderError, match=message):
        internvl.check_config(config, folder)


def test_tokenizer_loads_without_remote_code_or_prompt(folder, monkeypatch):
    def no_input(*args, **kwargs):
        raise AssertionError("the tokenizer asked an interactive question")

    monkeypatch.setattr("builtins.input", no_input)
    processor = InternVLAdapter().load_processor(folder, json.loads((folder / "config.json").read_text()))
    assert processor.tokens_per_tile == 256 and processor.grid == 16
    tokenizer = processor.tokenizer
    assert tokenizer.convert_ids_to_tokens(tokenizer.encode("<img><IMG_CONTEXT></img>[SEG]<vp></vp>")) == \
        ["<img>", "<IMG_CONTEXT>", "</img>", "[SEG]", "<vp>", "</vp>"]


def test_tokenizer_without_sa2va_tokens_is_refused(folder, tmp_path):
    target = tmp_path / "base_tokenizer"
    shutil.copytree(folder, target)
    data = json.loads((target / "tokenizer.json").read_text())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != "<IMG_CONTEXT>"]
    (target / "tokenizer.json").write_text(json.dumps(data))
    config = json.loads((target / "tokenizer_config.json").read_text())
    config["added_tokens_decoder"] = {k: v for k, v in config["added_tokens_decoder"].items()
                                      if v["content"] != "<IMG_CONTEXT>"}
    (target / "tokenizer_config.json").write_text(json.dumps(config))
    (target / "added_tokens.json").unlink()
    with pytest.raises(ModelFolderError, match="the tokenizer has no <IMG_CONTEXT> token"):
        InternVLAdapter().load_processor(target, {})


# ------------------------------------------------------------------------------------------------- tiling
def _rule(width, height, max_tiles=12, size=448):
    """The tiling rule written out independently: every grid by increasing tile count, closest aspect ratio wins,
    an exact tie goes to the later grid while the image has more than half its pixels."""
    grids = [(c, r) for n in range(1, max_tiles + 1) for c in range(1, n + 1) for r in range(1, n + 1) if c * r == n]
    best, best_diff = None, None
    for c, r in grids:
        diff = abs(width / height - c / r)
        if best is None or diff < best_diff or (diff == best_diff and width * height > 0.5 * size * size * c * r):
            best, best_diff = (c, r), diff
    return best


@pytest.mark.parametrize("size, grid", [
    ((448, 448), (1, 1)), ((512, 512), (1, 1)), ((400, 380), (1, 1)), ((1920, 1080), (4, 2)),
    ((1280, 720), (4, 2)), ((1024, 1024), (3, 3)), ((640, 480), (4, 3)), ((800, 600), (4, 3)),
    ((400, 300), (4, 3)), ((480, 240), (2, 1)), ((300, 1200), (1, 4)), ((5000, 100), (12, 1)),
    ((896, 448), (2, 1)), ((1000, 1000), (3, 3)), ((900, 900), (2, 2)),
])
def test_tile_grid_examples(size, grid):
    assert tile_grid(*size) == grid == _rule(*size)


def test_tile_grid_follows_the_rule_on_a_sweep():
    sizes = [(w, h) for w in range(40, 2400, 97) for h in range(40, 2400, 89)]
    sizes += [(448 * c, 448 * r) for c in range(1, 13) for r in range(1, 13)]  # exact ratios and ties
    sizes += [(w, 100) for w in (125, 150, 175, 250, 350)]                      # half-way between ratios
    mismatches = [s for s in sizes if tile_grid(*s) != _rule(*s)]
    assert not mismatches


@pytest.mark.parametrize("size, count", [((360, 340), 1), ((400, 300), 13), ((480, 240), 3), ((300, 1200), 5)])
def test_tiles_are_row_major_crops_plus_a_thumbnail(size, count):
    rng = np.random.RandomState(1)
    image = Image.fromarray((rng.rand(size[1], size[0], 3) * 255).astype(np.uint8))
    tiles = tile_image(image)
    assert len(tiles) == count and all(t.size == (448, 448) for t in tiles)
    cols, rows = tile_grid(*size)
    resized = np.asarray(image.resize((448 * cols, 448 * rows), Image.Resampling.BICUBIC))
    if count > 1:
        assert np.array_equal(np.asarray(tiles[-1]), np.asarray(image.resize((448, 448), Image.Resampling.BICUBIC)))
        last = (rows - 1) * cols + cols - 1  # bottom-right tile
        assert np.array_equal(np.asarray(tiles[last]), resized[-448:, -448:])
    assert np.array_equal(np.asarray(tiles[0]), resized[:448, :448])


def test_tile_pixels_are_imagenet_normalised():
    tile = Image.fromarray(np.full((448, 448, 3), (0, 128, 255), np.uint8))
    pixels = tile_pixels([tile, tile])
    assert pixels.shape == (2, 3, 448, 448) and pixels.dtype == torch.float32
    expected = [(0 / 255 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, (255 / 255 - 0.406) / 0.225]
    assert torch.allclose(pixels[1, :, 200, 300], torch.tensor(expected), atol=1e-6)


# ------------------------------------------------------------------------------------------------- prompt
def test_prompt_ids_follow_the_qwen_chat_template(model):
    image = Image.fromarray(np.zeros((300, 400, 3), np.uint8))  # 4:3 -> 12 tiles + thumbnail
    inputs = model.adapter.build_inputs(model.processor, [image], "Please segment the person.")
    tokenizer = model.tokenizer
    input_ids = inputs["input_ids"][0].tolist()
    context = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert input_ids.count(context) == 13 * 256
    assert inputs["pixel_values"].shape == (13, 3, 448, 448)
    text = tokenizer.decode(input_ids, skip_special_tokens=False)
    assert text == ("<|im_start|>user\n<img>" + "<IMG_CONTEXT>" * (13 * 256) + "</img>Please segment the person."
                    "<|im_end|>\n<|im_start|>assistant\n")
    start = [tokenizer.convert_tokens_to_ids("<|im_start|>")] + ids(model, "user\n")
    assert input_ids[:len(start)] == start  # no BOS
    assert inputs["attention_mask"].tolist() == [[1] * len(input_ids)]


def test_video_frames_get_one_plain_tile_each(model):
    frames = [Image.fromarray(np.full((200, 500, 3), i * 40, np.uint8)) for i in range(3)]
    inputs = model.adapter.build_inputs(model.processor, frames, "Segment it.")
    text = model.tokenizer.decode(inputs["input_ids"][0], skip_special_tokens=False)
    one = "<img>" + "<IMG_CONTEXT>" * 256 + "</img>"
    assert text == f"<|im_start|>user\n{one}\n{one}\n{one}Segment it.<|im_end|>\n<|im_start|>assistant\n"
    assert inputs["pixel_values"].shape == (3, 3, 448, 448)


def test_eos_is_im_end_or_endoftext(model):
    tokenizer = model.tokenizer
    assert model.adapter.eos_token_ids(model.config, tokenizer) == [
        tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")]


def test_literal_image_token_in_the_prompt_is_refused(model, image):
    with pytest.raises(InputError, match="reserved token <IMG_CONTEXT>"):
        model.predict(image, "Look at <IMG_CONTEXT> please.")


# ------------------------------------------------------------------------------------------------ predict
def test_predict_end_to_end(model, image):
    pred = model.predict(image, "<image>Please segment the person.", max_new_tokens=32)
    assert pred.raw_text == "Sure, it is[SEG].<|im_end|>"
    assert pred.text == "Sure, it is."
    assert pred.masks.shape == (1, 480, 640) and pred.masks.dtype == torch.float32
    assert 0.0 <= float(pred.masks.min()) and float(pred.masks.max()) <= 1.0
    assert ((pred.masks > 0.01) & (pred.masks < 0.99)).float().mean() > 0.01
    assert pred.phrases == ["person"], "the request names the object, not the answer's 'Sure, it is'"


def test_seg_state_is_the_final_norm_output(model, image):
    """[SEG] feeds the post-norm state computed when the [SEG] token is fed back (no off-by-one)."""
    seg, end = (model.tokenizer.convert_tokens_to_ids(t) for t in ("[SEG]", "<|im_end|>"))
    answer = ids(model, "It is") + [seg] + ids(model, " and") + [seg, end]
    pil = Image.fromarray(image)
    prompt_length = model.prompt_inputs([pil], "Segment it.")["input_ids"].shape[1]
    result = model.answer([pil], "Segment it.", logits_processor=[ForceTokens(prompt_length, answer)])
    assert result.token_ids.tolist() == answer and len(result.seg_states) == 2
    assert forced(model, image, "Segment it.", answer).masks.shape[0] == 2
    assert model.adapter.seg_state == "post_norm"
    inputs = model.adapter.build_inputs(model.processor, [Image.fromarray(image)], "Segment it.")
    full = torch.cat([inputs["input_ids"], torch.tensor([answer[:-1]])], dim=1)
    with torch.inference_mode():
        out = model.vlm.model(input_ids=full, pixel_values=inputs["pixel_values"])  # teacher-forced, one pass
    rows = (full[0] == seg).nonzero().flatten()
    assert rows.tolist() == [inputs["input_ids"].shape[1] + 2, inputs["input_ids"].shape[1] + 4]
    assert torch.allclose(torch.stack(result.seg_states), out.last_hidden_state[0, rows], atol=1e-5)


# ------------------------------------------------------------------------------------------------ regions
def _regions(height=480, width=640):
    first = np.zeros((height, width), bool)
    first[100:300, 150:350] = True
    second = np.zeros((height, width), np.uint8)
    second[250:450, 400:600] = 255
    return [first, second]


def test_region_block_and_features_follow_the_reference(model, image):
    regions = _regions()
    pil = Image.fromarray(image)
    inputs = model.adapter.build_inputs(model.processor, [pil], "Please segment the object similar to region1.",
                                        regions=regions)
    cells = region_cells(regions, 480, 640, 16)
    counts = [int(c.sum()) for c in cells]
    expected_cells = torch.nn.functional.interpolate(
        torch.from_numpy(np.stack([r != 0 for r in regions]).astype(np.float32))[None], size=(16, 16),
        mode="nearest")[0].bool()
    assert torch.equal(cells, expected_cells) and counts == [30, 30]  # 6 rows x 5 columns of the 16x16 grid
    text = model.tokenizer.decode(inputs["input_ids"][0], skip_special_tokens=False)
    image_text = "<img>" + "<IMG_CONTEXT>" * (13 * 256) + "</img>"
    block = ("\nThere are 2 part regions in the picture: region1<vp>" + "<IMG_CONTEXT>" * 30 + "</vp>, region2<vp>"
             + "<IMG_CONTEXT>" * 30 + "</vp>.\n")
    assert text == ("<|im_start|>user\n" + image_text + block + "Please segment the object similar to region1."
                    "<|im_end|>\n<|im_start|>assistant\n")
    assert "pixel_values" not in inputs
    embeds = inputs["inputs_embeds"][0]
    slots = (inputs["input_ids"][0] == model.tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")).nonzero().flatten()
    with torch.inference_mode():
        features = internvl_image_features(model.vlm.model, tile_pixels(tile_image(pil)))
        plain = model.vlm.get_input_embeddings()(inputs["input_ids"])[0]
    thumbnail = features[-1]
    assert torch.allclose(embeds[slots[:13 * 256]], features.reshape(-1, 64))
    assert torch.allclose(embeds[slots[13 * 256:13 * 256 + 30]], thumbnail[cells[0].flatten()])
    assert torch.allclose(embeds[slots[13 * 256 + 30:]], thumbnail[cells[1].flatten()])
    text_rows = torch.ones(len(embeds), dtype=torch.bool)
    text_rows[slots] = False
    assert torch.equal(embeds[text_rows], plain[text_rows])


def test_region_prompt_predicts(model, image):
    small = image[:300, :280]  # one tile
    regions = [np.zeros((300, 280), bool), np.zeros((300, 280), bool)]
    regions[0][50:150, 40:140] = True
    regions[1][160:260, 141:241] = True
    pred = model.predict(small, "<image>Please segment the object similar to region1.", max_new_tokens=16,
                         regions=regions)
    assert pred.masks.shape == (1, 300, 280)
    assert pred.raw_text.endswith("<|im_end|>")
    assert [int(c.sum()) for c in region_cells(regions, 300, 280, 16)] == [25, 25]
    swapped = model.predict(small, "<image>Please segment the object similar to region1.", max_new_tokens=16,
                            regions=regions[::-1])
    # equal cell counts, so equal prompt ids: only the region features differ, and they change the mask
    assert swapped.token_ids.tolist() == pred.token_ids.tolist()
    assert not torch.allclose(pred.masks, swapped.masks)
    stacked = model.predict(small, "<image>Please segment the object similar to region1.", max_new_tokens=16,
                            regions=np.stack(regions).astype(np.uint8) * 255)  # an [R, H, W] array works too
    assert torch.equal(stacked.masks, pred.masks)
    assert model.predict(small, "Please segment it.", max_new_tokens=16, regions=[]).raw_text == \
        model.predict(small, "Please segment it.", max_new_tokens=16).raw_text


def test_region_of_the_wrong_size_is_a_clear_error(model, image):
    with pytest.raises(InputError, match="Each region mask must be a 2-D array of the image's size"):
        model.predict(image, "What is in region1?", regions=[np.ones((10, 10), bool)])


def test_qwen_models_refuse_regions(model_factory, image):
    qwen = model_factory("qwen2_5_vl")
    with pytest.raises(InputError, match="Region prompts need a Sa2VA-InternVL3 model"):
        qwen.predict(image, "What is in region1?", regions=_regions())


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
    qkv = _stored(checkpoint_factory(FAMILY), "vision_model.encoder.layers.0.attn.qkv.weight")
    assert torch.equal(model.vlm.model.vision_tower.encoder.layer[0].attention.v_proj.weight, qkv[64:])
    pred = model.predict(image, "Please segment the person.", max_new_tokens=16)
    assert pred.raw_text == "Sure, it is[SEG].<|im_end|>"
    assert pred.masks.shape == (1, 480, 640) and torch.isfinite(pred.masks).all()
