"""Loading release folders: both key layouts, dtypes, the untied head, and clear errors for broken folders."""
import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import sa2va
from sa2va.hub.checkpoint import read_index
from sa2va.errors import CheckpointKeyError, ModelFolderError


def _release_tensor(folder, name):
    index = read_index(folder)
    with safe_open(str(folder / index.tensors[name].shard), "pt") as handle:
        return handle.get_tensor(name)


def _copy(folder, tmp_path):
    target = tmp_path / folder.name
    shutil.copytree(folder, target)
    return target


def test_both_key_layouts_load_to_the_same_weights(checkpoint_factory, family):
    if family == "llava":
        pytest.skip("the LLaVA release has one key layout")
    v4 = sa2va.load_model(checkpoint_factory(family), dtype=torch.float32)
    legacy = sa2va.load_model(checkpoint_factory(family, layout="legacy"), dtype=torch.float32)
    a, b = v4.vlm.state_dict(), legacy.vlm.state_dict()
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_legacy_layout_really_is_legacy(checkpoint_factory):
    index = read_index(checkpoint_factory("qwen2_5_vl", layout="legacy"))
    assert "model.model.layers.0.self_attn.q_proj.weight" in index.tensors
    assert any(n.startswith("model.visual.") for n in index.tensors)
    assert not any(n.startswith("model.model.language_model.") for n in index.tensors)


def test_fp32_release_loads_exactly_despite_bf16_text_config(checkpoint_factory, family):
    """Trap 3: config.json's text_config says bfloat16 while the weights are fp32; loading as fp32 must not round."""
    if family == "llava":
        pytest.skip("the LLaVA release's text_config says float32 (tests/test_llava.py checks every tensor)")
    folder = checkpoint_factory(family)
    assert json.loads((folder / "config.json").read_text())["text_config"]["dtype"] == "bfloat16"
    model = sa2va.load_model(folder, dtype=torch.float32)
    stored = _release_tensor(folder, "model.model.language_model.embed_tokens.weight")
    loaded = model.vlm.model.language_model.embed_tokens.weight
    assert loaded.dtype == torch.float32
    assert torch.equal(loaded, stored)


def test_bf16_load_casts_every_part(checkpoint_factory, family):
    model = sa2va.load_model(checkpoint_factory(family), dtype=torch.bfloat16)
    for part in (model.vlm, model.projection, model.grounding.model):
        dtypes = {p.dtype for p in part.parameters()}
        assert dtypes == {torch.bfloat16}, dtypes
    stored = _release_tensor(checkpoint_factory(family), "model.model.language_model.embed_tokens.weight")
    assert torch.equal(model.vlm.model.language_model.embed_tokens.weight, stored.to(torch.bfloat16))


def test_bf16_language_model_with_fp32_sam2_release_loads(checkpoint_factory):
    folder = checkpoint_factory("qwen3_vl", weight_dtype=torch.bfloat16)
    index = read_index(folder)
    assert index.tensors["model.lm_head.weight"].dtype == "BF16"
    assert index.tensors["text_hidden_fcs.0.weight"].dtype == "F32"
    model = sa2va.load_model(folder, dtype=torch.float32)
    assert model.vlm.lm_head.weight.dtype == torch.float32


def test_lm_head_is_untied(model_factory, checkpoint_factory, family):
    model = model_factory(family)
    head = model.vlm.lm_head.weight
    embed = model.vlm.model.language_model.embed_tokens.weight
    assert head.data_ptr() != embed.data_ptr()
    assert not torch.equal(head, embed)
    assert torch.equal(head, _release_tensor(checkpoint_factory(family), "model.lm_head.weight"))


def test_sam2_and_projection_weights_are_the_release_tensors(model_factory, checkpoint_factory):
    folder = checkpoint_factory("qwen3_vl")
    model = model_factory("qwen3_vl")
    sam = model.grounding.model
    assert torch.equal(sam.memory_encoder.memory_fuser.layers[0].scale,
                       _release_tensor(folder, "grounding_encoder.sam2_model.memory_encoder.fuser.layers.0.g_weight"))
    point = "grounding_encoder.sam2_model.sam_prompt_encoder.point_embeddings.2.weight"
    assert torch.equal(sam.prompt_encoder.point_embed.weight[2:3], _release_tensor(folder, point))
    assert torch.equal(model.projection[2].weight, _release_tensor(folder, "text_hidden_fcs.2.weight"))


def test_default_sam2_is_hiera_l_v1_at_1024():
    from sa2va.grounding.sam2 import sam2_config

    config = sam2_config(None)
    assert config.image_size == 1024
    assert config.vision_config.backbone_config.blocks_per_stage == [2, 6, 36, 4]
    assert config.enable_temporal_pos_encoding_for_object_pointers is False
    assert config.enable_occlusion_spatial_embedding is False


