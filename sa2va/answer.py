"""The language model's side of a prediction: the answer, its [SEG] hidden states, and its text and phrases.

:class:`SegStateCollector` keeps one hidden state per [SEG] during greedy generation; :class:`Answer` is what the
``Sa2VAModel.answer`` seam returns; :func:`clean_text` turns the generated ids into what users read, and
:func:`sa2va.outputs.labels.object_labels` names each [SEG] (``Answer.phrases``). None of this touches SAM2.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

SEG_TOKEN = "[SEG]"


@dataclass
class Answer:
    """The generated answer to one request (one image, or the key frames of a clip).

    token_ids: generated ids, 1-D LongTensor on the CPU; raw_text: the decoded answer with special tokens (as the
    reference returns it); text: without special tokens and [SEG] markers; seg_states: one final-layer hidden state
    ``[hidden]`` per [SEG] that was fed back into the model (a [SEG] generated as the very last token has none),
    in answer order, on the language model's device; phrases: one label per state naming what it points at
    (:func:`sa2va.outputs.labels.object_labels` of the answer and the prompt)."""

    token_ids: torch.Tensor
    raw_text: str
    text: str
    seg_states: list[torch.Tensor] = field(default_factory=list)
    phrases: list[str] = field(default_factory=list)


class SegStateCollector:
    """Keeps the final-layer hidden state of each decoding step whose *input* token is [SEG], row by row.

    A forward hook on the final norm stores the last position's state of every row of the current step (pre-norm
    input or post-norm output); a logits processor, which runs after that forward and sees the ids fed so far, keeps
    a row's stored state when that row's last fed id is [SEG]. With left padding the last position is a real token
    of every row, so batched generation works unchanged. Scores pass through unchanged. Call :meth:`remove` when
    done."""

    def __init__(self, norm: torch.nn.Module, seg_id: int, pre_norm: bool) -> None:
        self.seg_id = seg_id
        self.pre_norm = pre_norm
        self.current: torch.Tensor | None = None
        #: one list of states per batch row, in answer order
        self.rows: list[list[torch.Tensor]] = []
        self.handle = norm.register_forward_hook(self._hook)

    @property
    def states(self) -> list[torch.Tensor]:
        """The states of row 0 (the only row of an unbatched ``generate``)."""
        return self.rows[0] if self.rows else []

    def _hook(self, module, inputs, output) -> None:
        tensor = inputs[0] if self.pre_norm else output
        self.current = tensor[:, -1].detach()

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        while len(self.rows) < input_ids.shape[0]:
            self.rows.append([])
        if self.current is not None:
            for row in torch.nonzero(input_ids[:, -1] == self.seg_id).flatten().tolist():
                self.rows[row].append(self.current[row])
        return scores

    def remove(self) -> None:
        self.handle.remove()
        self.current = None


class StopWords:
    """A stopping criterion: stop a row when the answer it decoded so far ends with one of ``words``.

    The reference's ``StopWordStoppingCriteria``: the generated ids (those after ``prompt_length``) are decoded with
    special tokens kept, carriage returns and newlines are removed, and the text's tail is compared with each word.
    It catches stop words that the tokenizer spells with several tokens (``<|end|>`` of the ``phi3_chat`` template
    under a Qwen2 tokenizer). Rows of a batch stop on their own; :attr:`finished` maps a row to the number of tokens
    it had generated when it first stopped (``generate`` pads the row after that)."""

    def __init__(self, tokenizer, words: tuple[str, ...] | list[str], prompt_length: int) -> None:
        self.tokenizer = tokenizer
        self.words = tuple(words)
        self.prompt_length = prompt_length
        self.finished: dict[int, int] = {}

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        generated = input_ids.shape[1] - self.prompt_length
        done = []
        for row in range(input_ids.shape[0]):
            text = self.tokenizer.decode(input_ids[row, self.prompt_length:], skip_special_tokens=False)
            text = text.replace("\r", "").replace("\n", "")
            done.append(any(text.endswith(word) for word in self.words))
            if done[-1]:
                self.finished.setdefault(row, generated)  # generate keeps a stopped row stopped
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def strip_stop_words(text: str, words: tuple[str, ...] | list[str]) -> str:
    """``text`` without a stop word at its end (the user-facing answer never shows the template's end marker)."""
    for word in words:
        if word and text.endswith(word):
            return text[:-len(word)].rstrip()
    return text


def clean_text(tokenizer, token_ids: torch.Tensor) -> str:
    """The answer without special tokens or [SEG] markers, whitespace tidied."""
    text = tokenizer.decode(token_ids, skip_special_tokens=True).replace(SEG_TOKEN, "")
    text = re.sub(r"[ \t]+([.,;:!?])", r"\1", text)
    return re.sub(r"[ \t]{2,}", " ", text).strip()
