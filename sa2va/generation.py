"""The language model's work: prompt inputs, greedy (batched) generation and the [SEG] states of each answer.

:class:`AnswerGenerator` is the half of a loaded model that turns requests into :class:`~sa2va.answer.Answer` s; the
grounding half is :class:`sa2va.decoding.MaskDecoder`. Requests are generated together, up to a batch size per
``generate`` call, padded on the left (:func:`left_pad`; attention mask 0 over the padding, the families compute
their positions from it); a row's answer ends at its first end token or stop word, as ``generate`` alone would end it.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .answer import SEG_TOKEN, Answer, SegStateCollector, StopWords, clean_text, strip_stop_words
from .cache import EncoderCache, UnitKeys, content_key, image_digest
from .errors import Cancelled, InputError
from .families import FamilyAdapter
from .inputs import to_pil
from .outputs.labels import object_labels

#: processor and image-processor attributes that change the pixels a vision unit is made of (part of its cache key)
PREPROCESSING_SETTINGS = ("min_tiles", "max_tiles", "tile_size", "tokens_per_tile", "image_size", "size", "crop_size",
                          "image_mean", "image_std", "patch_size", "temporal_patch_size", "merge_size", "min_pixels",
                          "max_pixels", "do_resize", "do_center_crop", "do_rescale", "rescale_factor", "do_normalize",
                          "resample", "do_convert_rgb")

#: requests per batched ``generate`` call (bounds the KV cache and the prefill's activations)
DEFAULT_GENERATE_BATCH = 4


@dataclass
class Row:
    """One request for generation: the images shown (in order), the prompt, and InternVL3's region masks (or
    None)."""

    images: list
    prompt: str
    regions: list | None = None


class AnswerGenerator:
    """Greedy answers with their [SEG] hidden states, from the family's native vision-language model (whose vision
    tower the family adapter serves from ``encoder_cache``)."""

    def __init__(self, adapter: FamilyAdapter, config: dict, vlm: torch.nn.Module, processor,
                 encoder_cache: EncoderCache) -> None:
        self.adapter = adapter
        self.encoder_cache = encoder_cache
        self.config = config
        self.vlm = vlm
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.seg_id: int = self.tokenizer.convert_tokens_to_ids(SEG_TOKEN)

    @property
    def device(self) -> torch.device:
        return next(self.vlm.parameters()).device

    @property
    def pad_id(self) -> int:
        """The id batched generation pads prompts with (on the left) and ends finished rows with."""
        eos = self.adapter.eos_token_ids(self.config, self.tokenizer)
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos[0]

    def prompt_inputs(self, images: list, prompt: str, regions: list | None = None) -> dict:
        """The language model's inputs (``input_ids``, pixels, ...) for ``images`` shown in order and ``prompt``; a
        ``<image>`` written in the prompt is placed as the family's release places it (the adapter's
        ``build_inputs``)."""
        return self.adapter.build_inputs(self.processor, [to_pil(image) for image in images], prompt, regions=regions)

    def preprocessing_key(self) -> str:
        """The processor settings that change the vision tower's input pixels (:data:`PREPROCESSING_SETTINGS`)."""
        parts = [self.adapter.name]
        for owner in (self.processor, getattr(self.processor, "image_processor", None)):
            if owner is not None:
                parts += [(type(owner).__name__, name, repr(getattr(owner, name))) for name in PREPROCESSING_SETTINGS
                          if hasattr(owner, name)]
        return repr(parts)

    def unit_keys(self, images: list, inputs: dict) -> UnitKeys | None:
        """The vision-cache keys of the units in ``inputs`` (the CPU prompt inputs of ``images``): one per image, or one
        per tile of a single tiled image, from the images' content hashes and :meth:`preprocessing_key`; None when
        the units cannot be told apart (the tower then runs uncached)."""
        grid = inputs.get("image_grid_thw")
        pixels = inputs.get("pixel_values")
        count = int(grid.shape[0]) if grid is not None else int(pixels.shape[0]) if pixels is not None else 0
        if count == 0:
            return UnitKeys(())
        settings = self.preprocessing_key()
        digests = [image_digest(image) for image in images]
        if count == len(images):
            keys = tuple(content_key("vision", digest, settings, len(images)) for digest in digests)
        elif len(images) == 1:
            keys = tuple(content_key("vision", digests[0], settings, "tile", j, count) for j in range(count))
        else:
            return None
        sizes = tuple(int(n) for n in grid.prod(-1).tolist()) if grid is not None else None  # on the CPU here
        return UnitKeys(keys, sizes)

    def answer_rows(self, rows: list[Row], max_new_tokens: int, batch_size: int | None = DEFAULT_GENERATE_BATCH,
                    logits_processor=None, stopping_criteria=None,
                    cancelled: Callable[[], bool] | None = None) -> list[Answer]:
        """One answer per row, generated ``batch_size`` rows per ``generate`` call (None: all at once).

        Rows with region embeddings and rows with pixels take different inputs, so each kind is generated in its own
        call. ``cancelled()`` is polled before each call (raises :class:`~sa2va.errors.Cancelled`)."""
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size < 1):
            raise InputError(f"generate_batch_size must be a positive integer or None, got {batch_size!r}.")
        step = batch_size or max(len(rows), 1)
        answers: list[Answer] = []
        for start in range(0, len(rows), step):
            if cancelled is not None and cancelled():
                raise Cancelled(f"Generation was cancelled after {start} of {len(rows)} requests.")
            chunk = range(start, min(start + step, len(rows)))
            inputs = {i: self.prompt_inputs(rows[i].images, rows[i].prompt, regions=rows[i].regions) for i in chunk}
            units = {i: self.unit_keys(rows[i].images, inputs[i]) for i in chunk}
            kinds: dict[tuple, list[int]] = {}
            for i in chunk:
                kinds.setdefault(tuple(sorted(inputs[i])), []).append(i)
            found: dict[int, Answer] = {}
            for members in kinds.values():
                batch = [inputs[i] for i in members]
                joined = batch[0] if len(batch) == 1 else left_pad(batch, self.pad_id)
                found.update(zip(members, self.generate(joined, [rows[i].prompt for i in members], max_new_tokens,
                                                        logits_processor, stopping_criteria,
                                                        joined_units([units[i] for i in members]))))
            answers += [found[i] for i in chunk]
        return answers

    def generate(self, inputs: dict, prompts: list[str], max_new_tokens: int, logits_processor=None,
                 stopping_criteria=None, units: UnitKeys | None = None) -> list[Answer]:
        """Greedy ``generate`` on prepared (possibly left-padded) inputs of ``len(prompts)`` requests; one answer per
        row, its labels named from the row's prompt (:func:`~sa2va.outputs.labels.object_labels`). ``units``: the
        vision-cache keys of the inputs' images (:meth:`unit_keys`); without them the vision tower runs uncached."""
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        rows = len(prompts)
        collector = SegStateCollector(self.adapter.final_norm(self.vlm), self.seg_id,
                                      self.adapter.seg_state == "pre_norm")
        processors = LogitsProcessorList(list(logits_processor or []))
        processors.append(collector)
        eos = self.adapter.eos_token_ids(self.config, self.tokenizer)
        generation = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                      eos_token_id=eos, pad_token_id=self.pad_id)
        device = self.device
        self.encoder_cache.bind(device)
        inputs = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in inputs.items()}
        prompt_length = inputs["input_ids"].shape[1]
        criteria = StoppingCriteriaList(list(stopping_criteria or []))
        stop_words = self.adapter.stop_words(self.config)
        stop = StopWords(self.tokenizer, stop_words, prompt_length) if stop_words else None
        if stop is not None:
            criteria.append(stop)
        try:
            with self.encoder_cache.serving(units):
                sequences = self.vlm.generate(**inputs, generation_config=generation, logits_processor=processors,
                                              stopping_criteria=criteria)
        finally:
            collector.remove()
        generated = sequences[:, prompt_length:].cpu()
        del inputs, sequences
        answers = []
        for row in range(rows):
            ids = generated[row]
            if stop is not None and row in stop.finished:  # ended by a stop word: generate padded the row after it
                ids = ids[:stop.finished[row]]
            if rows > 1:  # a row that ended early is padded after its end token: cut there, as generate alone stops
                ends = torch.nonzero(torch.isin(ids, torch.tensor(eos))).flatten()
                ids = ids[:int(ends[0]) + 1] if len(ends) else ids
            states = collector.rows[row] if row < len(collector.rows) else []
            raw_text = self.tokenizer.decode(ids, skip_special_tokens=False).strip()
            text = strip_stop_words(clean_text(self.tokenizer, ids), stop_words)
            answers.append(Answer(token_ids=ids, raw_text=raw_text, text=text, seg_states=states,
                                  phrases=object_labels(raw_text, len(states), prompts[row].replace("<image>", ""))))
        return answers


