"""Issue 13, SAM2 releases: Sa2VA-Qwen3-VL-2B, Sa2VA-1B (single file, qwen_chat) and Sa2VA-4B (phi3_chat).

Their catalog entries and file lists, the chat template read from config.json (a template the pack does not implement
is refused at load time), the text stop word of phi3_chat, the single-file layout, the 2B's geometry and untied
head, folders the pack cannot run (a clear error naming what is unsupported) and fine-tunes in arbitrary folders."""
import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import sa2va
from pack import pack_module
from sa2va.hub import catalog
from sa2va.answer import StopWords, strip_stop_words
from sa2va.hub.checkpoint import read_config, read_index
from sa2va.hub.download import missing_files, required_files
from sa2va.errors import CheckpointKeyError, ModelFolderError
from sa2va.families.internvl import TEMPLATES, InternVLAdapter
from sa2va.testing import ForceTokens

#: a tiny language model shaped like Sa2VA-Qwen3-VL-2B's relative to the 4B's (narrower, fewer layers, fewer heads)
QWEN3_VL_2B_SHAPE = {"hidden_size": 32, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "num_key_value_heads": 1, "head_dim": 16}


def _copy(folder, target):
    shutil.copytree(folder, target)
    return target


def _edit_config(folder, edit):
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))


# ------------------------------------------------------------------------------------------------ catalog
def test_catalog_has_the_new_sam2_releases_with_their_file_lists():
    two_b, one_b, four_b = (catalog.find(n) for n in ("Sa2VA-Qwen3-VL-2B", "ByteDance/Sa2VA-1B", "sa2va-4b"))
    assert (two_b.repo_id, two_b.family, two_b.download_gb) == ("ByteDance/Sa2VA-Qwen3-VL-2B", "qwen3_vl", 10.7)
    assert (one_b.repo_id, one_b.family, one_b.download_gb) == ("ByteDance/Sa2VA-1B", "internvl", 4.05)
    assert (four_b.repo_id, four_b.family, four_b.download_gb) == ("ByteDance/Sa2VA-4B", "internvl", 15.2)
    assert one_b.weight_files() == ("model.safetensors",)
    assert two_b.weight_files() == ("model.safetensors.index.json", "model-00001-of-00003.safetensors",
                                    "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors")
    assert len(four_b.weight_files()) == 1 + 4
    assert all(e.shards >= 1 for e in catalog.CATALOG)
    assert len({e.name for e in catalog.CATALOG}) == len(catalog.CATALOG) == 13
    sam3 = catalog.find("ByteDance/Sa2VA-Qwen3-VL-4B-SAM3")
    assert (sam3.name, sam3.family, sam3.download_gb) == ("Sa2VA-Qwen3-VL-4B-SAM3", "qwen3_vl", 21.2)


# ------------------------------------------------------------------------------------------- single file
@pytest.fixture(scope="module")
def one_b_folder(checkpoint_factory):
    return checkpoint_factory("internvl", single_file=True)


def test_single_file_layout_is_complete_and_loads_the_same_weights(one_b_folder, checkpoint_factory, model_factory):
    names = sorted(p.name for p in one_b_folder.glob("*.safetensors*"))
    assert names == ["model.safetensors"]
    assert missing_files(one_b_folder, required_files("internvl")) == []
    assert read_index(one_b_folder).shards == ["model.safetensors"]
    single = sa2va.load_model(one_b_folder, dtype=torch.float32)
    sharded = model_factory("internvl")
    a, b = single.vlm.state_dict(), sharded.vlm.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(single.projection[0].weight, sharded.projection[0].weight)
    assert single.processor.template is TEMPLATES["qwen_chat"]


# -------------------------------------------------------------------------------------------- phi3_chat
@pytest.fixture(scope="module")
def phi3(checkpoint_factory):
    return sa2va.load_model(checkpoint_factory("internvl", template="phi3_chat"), dtype=torch.float32)


