"""The tokenizer of the InternLM2-based Sa2VA releases (Sa2VA-8B, Sa2VA-26B), without remote code.

These releases ship a SentencePiece ``tokenizer.model`` with ``tokenizer_config.json``, ``special_tokens_map.json``
and ``added_tokens.json``, and no ``tokenizer.json``; their ``tokenizer_config.json`` names a remote
``InternLM2Tokenizer`` class (a slow tokenizer on transformers' Python base class). :class:`InternLM2Tokenizer`
reproduces what that class returns under transformers 4.49, the version upstream's InternLM2 code runs under
(docs/formats.md, "InternLM2 releases"):

* encode: the text is cut at every added token (leftmost, longest first; the tokens of ``added_tokens_decoder``,
  ``added_tokens.json`` and the special tokens), each piece between them is encoded by SentencePiece on its own,
  and BOS is prepended;
* decode: added tokens that are not special are joined to their neighbours with a space; special tokens that
  SentencePiece's vocabulary holds are written after a space and their preceding text; SentencePiece decodes the
  rest; the simple punctuation clean-up of transformers' ``clean_up_tokenization`` is always applied to the
  SentencePiece text (as the remote class does).

It needs the ``sentencepiece`` package (ComfyUI already requires it). The releases' ``tokenizer.model`` holds a
piece that is the NUL character: sentencepiece 0.2.2 refuses to load it (0.2.3 loads it as an unused piece, older
versions as a normal one). Only when the installed version refuses the file, the model is loaded with that piece
renamed and unused (:func:`rename_nul_pieces`), which encodes a NUL character as 0.2.3 does, with the byte-fallback
piece; a text without NUL characters is not affected. ``tests/test_internlm2_tokenizer.py`` compares the ids and
decoded text with the upstream tokenizer's on a few hundred strings.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from ..errors import ModelFolderError

logger = logging.getLogger(__name__)

#: transformers' special-token attributes, in its order
_SPECIAL_ATTRIBUTES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
#: the remote class's defaults for absent special tokens
_DEFAULTS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>"}
TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
#: SentencePiece's ModelProto.SentencePiece.Type UNUSED
_UNUSED = 5


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated protobuf")
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return value, pos
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _fields(data: bytes):
    """(field number, wire type, value, raw bytes) of each field of a serialised protobuf message; value is the
    payload of a length-delimited field, else None."""
    pos = 0
    while pos < len(data):
        start = pos
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        value = None
        if wire == 0:
            _, pos = _varint(data, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = _varint(data, pos)
            value = data[pos:pos + length]
            pos += length
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > len(data):
            raise ValueError("truncated protobuf")
        yield number, wire, value, data[start:pos]


def _string_field(number: int, text: str) -> bytes:
    data = text.encode("utf-8")
    return _encode_varint(number << 3 | 2) + _encode_varint(len(data)) + data


def rename_nul_pieces(proto: bytes) -> bytes:
    """A serialised SentencePiece ``ModelProto`` in which every piece that is the NUL character is renamed
    ``<nul piece ID>`` and typed UNUSED, so that sentencepiece versions that refuse NUL pieces (0.2.2) load it and
    none produces it (an unused piece of several characters takes part in no merge). Everything else is copied byte
    for byte; a model without such a piece is returned unchanged."""
    out, changed, index = bytearray(), False, 0
    for number, wire, value, raw in _fields(proto):
        if number == 1 and wire == 2:
            if any(n == 1 and v == b"\x00" for n, _, v, _ in _fields(value)):
                piece = _string_field(1, f"<nul piece {index}>") + \
                    b"".join(r for n, _, _, r in _fields(value) if n not in (1, 3)) + \
                    _encode_varint(3 << 3) + _encode_varint(_UNUSED)
                raw = _encode_varint(1 << 3 | 2) + _encode_varint(len(piece)) + piece
                changed = True
            index += 1
        out += raw
    return bytes(out) if changed else proto


def _content(value) -> str | None:
    """A token of a config file: a string or an ``AddedToken`` dict."""
    if value is None or isinstance(value, str):
        return value
    return value.get("content")


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def clean_up_tokenization(text: str) -> str:
    """transformers' ``clean_up_tokenization``: no space before simple punctuation and English contractions."""
    for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                          (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(before, after)
    return text


class InternLM2Tokenizer:
    """SentencePiece tokenizer of a Sa2VA InternLM2 release folder (the interface the pack uses: ``encode``,
    ``decode``, ``convert_tokens_to_ids``, ``convert_ids_to_tokens`` and the special-token ids)."""

    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder)
        try:
            import sentencepiece
        except ImportError as exc:
            raise ModelFolderError(f"{folder}: this model's tokenizer is a SentencePiece tokenizer.model, which needs "
                                   f"the sentencepiece package: pip install sentencepiece") from exc
        if not (folder / "tokenizer.model").is_file():
            raise ModelFolderError(f"{folder}: tokenizer.model is missing. Copy tokenizer.model, "
                                   f"tokenizer_config.json, special_tokens_map.json and added_tokens.json from the "
                                   f"model repository.")
        proto = (folder / "tokenizer.model").read_bytes()
        self.sp = sentencepiece.SentencePieceProcessor()
        try:
            try:
                self.sp.LoadFromSerializedProto(proto)
            except RuntimeError as exc:
                if "null character" not in str(exc):
                    raise
                logger.info("sentencepiece %s refuses the NUL-character piece of %s; loading it renamed and unused",
                            getattr(sentencepiece, "__version__", "?"), folder / "tokenizer.model")
                self.sp = sentencepiece.SentencePieceProcessor()
                self.sp.LoadFromSerializedProto(rename_nul_pieces(proto))
        except (RuntimeError, ValueError) as exc:
            raise ModelFolderError(f"{folder}: sentencepiece cannot read tokenizer.model ({exc}); the file is "
                                   f"damaged or incomplete. Download it again.") from exc
        config = _read_json(folder / "tokenizer_config.json")
        special_map = _read_json(folder / "special_tokens_map.json")
        settings = {**config, **special_map}
        self.vocab_size = int(self.sp.get_piece_size())
        self.add_bos_token = bool(config.get("add_bos_token", True))
        self.add_eos_token = bool(config.get("add_eos_token", False))
        self.special: dict[str, str] = {}
        for attribute in _SPECIAL_ATTRIBUTES:
            value = _content(settings.get(attribute, _DEFAULTS.get(attribute)))
            if value is not None:
                self.special[attribute] = value
        self.additional_special_tokens = [_content(t) for t in settings.get("additional_special_tokens") or []]
        # added tokens: tokenizer_config's added_tokens_decoder, then added_tokens.json, then the special tokens
        self._decoder: dict[int, str] = {}
        self._strip: dict[str, tuple[bool, bool]] = {}
        for index, token in (config.get("added_tokens_decoder") or {}).items():
            self._decoder[int(index)] = token["content"]
            self._strip[token["content"]] = (bool(token.get("lstrip")), bool(token.get("rstrip")))
        for content, index in _read_json(folder / "added_tokens.json").items():
            self._decoder[int(index)] = content
            self._strip[content] = (False, False)
        self._encoder = {content: index for index, content in self._decoder.items()}
        for token in list(self.special.values()) + self.additional_special_tokens:
            if token not in self._encoder:
                index = self.sp.piece_to_id(token)
                if self.sp.id_to_piece(index) != token:
                    index = len(self.get_vocab())
                self._decoder[index], self._encoder[token] = token, index
                self._strip.setdefault(token, (False, False))
        self.all_special_tokens = list(dict.fromkeys(list(self.special.values()) + self.additional_special_tokens))
        self.all_special_ids = [self.convert_tokens_to_ids(t) for t in self.all_special_tokens]
        self._split = re.compile("(" + "|".join(re.escape(t) for t in
                                               sorted(self._encoder, key=lambda t: (-len(t), t))) + ")")
        self._legacy_added = (set(self._encoder) - set(self.all_special_tokens)) | \
            {t for t in self.additional_special_tokens if self.convert_tokens_to_ids(t) >= self.vocab_size}

    # ------------------------------------------------------------------------------------------- vocabulary
    def get_vocab(self) -> dict[str, int]:
        vocab = {self.sp.id_to_piece(i): i for i in range(self.vocab_size)}
        vocab.update(self._encoder)
        return vocab

    def __len__(self) -> int:
        return max(self.vocab_size, max(self._decoder, default=-1) + 1)

    def _id(self, token: str) -> int:
        if token in self._encoder:
            return self._encoder[token]
        return int(self.sp.piece_to_id(token))

    def convert_tokens_to_ids(self, tokens: str | list[str]) -> int | list[int]:
        """Added tokens by their added id, other strings by SentencePiece (``unk`` if it has no such piece)."""
        if isinstance(tokens, str):
            return self._id(tokens)
        return [self._id(t) for t in tokens]

    def _token(self, index: int) -> str:
        return self._decoder[index] if index in self._decoder else self.sp.id_to_piece(index)

    def convert_ids_to_tokens(self, ids, skip_special_tokens: bool = False) -> str | list[str]:
        if isinstance(ids, int):
            return self._token(ids)
        special = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._token(int(i)) for i in ids if int(i) not in special]

    def _special_id(self, attribute: str) -> int | None:
        token = self.special.get(attribute)
        return None if token is None else self._id(token)

    @property
    def bos_token_id(self) -> int:
        return int(self.sp.bos_id())

    @property
    def eos_token_id(self) -> int:
        return int(self.sp.eos_id())

    @property
    def unk_token_id(self) -> int | None:
        return self._special_id("unk_token")

    @property
    def pad_token_id(self) -> int | None:
        return self._special_id("pad_token")

    @property
    def eos_token(self) -> str | None:
        return self.special.get("eos_token")

    # ------------------------------------------------------------------------------------------------ encode
    def tokenize(self, text: str) -> list[str]:
        """Added tokens whole (their lstrip/rstrip flags applied to the neighbouring text), SentencePiece pieces of
        the text between them."""
        parts = self._split.split(text)
        for i, part in enumerate(parts):
            if i % 2 == 1:
                lstrip, rstrip = self._strip.get(part, (False, False))
                if rstrip and i + 1 < len(parts):
                    parts[i + 1] = parts[i + 1].lstrip()
                if lstrip and i > 0:
                    parts[i - 1] = parts[i - 1].rstrip()
        tokens: list[str] = []
        for i, part in enumerate(parts):
            if not part:
                continue
            if i % 2 == 1:
                tokens.append(part)
            else:
                tokens.extend(self.sp.encode(part, out_type=str))
        return tokens

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; BOS first (and EOS last if the config asks) when ``add_special_tokens``."""
        ids = self.convert_tokens_to_ids(self.tokenize(text))
        if add_special_tokens:
            ids = ([self.bos_token_id] if self.add_bos_token else []) + ids + \
                ([self.eos_token_id] if self.add_eos_token else [])
        return ids

    # ------------------------------------------------------------------------------------------------ decode
    def _pieces_to_string(self, tokens: list[str]) -> str:
        """The remote class's ``convert_tokens_to_string``: each special token after a space and the
        SentencePiece text before it, then the clean-up."""
        pieces: list[str] = []
        out, previous_special = "", False
        for token in tokens:
            if token in self.all_special_tokens:
                if not previous_special:
                    out += " "
                out += self.sp.decode(pieces) + token
                previous_special, pieces = True, []
            else:
                pieces.append(token)
                previous_special = False
        return clean_up_tokenization(out + self.sp.decode(pieces))

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """Text of token ids (a list or a 1-D tensor), as the remote class decodes it."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        if isinstance(ids, int):
            ids = [ids]
        texts: list[str] = []
        current: list[str] = []
        for token in self.convert_ids_to_tokens(ids, skip_special_tokens=skip_special_tokens):
            if token in self._legacy_added:
                if current:
                    text = self._pieces_to_string(current)
                    if text:
                        texts.append(text)
                    current = []
                texts.append(token)
            else:
                current.append(token)
        if current:
            texts.append(self._pieces_to_string(current))
        return " ".join(texts)

    def batch_decode(self, sequences, skip_special_tokens: bool = False) -> list[str]:
        return [self.decode(s, skip_special_tokens=skip_special_tokens) for s in sequences]


__all__ = ["TOKENIZER_FILES", "InternLM2Tokenizer", "clean_up_tokenization", "rename_nul_pieces"]