def joined_units(rows: list[UnitKeys | None]) -> UnitKeys | None:
    """The unit keys of rows batched by :func:`left_pad` (pixels concatenated in row order); None if any is."""
    if any(r is None for r in rows):
        return None
    sizes = [r.sizes for r in rows if r.keys]
    return UnitKeys(tuple(k for r in rows for k in r.keys),
                    tuple(n for s in sizes for n in s) if sizes and all(s is not None for s in sizes) else None)


def left_pad(rows: list[dict], pad_id: int) -> dict:
    """One batch of prompt inputs from several one-request inputs (each ``input_ids`` ``[1, P_i]``).

    Token-aligned tensors (``input_ids``, ``attention_mask``, any ``[1, P_i]`` tensor, and ``inputs_embeds``
    ``[1, P_i, H]``) are padded on the left to the longest prompt (``pad_id`` for the ids, 0 for the rest, so the
    attention mask is 0 over the padding) and stacked; every other tensor (pixels, image grids) is concatenated along
    its first axis, in row order. All rows must hold the same keys."""
    length = max(int(r["input_ids"].shape[1]) for r in rows)
    if any(set(r) != set(rows[0]) for r in rows):
        raise InputError("These inputs cannot be batched (the rows hold different inputs); run the requests one at "
                         "a time.")
    out: dict = {}
    for key in rows[0]:
        values = [r[key] for r in rows]
        if not all(torch.is_tensor(v) for v in values):
            raise InputError(f"These inputs cannot be batched ({key}); run the requests one at a time.")
        if key == "inputs_embeds":
            out[key] = torch.cat([torch.nn.functional.pad(v, (0, 0, length - v.shape[1], 0)) for v in values])
        elif all(v.ndim == 2 and v.shape == r["input_ids"].shape for v, r in zip(values, rows)):
            fill = pad_id if key == "input_ids" else 0
            out[key] = torch.cat([torch.nn.functional.pad(v, (length - v.shape[1], 0), value=fill) for v in values])
        else:
            out[key] = torch.cat(values)
    return out