def test_phi3_chat_prompt_is_upstreams_instruction(phi3, image):
    assert phi3.processor.template is TEMPLATES["phi3_chat"]
    prompt = phi3.tokenizer.decode(phi3.prompt_inputs([image], "Segment it.")["input_ids"][0])
    assert prompt.startswith("<|user|>\n<img><IMG_CONTEXT>")
    assert prompt.endswith("</img>Segment it.<|end|>\n<|assistant|>\n")
    assert "<|im_start|>" not in prompt and "system" not in prompt


def test_phi3_chat_answer_stops_at_the_text_end_marker(phi3, image):
    """The 4B's Qwen2 tokenizer has no <|end|> token: the answer ends when its text does, as upstream's
    StopWordStoppingCriteria decides; tokens forced after it are never generated."""
    tok = phi3.tokenizer
    seg = tok.convert_tokens_to_ids("[SEG]")
    end = tok.encode("<|end|>")
    assert len(end) > 1
    answer = tok.encode("Sure") + [seg] + tok.encode(".") + end
    length = phi3.prompt_inputs([image], "Segment it.")["input_ids"].shape[1]
    result = phi3.answer([image], "Segment it.", logits_processor=[ForceTokens(length, answer + tok.encode(" more"))])
    assert result.token_ids.tolist() == answer
    assert result.raw_text == "Sure[SEG].<|end|>"
    assert result.text == "Sure." and len(result.seg_states) == 1
    assert phi3.adapter.eos_token_ids(phi3.config, tok) == [tok.convert_tokens_to_ids("<|im_end|>")]


def test_phi3_chat_model_answers_and_segments_by_itself(phi3, image):
    prediction = phi3.predict(image, "Please segment the person.")
    assert prediction.raw_text == "Sure, it is[SEG].<|im_end|>"  # the tokenizer's eos also ends the answer
    assert prediction.masks.shape == (1, image.shape[0], image.shape[1])


def test_stop_words_read_the_decoded_text_like_upstream(phi3):
    tok = phi3.tokenizer
    prompt = tok.encode("<|assistant|>\n")
    criterion = StopWords(tok, ("<|end|>",), len(prompt))

    def stops(text):
        return bool(criterion(torch.tensor([prompt + tok.encode(text)]), None)[0])

    assert stops("Sure.<|end|>") and stops("Sure.<|end\n|>") and stops("<|end\r\n|>")
    assert not stops("Sure.") and not stops("<|end|> and more") and not stops("")
    assert not StopWords(tok, ("<|end|>",), 0)(torch.tensor([tok.encode("a\n")]), None)[0]
    assert strip_stop_words("Sure.<|end|>", ("<|end|>",)) == "Sure." and strip_stop_words("Sure.", ("x",)) == "Sure."


# ---------------------------------------------------------------------------- folders the pack cannot run
@pytest.mark.parametrize("template", ["moss_sft", "vicuna", None])
def test_unknown_template_is_refused_at_load(checkpoint_factory, tmp_path, template):
    folder = _copy(checkpoint_factory("internvl"), tmp_path / "m")
    _edit_config(folder, lambda c: c.update(template=template) if template else c.pop("template"))
    with pytest.raises(ModelFolderError, match=f"chat template {template!r}, which this pack does not implement"):
        sa2va.load_model(folder, dtype=torch.float32)


def test_dashed_template_name_is_read_as_upstream_does(checkpoint_factory):
    config = read_config(checkpoint_factory("internvl"))
    config["template"] = "phi3-chat"
    processor = InternVLAdapter().load_processor(checkpoint_factory("internvl"), config)
    assert processor.template is TEMPLATES["phi3_chat"]


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["llm_config"].update(architectures=["Phi3ForCausalLM"]), "InternVisionModel \\+ Phi3ForCausalLM"),
    (lambda c: c["vision_config"].pop("hidden_size"), "lacks vision_config.hidden_size"),
    (lambda c: c["llm_config"].pop("vocab_size"), "lacks llm_config.vocab_size"),
    (lambda c: (c.pop("llm_config"), c.pop("vision_config"),
                c.update(text_config={"model_type": "mistral"}, vision_config={"model_type": "siglip_vision_model"})),
     "cannot tell the model family.*'siglip_vision_model'.*'mistral'"),
    (lambda c: (c.pop("llm_config"), c.pop("vision_config"),
                c.update(text_config={"model_type": "llama"}, vision_config={"model_type": "clip_vision_model"})),
     "lacks text_config.hidden_size"),
])
def test_unsupported_folder_fails_at_load_naming_what_is_unsupported(checkpoint_factory, tmp_path, edit, message):
    folder = _copy(checkpoint_factory("internvl"), tmp_path / "m")
    _edit_config(folder, edit)
    with pytest.raises(ModelFolderError, match=message):
        sa2va.load_model(folder, dtype=torch.float32)