def _rewrite_shard(folder, edit):
    """Apply ``edit(dict) -> dict`` to the first shard and fix the index."""
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[0]
    with safe_open(str(folder / shard), "pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    tensors = edit(tensors)
    save_file(tensors, str(folder / shard), metadata={"format": "pt"})
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != shard}
    index["weight_map"].update({k: shard for k in tensors})
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


def test_missing_tensor_is_named(checkpoint_factory, tmp_path):
    folder = _copy(checkpoint_factory("qwen3_vl"), tmp_path)
    _rewrite_shard(folder, lambda t: {k: v for k, v in t.items() if "layers.1.mlp.up_proj" not in k})
    with pytest.raises(CheckpointKeyError, match=r"1 missing \(e\.g\. model\.language_model\.layers\.1\.mlp\.up_proj"):
        sa2va.load_model(folder, dtype=torch.float32)


def test_extra_tensor_is_named(checkpoint_factory, tmp_path):
    folder = _copy(checkpoint_factory("qwen2_5_vl"), tmp_path)
    _rewrite_shard(folder, lambda t: {**t, "grounding_encoder.sam2_model.bogus.weight": torch.zeros(2)})
    with pytest.raises(CheckpointKeyError, match=r"SAM2 weights do not match.*1 unexpected \(e\.g\. bogus\.weight"):
        sa2va.load_model(folder, dtype=torch.float32)


def test_wrong_shape_is_named(checkpoint_factory, tmp_path):
    folder = _copy(checkpoint_factory("qwen3_vl"), tmp_path)
    _rewrite_shard(folder, lambda t: {**t, "text_hidden_fcs.2.bias": torch.zeros(128)})
    with pytest.raises(CheckpointKeyError, match=r"text_hidden_fcs\.2\.bias: \[128\] stored, \[256\] expected"):
        sa2va.load_model(folder, dtype=torch.float32)


def test_missing_shard(checkpoint_factory, tmp_path):
    folder = _copy(checkpoint_factory("qwen3_vl", max_shard_bytes=8 * 2**20), tmp_path)
    shards = sorted(folder.glob("*.safetensors"))
    assert len(shards) > 1
    shards[-1].unlink()
    with pytest.raises(ModelFolderError, match=rf"incomplete: missing {shards[-1].name}"):
        sa2va.load_model(folder)


def test_truncated_shard_is_detected_before_loading(checkpoint_factory, tmp_path):
    folder = _copy(checkpoint_factory("qwen3_vl"), tmp_path)
    shard = sorted(folder.glob("*.safetensors"))[0]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 1000])
    with pytest.raises(ModelFolderError, match="truncated"):
        sa2va.load_model(folder)


def test_missing_config(checkpoint_factory, tmp_path):
    folder = _copy(checkpoint_factory("qwen3_vl"), tmp_path)
    (folder / "config.json").unlink()
    with pytest.raises(ModelFolderError, match="No config.json"):
        sa2va.load_model(folder)


def test_unknown_model_type(checkpoint_factory, tmp_path):
    folder = _copy(checkpoint_factory("qwen3_vl"), tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "llava"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFolderError, match="model_type 'llava', expected 'sa2va_chat'"):
        sa2va.load_model(folder)


def test_pickle_weights_are_refused(tmp_path, checkpoint_factory):
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(checkpoint_factory("qwen3_vl") / "config.json", folder / "config.json")
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(ModelFolderError, match="pickle weights"):
        sa2va.load_model(folder)


def test_tokenizer_without_seg(checkpoint_factory, tmp_path):
    folder = _copy(checkpoint_factory("qwen3_vl"), tmp_path)
    tok = json.loads((folder / "tokenizer.json").read_text())
    tok["added_tokens"] = [t for t in tok["added_tokens"] if t["content"] != "[SEG]"]
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg["added_tokens_decoder"] = {k: v for k, v in cfg["added_tokens_decoder"].items() if v["content"] != "[SEG]"}
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    (folder / "added_tokens.json").write_text(json.dumps(
        {k: v for k, v in json.loads((folder / "added_tokens.json").read_text()).items() if k != "[SEG]"}))
    with pytest.raises(ModelFolderError, match=r"no \[SEG\] token"):
        sa2va.load_model(folder)


def test_folder_not_found():
    with pytest.raises(ModelFolderError, match="Model folder not found"):
        sa2va.load_model("/nonexistent/sa2va-folder")


def test_models_dir_env_resolves_names(checkpoint_factory, monkeypatch):
    folder = checkpoint_factory("qwen3_vl")
    monkeypatch.setenv("SA2VA_MODELS_DIR", str(folder.parent))
    model = sa2va.load_model(folder.name, dtype=torch.float32)
    assert model.folder == folder


def test_bad_dtype_and_quantization_values():
    with pytest.raises(sa2va.InputError, match="dtype"):
        sa2va.load_model("/x", dtype=torch.int8)
    with pytest.raises(sa2va.InputError, match="quantization"):
        sa2va.load_model("/x", quantization="3bit")


def test_cuda_request_without_cuda_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(sa2va.InputError, match="CUDA is not available"):
        sa2va.load_model("/x", device="cuda")
