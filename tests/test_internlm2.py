"""Issue 13, InternLM2 releases (Sa2VA-8B, Sa2VA-26B): InternLM2 on transformers' LlamaForCausalLM inside the
InternVL model, the grouped wqkv split, the internlm2_chat template with BOS and its stop tokens, the SentencePiece
tokenizer in the loader, InternViT-6B's switches (26B), catalog entries and download file lists. Upstream parity of the
whole pipeline is in tests/test_parity.py (``internvl_internlm2``)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

pytest.importorskip("sentencepiece")

import sa2va  # noqa: E402
from sa2va.hub import catalog  # noqa: E402
from sa2va.hub.checkpoint import read_config, read_index  # noqa: E402
from sa2va.hub.download import missing_files, required_files  # noqa: E402
from sa2va.errors import ModelFolderError  # noqa: E402
from sa2va.families import internlm2  # noqa: E402
from sa2va.families.internlm2_tokenizer import InternLM2Tokenizer  # noqa: E402
from sa2va.families.internvl import (InternVLAdapter, native_config, native_to_release,  # noqa: E402
                                     release_to_native)
from sa2va.testing.internvl import release_shapes  # noqa: E402


@pytest.fixture(scope="module")
def eight_b(checkpoint_factory):
    return checkpoint_factory("internvl", decoder="internlm2", weight_dtype=None)


@pytest.fixture(scope="module")
def twenty_six_b(checkpoint_factory):
    return checkpoint_factory("internvl", decoder="internlm2", vision_tower="6b", weight_dtype=None)


@pytest.fixture(scope="module")
def model(eight_b):
    return sa2va.load_model(eight_b, dtype=torch.float32, attn_implementation="eager")


def _tensor(folder, name):
    index = read_index(folder)
    with safe_open(str(folder / index.tensors[name].shard), "pt") as handle:
        return handle.get_tensor(name)


# -------------------------------------------------------------------------------------------- wqkv split
def test_wqkv_split_takes_each_kv_groups_queries_then_key_then_value():
    heads, kv, d, c = 8, 2, 3, 5
    group = heads // kv
    # row r of the fused weight is filled with r: the layout [kv, group + 2, d] tells which head a row belongs to
    fused = torch.arange((heads + 2 * kv) * d, dtype=torch.float32)[:, None].expand(-1, c).clone()
    q, k, v = internlm2.split_wqkv(fused, heads, kv)
    assert q.shape == (heads * d, c) and k.shape == v.shape == (kv * d, c)
    for h in range(heads):  # query head h sits in group h // group at slot h % group
        start = ((h // group) * (group + 2) + h % group) * d
        assert q[h * d:(h + 1) * d, 0].tolist() == list(range(start, start + d))
    for g in range(kv):
        base = g * (group + 2) * d
        assert k[g * d:(g + 1) * d, 0].tolist() == list(range(base + group * d, base + (group + 1) * d))
        assert v[g * d:(g + 1) * d, 0].tolist() == list(range(base + (group + 1) * d, base + (group + 2) * d))
    assert torch.equal(internlm2.fuse_wqkv(q, k, v, kv), fused)


def test_wqkv_split_is_upstreams_attention_on_activations():
    """Upstream splits the *output* of wqkv with rearrange "(h gs d) -> h gs d" and repeats each KV head for its
    group; q/k/v projections from the split weight give the same per-head tensors."""
    heads, kv, d, c = 4, 2, 4, 6
    group = heads // kv
    fused = torch.randn((heads + 2 * kv) * d, c, generator=torch.Generator().manual_seed(0))
    x = torch.randn(3, c, generator=torch.Generator().manual_seed(1))
    out = (x @ fused.T).reshape(3, kv, group + 2, d)
    q_up = out[:, :, :group].reshape(3, heads, d)
    k_up, v_up = out[:, :, -2], out[:, :, -1]
    q, k, v = internlm2.split_wqkv(fused, heads, kv)
    assert torch.allclose((x @ q.T).reshape(3, heads, d), q_up)
    assert torch.allclose((x @ k.T).reshape(3, kv, d), k_up)
    assert torch.allclose((x @ v.T).reshape(3, kv, d), v_up)


# ------------------------------------------------------------------------------------------- config, keys
def test_llama_config_comes_from_the_internlm2_llm_config(eight_b):
    config = read_config(eight_b)
    text = native_config(config, 0, torch.float32).text_config
    llm = config["llm_config"]
    assert text.model_type == "llama"
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads) == \
        (llm["hidden_size"], llm["num_hidden_layers"], llm["num_attention_heads"], llm["num_key_value_heads"])
    assert text.attention_bias is False and text.mlp_bias is False and text.tie_word_embeddings is False
    assert text.rms_norm_eps == llm["rms_norm_eps"] and text.vocab_size == llm["vocab_size"]
    rope = getattr(text, "rope_parameters", None) or {**(text.rope_scaling or {}), "rope_theta": text.rope_theta}
    assert rope["rope_type"] == "dynamic" and rope["factor"] == 2.0 and rope["rope_theta"] == 1e6


#: what transformers 4.42's ``PretrainedConfig.to_dict`` adds to a nested llm_config (the old exports carry it)
OLD_EXPORT_NOISE = {
    "return_dict": True, "output_hidden_states": False, "output_attentions": False, "torchscript": False,
    "torch_dtype": "bfloat16", "use_bfloat16": True, "tf_legacy_loss": False, "pruned_heads": {},
    "chunk_size_feed_forward": 0, "is_encoder_decoder": False, "is_decoder": False,
    "cross_attention_hidden_size": None, "add_cross_attention": False, "tie_encoder_decoder": False,
    "max_length": 20, "min_length": 0, "do_sample": False, "early_stopping": False, "num_beams": 1,
    "num_beam_groups": 1, "diversity_penalty": 0.0, "temperature": 1.0, "top_k": 50, "top_p": 1.0,
    "typical_p": 1.0, "repetition_penalty": 1.0, "length_penalty": 1.0, "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None, "num_return_sequences": 1,
    "output_scores": False, "return_dict_in_generate": False, "forced_bos_token_id": None,
    "forced_eos_token_id": None, "remove_invalid_values": False, "exponential_decay_length_penalty": None,
    "suppress_tokens": None, "begin_suppress_tokens": None, "finetuning_task": None,
    "id2label": {"0": "LABEL_0", "1": "LABEL_1"}, "label2id": {"LABEL_0": 0, "LABEL_1": 1},
    "tokenizer_class": None, "prefix": None, "sep_token_id": None, "decoder_start_token_id": None,
    "task_specific_params": None, "problem_type": None, "_commit_hash": None, "pretraining_tp": 1,
}


def test_old_export_noise_in_llm_config_is_ignored(eight_b):
    config = read_config(eight_b)
    clean = native_config(config, 7, torch.float32).text_config
    config["llm_config"].update(OLD_EXPORT_NOISE)
    noisy = native_config(config, 7, torch.float32).text_config
    assert noisy.to_dict() == clean.to_dict()
    assert InternVLAdapter().expected_release_shapes(config) == release_shapes(config)


def test_every_release_tensor_maps_both_ways(eight_b):
    config = read_config(eight_b)
    expected = InternVLAdapter().expected_release_shapes(config)
    assert expected == release_shapes(config)
    for name in expected:
        natives = release_to_native(name)
        assert natives and {native_to_release(n, "internlm2") for n in natives} == {name}
    assert release_to_native("language_model.model.layers.1.attention.wqkv.weight") == [
        f"model.language_model.layers.1.self_attn.{p}_proj.weight" for p in "qkv"]
    assert release_to_native("language_model.output.weight") == ["lm_head.weight"]
    assert native_to_release("model.language_model.embed_tokens.weight", "internlm2") == \
        "language_model.model.tok_embeddings.weight"
    assert native_to_release("model.language_model.embed_tokens.weight") == \
        "language_model.model.embed_tokens.weight"  # the Qwen2 releases keep their names


def test_release_format_is_the_old_export(eight_b):
    config = read_config(eight_b)
    assert config["template"] == "internlm2_chat" and "torch_dtype" in config and "_commit_hash" in config
    assert config["llm_config"]["architectures"] == ["InternLM2ForCausalLM"]
    assert (eight_b / "tokenizer.model").is_file() and not (eight_b / "tokenizer.json").is_file()
    assert _tensor(eight_b, "vision_model.embeddings.class_embedding").dtype == torch.bfloat16
    assert _tensor(eight_b, "language_model.model.tok_embeddings.weight").dtype == torch.float32
    assert _tensor(eight_b, "mlp1.1.weight").dtype == torch.float32


# ------------------------------------------------------------------------------------------------ loading
def test_loads_on_llama_with_every_tensor_in_place(model, eight_b):
    llm = read_config(eight_b)["llm_config"]
    assert type(model.vlm.model.language_model).__name__ == "LlamaModel"
    params = dict(model.vlm.named_parameters())
    for layer in range(llm["num_hidden_layers"]):
        fused = _tensor(eight_b, f"language_model.model.layers.{layer}.attention.wqkv.weight")
        q, k, v = internlm2.split_wqkv(fused, llm["num_attention_heads"], llm["num_key_value_heads"])
        prefix = f"model.language_model.layers.{layer}."
        assert torch.equal(params[prefix + "self_attn.q_proj.weight"], q)
        assert torch.equal(params[prefix + "self_attn.k_proj.weight"], k)
        assert torch.equal(params[prefix + "self_attn.v_proj.weight"], v)
        assert torch.equal(params[prefix + "mlp.gate_proj.weight"],
                           _tensor(eight_b, f"language_model.model.layers.{layer}.feed_forward.w1.weight"))
        assert torch.equal(params[prefix + "mlp.down_proj.weight"],
                           _tensor(eight_b, f"language_model.model.layers.{layer}.feed_forward.w2.weight"))
        assert torch.equal(params[prefix + "post_attention_layernorm.weight"],
                           _tensor(eight_b, f"language_model.model.layers.{layer}.ffn_norm.weight"))
    assert torch.equal(model.vlm.lm_head.weight, _tensor(eight_b, "language_model.output.weight"))
    assert torch.equal(model.vlm.get_input_embeddings().weight,
                       _tensor(eight_b, "language_model.model.tok_embeddings.weight"))


def test_prompt_starts_with_bos_and_stops_on_im_end_or_eos(model, image):
    assert isinstance(model.tokenizer, InternLM2Tokenizer)
    inputs = model.adapter.build_inputs(model.processor, [Image.fromarray(image)], "Segment it.")
    tokenizer = model.tokenizer
    ids = inputs["input_ids"][0].tolist()
    assert ids[0] == tokenizer.bos_token_id == 1
    assert ids[1] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert model.adapter.eos_token_ids(model.config, tokenizer) == [2, tokenizer.convert_tokens_to_ids("<|im_end|>")]
    assert model.adapter.stop_words(model.config) == ("<|im_end|>",)


def test_answers_and_segments_by_itself(model, image):
    prediction = model.predict(image, "Please segment the cat.", max_new_tokens=16)
    assert prediction.masks.shape[0] == 1
    answer = model.answer([Image.fromarray(image)], "<image>Please segment the cat.", 16)
    assert answer.raw_text == "Sure, it is [SEG] .<|im_end|>"
    assert answer.text == "Sure, it is." and len(answer.seg_states) == 1


def test_batched_prompts_pad_with_eos_and_answer_as_one_at_a_time(model, image):
    """Batched generation left-pads with the tokenizer's pad id (InternLM2: ``</s>``, the eos) behind the BOS of
    the shorter prompt; every row's ids equal the single answer's."""
    pil = Image.fromarray(image)
    prompts = ["<image>Please segment the cat.", "<image>Segment the cat and the dog in this image please."]
    batch = model.answer_batch([pil, pil], prompts, 16, batch_size=None)
    for prompt, row in zip(prompts, batch):
        single = model.answer([pil], prompt, 16)
        assert row.token_ids.tolist() == single.token_ids.tolist() and row.raw_text == single.raw_text
        assert len(row.seg_states) == len(single.seg_states) == 1
        assert torch.allclose(row.seg_states[0], single.seg_states[0], atol=1e-4)
    assert model.pad_id == model.tokenizer.eos_token_id == 2


def test_video_prompt_joins_one_tile_per_key_frame_after_bos(model, image):
    frames = [np.roll(image, 8 * t, axis=1) for t in range(4)]
    pils = [Image.fromarray(f) for f in frames[:3]]
    inputs = model.adapter.build_inputs(model.processor, pils, "Segment the cat.")
    ids = inputs["input_ids"][0].tolist()
    context = model.tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert ids[0] == 1 and ids.count(context) == 3 * 256 and inputs["pixel_values"].shape[0] == 3
    video = model.predict_video(frames, "<image>Please segment the cat.", max_new_tokens=16, key_frames=3)
    assert video.raw_text == "Sure, it is [SEG] .<|im_end|>"
    assert video.masks.shape[:2] == (1, 4) and torch.isfinite(video.masks).all()


def test_26b_vision_tower_has_rms_norm_and_qk_norm_without_qkv_bias(twenty_six_b, image):
    model = sa2va.load_model(twenty_six_b, dtype=torch.float32)
    vision = model.vlm.config.vision_config
    assert vision.norm_type == "rms_norm" and vision.use_qk_norm and not vision.attention_bias
    layer = model.vlm.model.vision_tower.encoder.layer[0]
    assert layer.attention.q_proj.bias is None
    assert torch.equal(layer.attention.q_norm.weight.float(),
                       _tensor(twenty_six_b, "vision_model.encoder.layers.0.attn.q_norm.weight").float())
    assert model.predict(image, "Please segment the cat.", max_new_tokens=16).masks.shape[0] == 1


# ------------------------------------------------------------------------------- folders the pack refuses
def test_internlm2_folder_without_sentencepiece_model_is_refused(eight_b, tmp_path):
    folder = shutil.copytree(eight_b, tmp_path / "m")
    (folder / "tokenizer.model").unlink()
    with pytest.raises(ModelFolderError, match="tokenizer.model is missing"):
        sa2va.load_model(folder, dtype=torch.float32)


def test_internlm2_folder_with_another_template_is_refused(eight_b, tmp_path):
    folder = shutil.copytree(eight_b, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["template"] = "vicuna"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFolderError, match="chat template 'vicuna', which this pack does not implement"):
        sa2va.load_model(folder, dtype=torch.float32)


# ------------------------------------------------------------------------------------- catalog, downloads
def test_catalog_entries_and_file_lists():
    eight, twenty_six = catalog.find("Sa2VA-8B"), catalog.find("ByteDance/Sa2VA-26B")
    assert (eight.repo_id, eight.family, eight.download_gb, eight.shards) == ("ByteDance/Sa2VA-8B", "internvl",
                                                                              32.66, 7)
    assert (twenty_six.repo_id, twenty_six.family, twenty_six.download_gb, twenty_six.shards) == \
        ("ByteDance/Sa2VA-26B", "internvl", 92.04, 20)
    assert len(twenty_six.weight_files()) == 21
    for entry in (eight, twenty_six):
        files = required_files(entry.family, entry.tokenizer)
        assert "tokenizer.model" in files and "tokenizer.json" not in files


def test_sentencepiece_folder_is_complete_without_tokenizer_json(eight_b):
    assert missing_files(eight_b, required_files("internvl", "tokenizer.model")) == []
    assert missing_files(eight_b, required_files("internvl")) == []  # a hand-placed folder


# ------------------------------------------------------------------------------------------- device maps
def test_device_map_reaches_from_pretrained_and_answers_the_same(eight_b, model, image, monkeypatch):
    """A model larger than one GPU (Sa2VA-26B) is spread with an accelerate device map; on the CPU the plumbing is
    checked: the map reaches ``from_pretrained``, the fused q/k/v are still split in place, and the answer and its
    [SEG] state are the ones of a plain load."""
    import transformers

    original = transformers.InternVLForConditionalGeneration.from_pretrained.__func__
    seen = []

    def spy(cls, *args, **kwargs):
        seen.append(kwargs.get("device_map"))
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(transformers.InternVLForConditionalGeneration, "from_pretrained", classmethod(spy))
    device_map = {p: "cpu" for p in ("model.vision_tower", "model.multi_modal_projector", "model.language_model",
                                     "lm_head")}
    mapped = sa2va.load_model(eight_b, dtype=torch.float32, attn_implementation="eager", device_map=device_map)
    assert seen == [device_map]
    q = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(dict(mapped.vlm.named_parameters())[q], dict(model.vlm.named_parameters())[q])
    pil = Image.fromarray(image)
    ours, plain = (m.answer([pil], "<image>Please segment the cat.", 16) for m in (mapped, model))
    assert ours.token_ids.tolist() == plain.token_ids.tolist()
    assert torch.equal(ours.seg_states[0], plain.seg_states[0])


def test_unknown_device_map_is_refused(eight_b):
    with pytest.raises(sa2va.errors.InputError, match="device_map must be None, one of auto"):
        sa2va.load_model(eight_b, device_map="everywhere")