# ----------------------------------------------------------------------------------- fine-tunes, Qwen3-VL-2B
def test_finetune_of_a_known_family_loads_from_any_folder(checkpoint_factory, tmp_path, monkeypatch, image):
    folder = _copy(checkpoint_factory("qwen3_vl"), tmp_path / "models" / "sa2va" / "my_sa2va-qwen3vl-4b.ft-v2")
    _edit_config(folder, lambda c: c.update(_name_or_path="/data/work_dirs/sa2va_qwen3vl_4b_ft/hf"))
    model = sa2va.load_model(folder, dtype=torch.float32)
    assert model.family == "qwen3_vl"
    assert model.predict(image, "Segment it.", max_new_tokens=8).masks.shape[0] == 1
    loader = pack_module("nodes.loader")
    monkeypatch.setenv("SA2VA_MODELS_DIR", str(folder.parent))
    assert folder.name in loader.model_choices()
    assert loader.ensure_model_folder(folder.name) == folder


@pytest.fixture(scope="module")
def two_b_folder(checkpoint_factory):
    return checkpoint_factory("qwen3_vl", text_size=QWEN3_VL_2B_SHAPE)


def test_qwen3_vl_2b_geometry_comes_from_config(two_b_folder, tmp_path):
    """A config that says the head is tied (as the base Qwen3-VL-2B-Instruct does) still loads the release's own
    untied head, as for the 4B; the embeddings keep their stored values."""
    folder = _copy(two_b_folder, tmp_path / "Sa2VA-Qwen3-VL-2B")
    _edit_config(folder, lambda c: (c.update(tie_word_embeddings=True),
                                    c["text_config"].update(tie_word_embeddings=True)))
    model = sa2va.load_model(folder, dtype=torch.float32)
    text, vision = model.vlm.config.text_config, model.vlm.config.vision_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads) == (32, 2, 2)
    assert vision.out_hidden_size == 32 and model.projection[0].in_features == 32
    index = read_index(folder)
    with safe_open(str(folder / index.tensors["model.lm_head.weight"].shard), "pt") as handle:
        head = handle.get_tensor("model.lm_head.weight")
    embed_name = next(n for n in index.names() if n.endswith("embed_tokens.weight"))
    with safe_open(str(folder / index.tensors[embed_name].shard), "pt") as handle:
        embed = handle.get_tensor(embed_name)
    assert not torch.equal(head, embed)
    assert torch.equal(model.vlm.lm_head.weight, head.float())
    assert torch.equal(model.vlm.get_input_embeddings().weight, embed.float())
    assert model.vlm.lm_head.weight.data_ptr() != model.vlm.get_input_embeddings().weight.data_ptr()


def test_qwen3_vl_2b_without_its_lm_head_is_refused(two_b_folder, tmp_path):
    folder = _copy(two_b_folder, tmp_path / "Sa2VA-Qwen3-VL-2B")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shard = index["weight_map"].pop("model.lm_head.weight")
    with safe_open(str(folder / shard), "pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys() if k != "model.lm_head.weight"}
    save_file(tensors, str(folder / shard), metadata={"format": "pt"})
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointKeyError, match=r"1 missing \(e\.g\. lm_head\.weight\)"):
        sa2va.load_model(folder, dtype=torch.float32)
