"""The SentencePiece tokenizer of the InternLM2 releases (Sa2VA-8B / 26B) against upstream's remote
``InternLM2Tokenizer`` (tests/data/parity/internlm2_tokenizer: ids and decoded text on a few hundred strings, made
under transformers 4.49.0 by tests/parity_tools/make_reference_internlm2_tokenizer.py)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

pytest.importorskip("sentencepiece")

from sa2va.errors import ModelFolderError  # noqa: E402
from sa2va.families.internlm2_tokenizer import TOKENIZER_FILES, InternLM2Tokenizer  # noqa: E402
from sa2va.testing.internlm2 import write_tokenizer  # noqa: E402

DATA = Path(__file__).parent / "data" / "parity" / "internlm2_tokenizer"


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads((DATA / "reference.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def strings() -> list[str]:
    return json.loads((DATA / "strings.json").read_text(encoding="utf-8"))["strings"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("internlm2_tokenizer")
    write_tokenizer(folder)
    return folder


@pytest.fixture(scope="module")
def tokenizer(folder) -> InternLM2Tokenizer:
    return InternLM2Tokenizer(folder)


def test_tokenizer_files_are_the_bytes_the_reference_was_made_from(folder, reference):
    hashes = {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in TOKENIZER_FILES}
    assert hashes == reference["files_sha256"]


def test_prompt_ids_equal_upstream_on_every_string(tokenizer, strings, reference):
    assert len(strings) == len(reference["cases"]) >= 300
    wrong = [(s, tokenizer.encode(s), c["ids"]) for s, c in zip(strings, reference["cases"])
             if tokenizer.encode(s) != c["ids"]]
    assert not wrong, f"{len(wrong)} of {len(strings)} strings differ, e.g. {wrong[:3]}"


def test_decoded_text_equals_upstream_on_every_string(tokenizer, strings, reference):
    wrong = [(s, c) for s, c in zip(strings, reference["cases"])
             if tokenizer.decode(c["ids"]) != c["decoded"]
             or tokenizer.decode(c["ids"], skip_special_tokens=True) != c["decoded_skip_special"]]
    assert not wrong, f"{len(wrong)} of {len(strings)} decodes differ, e.g. {wrong[:3]}"


def test_special_ids_equal_upstream(tokenizer, reference):
    assert tokenizer.bos_token_id == reference["bos_token_id"] == 1
    assert tokenizer.eos_token_id == reference["eos_token_id"] == 2
    assert tokenizer.pad_token_id == reference["pad_token_id"]
    assert tokenizer.unk_token_id == reference["unk_token_id"]
    for token, token_id in reference["token_ids"].items():
        assert tokenizer.convert_tokens_to_ids(token) == token_id
        assert tokenizer.convert_ids_to_tokens(token_id) == token


def test_chat_prompt_starts_with_bos_and_keeps_added_tokens_whole(tokenizer):
    ids = tokenizer.encode("<|im_start|>user\n<img><IMG_CONTEXT><IMG_CONTEXT></img>Hi[SEG]<|im_end|>\n")
    assert ids[0] == tokenizer.bos_token_id
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens[1] == "<|im_start|>" and tokens.count("<IMG_CONTEXT>") == 2
    assert "[SEG]" in tokens and "<|im_end|>" in tokens
    assert tokenizer.encode("Hi", add_special_tokens=False)[0] != tokenizer.bos_token_id


def test_missing_model_file_is_a_clear_error(tmp_path):
    with pytest.raises(ModelFolderError, match="tokenizer.model is missing"):
        InternLM2Tokenizer(tmp_path)


def test_unreadable_model_file_is_a_clear_error(tmp_path, folder):
    for name in TOKENIZER_FILES:
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    (tmp_path / "tokenizer.model").write_bytes(b"not a model")
    with pytest.raises(ModelFolderError, match="sentencepiece cannot read tokenizer.model"):
        InternLM2Tokenizer(tmp_path)



def test_a_nul_character_piece_is_renamed_only_where_sentencepiece_refuses_it(tmp_path, folder):
    """The releases' tokenizer.model has a NUL-character piece, which sentencepiece 0.2.2 refuses. The pack loads
    the file as it is when it can, else with that piece renamed and unused: it is then never produced, a NUL
    character takes the byte-fallback piece (as sentencepiece 0.2.3 does) and every other text encodes as before."""
    import sentencepiece

    from sa2va.families.internlm2_tokenizer import rename_nul_pieces
    from sa2va.testing.internlm2 import sentencepiece_model

    proto, pieces = sentencepiece_model(nul_piece=True)
    assert pieces[259] == "\x00"
    plain, _ = sentencepiece_model()
    assert rename_nul_pieces(plain) == plain
    renamed = sentencepiece.SentencePieceProcessor()
    renamed.LoadFromSerializedProto(rename_nul_pieces(proto))
    assert renamed.get_piece_size() == len(pieces) and renamed.is_unused(259)
    assert renamed.id_to_piece(259) == "<nul piece 259>"
    assert renamed.encode("a\x00b<nul piece 259>", out_type=str)[:3] == ["a", "<0x00>", "b"]
    assert 259 not in renamed.encode("a\x00b<nul piece 259>")
    for name in TOKENIZER_FILES:
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    (tmp_path / "tokenizer.model").write_bytes(proto)
    tokenizer = InternLM2Tokenizer(tmp_path)  # whatever the installed version
    text = "Please segment the cat.\n"
    assert tokenizer.decode(tokenizer.encode(text)) == " <s>" + text
    assert tokenizer.sp.encode(text) == renamed.encode(text)
