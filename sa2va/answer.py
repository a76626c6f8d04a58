"""The language model's side of a prediction: the answer, its [SEG] hidden states, and its text and phrases.

:class:`SegStateCollector` keeps one hidden state per [SEG] during greedy generation; :class:`Answer` is what the
``Sa2VAModel.answer`` seam returns; :func:`clean_text` turns the generated ids into what users read, and
:func:`sa2va.labels.object_labels` names each [SEG] (``Answer.phrases``). None of this touches SAM2.
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
    (:func:`sa2va.labels.object_labels` of the answer and the prompt)."""

    token_ids: torch.Tensor
    raw_text: str
    text: str
    seg_states: list[torch.Tensor] = field(default_factory=list)
    phrases: list[str] = field(default_factory=list)


class SegStateCollector:
    """Keeps the final-layer hidden state of each decoding step whose *input* token is [SEG].

    A forward hook on the final norm stores the last position's state of the current step (pre-norm input or
    post-norm output); a logits processor, which runs after that forward and sees the ids fed so far, keeps the
    stored state when the last fed id is [SEG]. Scores pass through unchanged. Call :meth:`remove` when done."""

    def __init__(self, norm: torch.nn.Module, seg_id: int, pre_norm: bool) -> None:
        self.seg_id = seg_id
        self.pre_norm = pre_norm
        self.current: torch.Tensor | None = None
        self.states: list[torch.Tensor] = []
        self.handle = norm.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output) -> None:
        tensor = inputs[0] if self.pre_norm else output
        self.current = tensor[0, -1].detach()

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if int(input_ids[0, -1]) == self.seg_id and self.current is not None:
            self.states.append(self.current)
        return scores

    def remove(self) -> None:
        self.handle.remove()
        self.current = None


def clean_text(tokenizer, token_ids: torch.Tensor) -> str:
    """The answer without special tokens or [SEG] markers, whitespace tidied."""
    text = tokenizer.decode(token_ids, skip_special_tokens=True).replace(SEG_TOKEN, "")
    text = re.sub(r"[ \t]+([.,;:!?])", r"\1", text)
    return re.sub(r"[ \t]{2,}", " ", text).strip()
