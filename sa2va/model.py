"""Sa2VAModel: generate -> [SEG] hidden states -> projection -> SAM2 -> mask probabilities.

One engine for every family; the family adapter builds the language model, the prompt and the pixel inputs.
The reference algorithm is ``predict_forward`` of the upstream Sa2VA code (docs/design.md, "The reference
algorithm"); this implementation returns the same token ids and mask logits with less work:

* only the last layer's hidden state at [SEG] positions is kept during generation (a hook on the final norm and a
  score-neutral logits processor), not every layer at every step;
* the SAM2 image encoder runs once per image, not once per [SEG];
* all masks of an image are decoded in one mask-decoder call; no memory-encoder pass for single images.

The engine's public seams, on which ``predict``, ``predict_batch`` and ``predict_video`` are built (and which tests,
benchmarks and new features use): :meth:`Sa2VAModel.answer` (images + prompt -> :class:`~sa2va.answer.Answer`
with ids and [SEG] states), :meth:`Sa2VAModel.seg_embeddings` ([SEG] states -> SAM2 prompt tokens) and
:meth:`Sa2VAModel.masks_for` / :meth:`Sa2VAModel.masks_for_batch` ([SEG] states on images -> probabilities) and
:meth:`Sa2VAModel.objects_for` / :meth:`Sa2VAModel.decode_groups` (the same with SAM2's scores,
:class:`~sa2va.outputs.objects.ObjectMasks`).
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .hub import keymap
from .answer import SEG_TOKEN, Answer, SegStateCollector, StopWords, clean_text, strip_stop_words
from .cache import EncoderCache, content_key
from .compat import no_init_weights, require_accelerate, require_transformers
from .hub.checkpoint import ShardIndex, check_keys, check_shapes, detect_family, read_config, read_index
from .errors import Cancelled, InputError, ModelFolderError
from .families import FamilyAdapter, adapter_for
from .families.base import LoadOptions
from .inputs import FrameSource, check_request, to_pil
from .outputs.labels import object_labels
from .outputs.objects import ObjectMasks, object_score
from .requests import DEFAULT_MAX_NEW_TOKENS
from .quantization import QUANTIZATION_MODES, require_bitsandbytes
from .grounding.sam2 import GroundingHead, sam2_config, sam2_pixels, upsample_logits
from .grounding.sam3 import load_sam3
from .video import VideoOptions, VideoPrediction, segment_clip

logger = logging.getLogger(__name__)

#: images per SAM2 encoder call in predict_batch (bounds activation memory, ~0.4 GB per image at fp32 on CPU)
DEFAULT_ENCODE_BATCH = 8
#: requests per batched ``generate`` call in answer_batch / predict_batch (bounds the KV cache and the prefill)
DEFAULT_GENERATE_BATCH = 4
MODELS_DIR_ENV = "SA2VA_MODELS_DIR"
#: the dtype names the CLI, the nodes and the benchmarks offer; "auto" is :func:`default_dtype` of the device
DTYPES: dict[str, torch.dtype | None] = {"auto": None, "bf16": torch.bfloat16, "fp16": torch.float16,
                                         "fp32": torch.float32}
#: the named accelerate device maps :func:`load_model` accepts (a dict of module names to devices is accepted too)
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def _stop_if_cancelled(cancelled: Callable[[], bool] | None, stage: str) -> None:
    """Raise :class:`Cancelled` before ``stage`` starts when ``cancelled()`` says so."""
    if cancelled is not None and cancelled():
        raise Cancelled(f"Segmentation was cancelled before {stage}.")


#: SAM2 Hiera-L image encoder activations per image at fp32 (measured on the CPU, docs/performance.md)
SAM2_ENCODER_BYTES_FP32 = 400 * 2**20
#: SAM 3's tracker encoder (ViT-L/14 at 1008 px + neck) activations per image at fp32 (545 MiB measured on the CPU
#: with transformers 5.24, Sa2VA-Qwen3-VL-4B-SAM3's geometry)
SAM3_ENCODER_BYTES_FP32 = 560 * 2**20
#: visual tokens: one per 28x28 pixels within the processor's budget (Qwen-VL; InternVL's tiles are close to it)
_PIXELS_PER_TOKEN = 28 * 28
_PIXEL_BUDGET = (512 * _PIXELS_PER_TOKEN, 2048 * _PIXELS_PER_TOKEN)
_PROMPT_TOKENS = 64


@dataclass(frozen=True)
class MemoryProfile:
    """What the activation estimate needs to know about a model (its sizes, not its weights).

    :meth:`activation_bytes` is an upper-end estimate of the memory one prediction uses on top of the weights
    (docs/performance.md, "Memory the nodes ask ComfyUI for"): the key/value cache of the whole sequence, the
    prefill's hidden states and MLP activations, the vision tower's activations, the scores, and the grounding image
    encoder's activations (``grounding_bytes_fp32`` at fp32: SAM2 Hiera-L, or SAM 3's ViT for the SAM3 release)."""

    layers: int
    kv_heads: int
    head_dim: int
    hidden: int
    intermediate: int
    vocab: int
    vision_hidden: int
    dtype_bytes: int
    grounding_bytes_fp32: int = SAM2_ENCODER_BYTES_FP32

    def activation_bytes(self, height: int, width: int, max_new_tokens: int, images: int = 1) -> int:
        """Bytes of activations for ``images`` images of ``height`` x ``width`` and an answer of up to
        ``max_new_tokens`` tokens (one SAM2 encoder pass at a time)."""
        pixels = min(max(int(height) * int(width), _PIXEL_BUDGET[0]), _PIXEL_BUDGET[1])
        visual = images * pixels // _PIXELS_PER_TOKEN
        sequence = visual + _PROMPT_TOKENS + int(max_new_tokens)
        kv_cache = 2 * self.layers * self.kv_heads * self.head_dim * sequence * self.dtype_bytes
        prefill = (visual + _PROMPT_TOKENS) * (4 * self.hidden + 2 * self.intermediate) * self.dtype_bytes
        vision = 4 * (pixels // _PIXELS_PER_TOKEN) * self.vision_hidden * 8 * self.dtype_bytes
        scores = 2 * self.vocab * 4
        sam2 = self.grounding_bytes_fp32 * self.dtype_bytes // 4
        return int(kv_cache + prefill + vision + scores + sam2)


@dataclass
class Prediction:
    """Result of :meth:`Sa2VAModel.predict` for one image.

    text: the answer without special tokens and [SEG] markers; raw_text: the decoded answer with special tokens
    (as the reference returns it); token_ids: generated ids, 1-D LongTensor; masks: float32 ``[N, H, W]``
    sigmoid probabilities at the input resolution, one per [SEG] that was fed back into the model;
    phrases: N labels naming what each mask shows (:func:`sa2va.outputs.labels.object_labels`); iou_scores, object_scores:
    float32 ``[N]`` probabilities from the SAM2 decoder (:mod:`sa2va.outputs.objects`); ``scores`` is their product."""

    text: str
    raw_text: str
    token_ids: torch.Tensor
    masks: torch.Tensor
    phrases: list[str] = field(default_factory=list)
    iou_scores: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    object_scores: torch.Tensor = field(default_factory=lambda: torch.zeros(0))

    @property
    def scores(self) -> torch.Tensor:
        """``[N]`` the score of each object: predicted IoU times object probability (near 0 for an absent one)."""
        return object_score(self.iou_scores, self.object_scores)

    @classmethod
    def of(cls, answer: Answer, masks: torch.Tensor | ObjectMasks) -> "Prediction":
        """The prediction made of an answer and the masks (with their scores, given an
        :class:`~sa2va.outputs.objects.ObjectMasks`) of its [SEG] states."""
        if isinstance(masks, torch.Tensor):  # masks without scores: the scores stay empty
            masks = ObjectMasks(masks, torch.zeros(0), torch.zeros(0))
        return cls(text=answer.text, raw_text=answer.raw_text, token_ids=answer.token_ids, masks=masks.masks,
                   phrases=answer.phrases, iou_scores=masks.iou_scores, object_scores=masks.object_scores)


class Sa2VAModel:
    """A loaded Sa2VA model: native vision-language model + [SEG] projection + SAM2 grounding head.

    Build it with :func:`load_model`. It holds no per-call state but :attr:`encoder_cache` (:mod:`sa2va.cache`):
    the SAM2 image features and the vision tower's image embeddings of recent images, by content, so a second prompt
    on an image skips both encoders. One instance serves many predictions, from several callers."""

    def __init__(self, folder: Path, config: dict, adapter: FamilyAdapter, vlm: torch.nn.Module, processor,
                 projection: torch.nn.Module, grounding: GroundingHead, options: LoadOptions,
                 encoder_cache: EncoderCache | None = None) -> None:
        self.folder = folder
        self.config = config
        self.adapter = adapter
        self.vlm = vlm
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.projection = projection
        self.grounding = grounding
        self.options = options
        self.seg_id: int = self.tokenizer.convert_tokens_to_ids(SEG_TOKEN)
        #: encoder outputs by image content, bytes-bounded LRU (``encoder_cache.limit_bytes``; 0 turns it off)
        self.encoder_cache = encoder_cache if encoder_cache is not None else EncoderCache()
        self.adapter.cache_image_features(vlm, self.encoder_cache)

    @property
    def family(self) -> str:
        return self.adapter.name

    @property
    def device(self) -> torch.device:
        return self.grounding.device

    def memory_bytes(self) -> int:
        """Bytes the loaded weights actually take: the storage of every parameter and buffer of the language model,
        the projection and SAM2 (shared storage counted once), plus bitsandbytes' quantisation statistics
        (4-bit ``quant_state.absmax``, 8-bit ``SCB``). Exact for quantised models, whose modules kept in the compute
        dtype (vision tower, lm_head) a size estimate from the file would miss."""
        seen: set[tuple[str, int]] = set()
        total = 0

        def add(tensor) -> None:
            nonlocal total
            if not torch.is_tensor(tensor) or tensor.device.type == "meta":
                return
            storage = tensor.untyped_storage()
            key = (str(tensor.device), storage.data_ptr())
            if key not in seen:
                seen.add(key)
                total += storage.nbytes()

        for module in (self.vlm, self.projection, self.grounding.model):
            for tensor in list(module.parameters()) + list(module.buffers()):
                add(tensor)
                state = getattr(tensor, "quant_state", None)
                add(getattr(state, "absmax", None))
                add(getattr(tensor, "SCB", None))
        return total

    def memory_profile(self) -> MemoryProfile:
        """The sizes :meth:`MemoryProfile.activation_bytes` estimates activation memory from."""
        config = self.vlm.config
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        vision = getattr(config, "vision_config", None)
        heads = int(getattr(text, "num_attention_heads", 1))
        hidden = int(text.hidden_size)
        head_dim = getattr(text, "head_dim", None) or hidden // heads
        return MemoryProfile(layers=int(text.num_hidden_layers),
                             kv_heads=int(getattr(text, "num_key_value_heads", None) or heads),
                             head_dim=int(head_dim), hidden=hidden,
                             intermediate=int(getattr(text, "intermediate_size", 4 * hidden)),
                             vocab=int(text.vocab_size),
                             vision_hidden=int(getattr(vision, "hidden_size", hidden) if vision is not None else hidden),
                             dtype_bytes=torch.empty(0, dtype=self.options.dtype).element_size(),
                             grounding_bytes_fp32=SAM3_ENCODER_BYTES_FP32 if self.grounding.rules.name == "sam3"
                             else SAM2_ENCODER_BYTES_FP32)

    # ------------------------------------------------------------------------------------------ engine seams
    def prompt_inputs(self, images: list, prompt: str, regions: list | None = None) -> dict:
        """The language model's inputs (``input_ids``, pixels, ...) for ``images`` shown in order, then ``prompt``
        (``<image>`` markers are dropped: the family's template places the images). ``regions``: see
        :meth:`predict`. Useful to know the prompt length, e.g. to force an answer in tests."""
        return self.adapter.build_inputs(self.processor, [to_pil(image) for image in images],
                                         prompt.replace("<image>", ""), regions=regions)

    @torch.inference_mode()
    def answer(self, images: list, prompt: str, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
               logits_processor=None, stopping_criteria=None, regions: list | None = None) -> Answer:
        """Greedy answer to ``prompt`` about ``images`` (PIL images / HxWx3 uint8 arrays, shown in order), with the
        hidden state of every [SEG] that was fed back into the model.

        ``logits_processor`` and ``stopping_criteria`` are passed to ``generate`` unchanged (the latter is called
        once per generated token). A "[SEG]" typed in the prompt never requests a mask."""
        check_request(prompt, max_new_tokens)
        inputs = self.prompt_inputs(images, prompt, regions=regions)
        return self._generate(inputs, [prompt], max_new_tokens, logits_processor, stopping_criteria)[0]

    @torch.inference_mode()
    def answer_batch(self, images: list, prompts: str | list[str], max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                     logits_processor=None, stopping_criteria=None,
                     batch_size: int | None = DEFAULT_GENERATE_BATCH,
                     cancelled: Callable[[], bool] | None = None, regions: list | None = None) -> list[Answer]:
        """One :class:`~sa2va.answer.Answer` per image: ``prompts[i]`` (or the one ``prompt``) about ``images[i]``.

        Requests are generated together, up to ``batch_size`` per ``generate`` call (None: all at once), left-padded,
        with every row's [SEG] states collected; ids are those of :meth:`answer` one request at a time and the
        states equal up to float rounding (docs/performance.md). ``logits_processor`` and ``stopping_criteria`` see
        the whole batch ``[rows, length]`` (rows padded on the left with the tokenizer's pad id). ``cancelled()`` is
        polled before each ``generate`` call and raises :class:`~sa2va.errors.Cancelled` when it returns True (a
        stopping criterion ends the call in progress). ``regions``: one entry per request, each None or that
        request's region masks (see :meth:`predict`; InternVL3 models); requests with regions are batched with each
        other, those without with each other."""
        prompts = [prompts] * len(images) if isinstance(prompts, str) else list(prompts)
        if len(prompts) != len(images):
            raise InputError(f"Give one prompt, or one prompt per image: got {len(prompts)} prompts for "
                             f"{len(images)} images.")
        regions = [None] * len(images) if regions is None else list(regions)
        if len(regions) != len(images):
            raise InputError(f"Give one region list (or None) per request: got {len(regions)} for {len(images)} "
                             f"requests.")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise InputError(f"generate_batch_size must be a positive integer or None, got {batch_size!r}.")
        for prompt in prompts:
            check_request(prompt, max_new_tokens)
        step = batch_size or max(len(images), 1)
        answers: list[Answer] = []
        for start in range(0, len(images), step):
            if cancelled is not None and cancelled():
                raise Cancelled(f"Generation was cancelled after {start} of {len(images)} requests.")
            chunk = range(start, min(start + step, len(images)))
            rows = {i: self.prompt_inputs([images[i]], prompts[i], regions=regions[i]) for i in chunk}
            # rows with region embeddings and rows with pixels take different inputs: one generate call for each kind
            kinds: dict[tuple, list[int]] = {}
            for i in chunk:
                kinds.setdefault(tuple(sorted(rows[i])), []).append(i)
            found: dict[int, Answer] = {}
            for members in kinds.values():
                batch = [rows[i] for i in members]
                inputs = batch[0] if len(batch) == 1 else left_pad(batch, self.pad_id)
                found.update(zip(members, self._generate(inputs, [prompts[i] for i in members], max_new_tokens,
                                                         logits_processor, stopping_criteria)))
            answers += [found[i] for i in chunk]
        return answers

    @property
    def pad_id(self) -> int:
        """The id batched generation pads prompts with (on the left) and ends finished rows with."""
        eos = self.adapter.eos_token_ids(self.config, self.tokenizer)
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos[0]

    def _generate(self, inputs: dict, prompts: list[str], max_new_tokens: int, logits_processor,
                  stopping_criteria) -> list[Answer]:
        """Greedy ``generate`` on prepared (possibly left-padded) inputs of ``len(prompts)`` requests; one answer per
        row, its labels named from the row's prompt (:func:`~sa2va.outputs.labels.object_labels`)."""
        rows = len(prompts)
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        collector = SegStateCollector(self.adapter.final_norm(self.vlm), self.seg_id,
                                      self.adapter.seg_state == "pre_norm")
        processors = LogitsProcessorList(list(logits_processor or []))
        processors.append(collector)
        eos = self.adapter.eos_token_ids(self.config, self.tokenizer)
        generation = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                      eos_token_id=eos, pad_token_id=self.pad_id)
        device = next(self.vlm.parameters()).device
        self.encoder_cache.bind(device)
        inputs = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in inputs.items()}
        prompt_length = inputs["input_ids"].shape[1]
        criteria = StoppingCriteriaList(list(stopping_criteria or []))
        stop_words = self.adapter.stop_words(self.config)
        stop = StopWords(self.tokenizer, stop_words, prompt_length) if stop_words else None
        if stop is not None:
            criteria.append(stop)
        try:
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
            answers.append(Answer(token_ids=ids, raw_text=raw_text, text=text,
                                  seg_states=states,
                                  phrases=object_labels(raw_text, len(states), prompts[row].replace("<image>", ""))))
        return answers

    def seg_embeddings(self, seg_states: list[torch.Tensor]) -> torch.Tensor:
        """SAM2 prompt tokens ``[N, 256]`` (on the grounding head's device, in the projection's dtype) for N
        [SEG] hidden states: the release's projection (Linear, ReLU, Linear)."""
        dtype = next(self.projection.parameters()).dtype
        return self.projection(torch.stack(seg_states).to(device=self.grounding.device, dtype=dtype))

    @torch.inference_mode()
    def masks_for(self, image, seg_states: list[torch.Tensor],
                  cancelled: Callable[[], bool] | None = None) -> torch.Tensor:
        """Probabilities float32 ``[N, H, W]`` (on the CPU, at the image's size) for N [SEG] states on one image
        (PIL image / HxWx3 uint8 array); ``[0, H, W]`` when there are none. ``cancelled``: as
        :meth:`masks_for_batch`."""
        return self.masks_for_batch([image], [seg_states], cancelled=cancelled)[0]

    @torch.inference_mode()
    def masks_for_batch(self, images: list, seg_states: list[list[torch.Tensor]],
                        encode_batch_size: int | None = None,
                        cancelled: Callable[[], bool] | None = None) -> list[torch.Tensor]:
        """Probabilities ``[N_i, H_i, W_i]`` for each image and its [SEG] states.

        The SAM2 image encoder runs once per distinct image (by content) that has at least one state and is not in
        :attr:`encoder_cache`, batched over up to ``encode_batch_size`` such images (all at once when None); the
        masks of each image are decoded in one call. ``cancelled()`` is polled before every encoder call and every
        image's decoding; when it returns True, :class:`~sa2va.errors.Cancelled` is raised and no further stage
        starts."""
        groups = self.decode_groups(images, [[states] for states in seg_states], encode_batch_size, cancelled)
        return [group[0].masks for group in groups]

    @torch.inference_mode()
    def objects_for(self, image, seg_states: list[torch.Tensor],
                    cancelled: Callable[[], bool] | None = None) -> ObjectMasks:
        """:meth:`masks_for` with SAM2's predicted IoU and object probability of each mask."""
        return self.decode_groups([image], [[seg_states]], cancelled=cancelled)[0][0]

    @torch.inference_mode()
    def decode_groups(self, images: list, groups: list[list[list[torch.Tensor]]],
                      encode_batch_size: int | None = None,
                      cancelled: Callable[[], bool] | None = None) -> list[list[ObjectMasks]]:
        """Masks and scores for each image and each group of its [SEG] states (one group per request).

        ``groups[i]``: the state lists of image i, one per request. The SAM2 image encoder runs once per distinct
        image (by content) that has at least one state and is not in :attr:`encoder_cache`, batched over up to
        ``encode_batch_size`` such images (all at once when None); each group is decoded in one mask-decoder call.
        ``cancelled()`` is polled before every encoder call and every decoding (raises
        :class:`~sa2va.errors.Cancelled`). Returns ``[image][group]`` :class:`~sa2va.outputs.objects.ObjectMasks`."""
        images = [to_pil(image) for image in images]
        head = self.grounding
        empty = torch.zeros(0, dtype=torch.float32)
        out = [[ObjectMasks(torch.zeros(0, im.height, im.width, dtype=torch.float32), empty, empty) for _ in group]
               for im, group in zip(images, groups)]
        keys = {i: self.sam2_key(images[i]) for i, group in enumerate(groups) if any(group)}
        distinct = list(dict.fromkeys(keys.values()))
        first = {key: next(i for i in keys if keys[i] == key) for key in distinct}
        cache = self.encoder_cache
        cache.bind(next(self.vlm.parameters()).device)
        step = encode_batch_size or max(len(distinct), 1)
        for start in range(0, len(distinct), step):
            chunk = distinct[start:start + step]
            features = {key: cache.get(key) for key in chunk}
            todo = [key for key in chunk if features[key] is None]
            if todo:
                _stop_if_cancelled(cancelled, "the SAM2 image encoder")
                encoded = head.encode(sam2_pixels([images[first[key]] for key in todo], head.image_size))
                for j, key in enumerate(todo):
                    features[key] = encoded if len(todo) == 1 else encoded.select(j)
                    if cache.enabled:
                        cache.put(key, features[key] if len(todo) == 1 else features[key].clone())
            for i in (i for i in keys if keys[i] in features):
                for g, states in enumerate(groups[i]):
                    if not states:
                        continue
                    _stop_if_cancelled(cancelled, "the SAM2 mask decoder")
                    decoded = head.image_decode(features[keys[i]], self.seg_embeddings(states))
                    masks = upsample_logits(decoded.low_res_logits, head.image_size, images[i].height,
                                            images[i].width).sigmoid().cpu()
                    out[i][g] = ObjectMasks(masks, decoded.iou.float().cpu(),
                                            decoded.object_score[:, 0].float().sigmoid().cpu())
        return out

    def sam2_key(self, image: Image.Image) -> str:
        """The :attr:`encoder_cache` key of an image's SAM2 features: its pixels, mode and size, the encoder's input
        size, and the weights' device and dtype (and compile backend, which may round differently)."""
        head = self.grounding
        return content_key("sam2", image, head.image_size, head.device, head.dtype, head.compiled)

    # ------------------------------------------------------------------------------------------- predictions
    @torch.inference_mode()
    def predict(self, image, prompt: str, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                logits_processor=None, stopping_criteria=None, regions: list | None = None,
                cancelled: Callable[[], bool] | None = None) -> Prediction:
        """Answer ``prompt`` about ``image`` and segment every [SEG] of the answer.

        image: PIL image or HxWx3 uint8 array; prompt: text, with or without ``<image>``. ``logits_processor`` is
        passed to ``generate`` unchanged, and so are ``stopping_criteria`` (called once per generated token: the
        node layer uses them for per-token progress and cancel). A [SEG] generated as the very last token has no
        hidden state and gives no mask; a "[SEG]" typed in the prompt never requests a mask. ``regions``: region
        masks (HxW arrays of the image's size, non-zero inside) that the prompt can name as region1, region2, ...
        (InternVL3 models only). ``cancelled()``: polled after generation and before each SAM2 stage; when it
        returns True, :class:`~sa2va.errors.Cancelled` is raised (a stopping criterion ends generation itself)."""
        check_request(prompt, max_new_tokens)
        pil = to_pil(image)
        answer = self.answer([pil], prompt, max_new_tokens, logits_processor, stopping_criteria, regions=regions)
        _stop_if_cancelled(cancelled, "SAM2")
        return Prediction.of(answer, self.objects_for(pil, answer.seg_states, cancelled=cancelled))

    @torch.inference_mode()
    def predict_prompts(self, image, prompts: list[str], max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                        logits_processor=None, stopping_criteria=None, regions: list | None = None,
                        generate_batch_size: int | None = DEFAULT_GENERATE_BATCH,
                        cancelled: Callable[[], bool] | None = None) -> list[Prediction]:
        """:meth:`predict` for several requests on one image; returns one :class:`Prediction` per request, equal to
        running :meth:`predict` with each in turn (ids identical, masks within 1e-5).

        The answers are generated together, up to ``generate_batch_size`` requests per ``generate`` call
        (:meth:`answer_batch`; the vision tower's output for the image is computed once and reused through the encoder
        cache where the installed transformers allows it); the SAM2 image encoder runs once for all of them, and
        each request's masks are decoded in one call. ``regions`` (InternVL3 models) apply to every request.
        ``cancelled()``: polled before each ``generate`` call and before the masks (raises
        :class:`~sa2va.errors.Cancelled`)."""
        if isinstance(prompts, str) or not prompts:
            raise InputError("predict_prompts takes a non-empty list of prompts; use predict for one prompt.")
        for prompt in prompts:
            check_request(prompt, max_new_tokens)
        pil = to_pil(image)
        answers = self.answer_batch([pil] * len(prompts), list(prompts), max_new_tokens, logits_processor,
                                    stopping_criteria, batch_size=generate_batch_size, cancelled=cancelled,
                                    regions=[regions] * len(prompts))
        _stop_if_cancelled(cancelled, "SAM2")
        groups = self.decode_groups([pil], [[a.seg_states for a in answers]], cancelled=cancelled)[0]
        return [Prediction.of(answer, objects) for answer, objects in zip(answers, groups)]

    @torch.inference_mode()
    def predict_batch(self, images, prompt: str | list[str], max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                      logits_processor=None, stopping_criteria=None,
                      encode_batch_size: int | None = DEFAULT_ENCODE_BATCH,
                      generate_batch_size: int | None = DEFAULT_GENERATE_BATCH,
                      cancelled: Callable[[], bool] | None = None) -> list[Prediction]:
        """:meth:`predict` for a batch of images; returns one :class:`Prediction` per image.

        images: a list of PIL images / HxWx3 uint8 arrays, or a ``[B, H, W, 3]`` uint8 array; prompt: one prompt for
        every image, or one per image (the same image may appear several times with different prompts). The answers
        are generated in batches of up to ``generate_batch_size`` requests (:meth:`answer_batch`: same ids as
        :meth:`predict`, masks equal within 1e-5); the SAM2 image encoder then runs once per distinct image whose
        answer has [SEG] (in groups of ``encode_batch_size``, None for one group: each image in a group costs about
        0.4 GB of activations at fp32 on the SAM2 encoder), and the masks of each image are decoded in one call.
        ``logits_processor`` and ``stopping_criteria`` are passed to every ``generate`` and see the batch's rows;
        ``cancelled()`` is polled before each ``generate`` call and before the masks (raises
        :class:`~sa2va.errors.Cancelled`)."""
        for text in ([prompt] if isinstance(prompt, str) else prompt):
            check_request(text, max_new_tokens)
        if encode_batch_size is not None and (not isinstance(encode_batch_size, int) or encode_batch_size < 1):
            raise InputError(f"encode_batch_size must be a positive integer or None, got {encode_batch_size!r}.")
        if isinstance(images, (Image.Image, str)) or (isinstance(images, np.ndarray) and images.ndim != 4):
            raise InputError("predict_batch takes a list of images or a [B, H, W, 3] array; use predict for one "
                             "image.")
        pils = [to_pil(image) for image in images]
        answers = self.answer_batch(pils, prompt, max_new_tokens, logits_processor, stopping_criteria,
                                    batch_size=generate_batch_size, cancelled=cancelled)
        _stop_if_cancelled(cancelled, "SAM2")
        decoded = self.decode_groups(pils, [[a.seg_states] for a in answers], encode_batch_size, cancelled)
        return [Prediction.of(answer, groups[0]) for answer, groups in zip(answers, decoded)]

    @torch.inference_mode()
    def predict_video(self, frames, prompt: str, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                      key_frames: int = VideoOptions.key_frames, key_frame_spacing: str = VideoOptions.key_frame_spacing,
                      mode: str = VideoOptions.mode, offload_frames: bool = False, offload_state: bool = False,
                      logits_processor=None, stopping_criteria=None, progress=None, cancelled=None,
                      options: VideoOptions | None = None) -> VideoPrediction:
        """Answer ``prompt`` about a clip and segment every [SEG] of the answer in every frame (sa2va/video.py).

        frames: a ``[T, H, W, 3]`` uint8 array/tensor, a list of PIL images / HxWx3 uint8 arrays, or any sequence
        returning one such image per index (converted one at a time). The ``key_frames`` frames picked by
        ``key_frame_spacing`` ("first": 0..K-1 as the reference; "even": round(i*(T-1)/(K-1))) go to the language
        model and are SAM2's conditioning frames. mode "memory" (the reference) tracks the other frames with SAM2's
        memory; "consistent" decodes every frame from the [SEG] embedding alone (Sa2VA-i). offload_frames: move each
        frame's masks to the CPU as soon as it is done (else they stay on the device until the end); offload_state:
        keep SAM2's memory bank on the CPU (one frame's worth moves to the device at a time). ``options``: all of
        these as one :class:`~sa2va.video.VideoOptions` (it replaces the five keyword arguments when given).
        progress(done, total) is called after each frame; cancelled() is polled before each frame and raises
        :class:`~sa2va.errors.Cancelled` when it returns True. Returns a :class:`~sa2va.video.VideoPrediction` whose
        masks are float32 ``[N, T, H, W]`` probabilities at the size of frame 0."""
        if options is None:
            options = VideoOptions(key_frames=key_frames, key_frame_spacing=key_frame_spacing, mode=mode,
                                   offload_frames=offload_frames, offload_state=offload_state)
        check_request(prompt, max_new_tokens)
        options.validate()
        source = frames if isinstance(frames, FrameSource) else FrameSource(frames)
        return segment_clip(self, source, prompt, options, max_new_tokens=max_new_tokens,
                            logits_processor=logits_processor, stopping_criteria=stopping_criteria,
                            progress=progress, cancelled=cancelled)


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


def _projection(hidden: int) -> torch.nn.Sequential:
    return torch.nn.Sequential(torch.nn.Linear(hidden, hidden), torch.nn.ReLU(inplace=True),
                               torch.nn.Linear(hidden, 256), torch.nn.Dropout(0.0))


def _load_projection(folder: Path, index: ShardIndex, hidden: int, dtype: torch.dtype,
                     device: torch.device) -> torch.nn.Module:
    expected = {f"{keymap.PROJECTION_PREFIX}{k}": s for k, s in
                (("0.weight", (hidden, hidden)), ("0.bias", (hidden,)), ("2.weight", (256, hidden)),
                 ("2.bias", (256,)))}
    check_keys(set(expected), set(index.names(keymap.PROJECTION_PREFIX)), folder, "[SEG] projection")
    check_shapes(expected, index, folder, "[SEG] projection")
    state = {k[len(keymap.PROJECTION_PREFIX):]: v for k, v in index.iter_tensors(keymap.PROJECTION_PREFIX, dtype)}
    module = _projection(hidden).to(dtype)
    module.load_state_dict(state, strict=True)
    return module.to(device).eval()


def _load_grounding(folder: Path, config: dict, index: ShardIndex, dtype: torch.dtype,
                    device: torch.device, compile_encoder: bool | str = False) -> GroundingHead:
    """The grounding head of a release: SAM 3's tracker when the weights hold its ViT trunk (config.json has no
    marker; Sa2VA-Qwen3-VL-4B-SAM3), else SAM2."""
    if keymap.is_sam3_release(index.names(keymap.SAM2_PREFIX)):
        return load_sam3(folder, config, index, dtype, device, compile_encoder)
    return _load_sam2(folder, config, index, dtype, device, compile_encoder)


def _load_sam2(folder: Path, config: dict, index: ShardIndex, dtype: torch.dtype,
               device: torch.device, compile_encoder: bool | str = False) -> GroundingHead:
    from transformers import Sam2VideoModel

    sam_cfg = sam2_config(config.get("sam2_config"))
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in Sam2VideoModel(sam_cfg).state_dict().items()}
    release_names = keymap.sam2_release_names(shapes)
    present = {n[len(keymap.SAM2_PREFIX):] for n in index.names(keymap.SAM2_PREFIX)}
    # releases may name the fuser scale '.gamma' instead of '.g_weight'
    present_norm = {re.sub(r"\.gamma$", ".g_weight", n) for n in present}
    check_keys(release_names, present_norm, folder, "SAM2")
    stored = {n: tuple(index.tensors[keymap.SAM2_PREFIX + n].shape) for n in present}
    wrong = [(n, stored[n], shapes[native]) for n in present
             if (native := keymap.sam2_key_to_native(n)) in shapes and stored[n] != shapes[native]]
    if wrong:
        name, got, want = wrong[0]
        raise ModelFolderError(f"{folder}: SAM2 tensor {name} has shape {list(got)}, expected {list(want)}; the "
                               f"grounding encoder is not SAM2 Hiera-L v1 as config.json implies. Download the model "
                               f"again.")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with no_init_weights():
            model = Sam2VideoModel(sam_cfg)
    finally:
        torch.set_default_dtype(previous)
    # Stream every tensor straight into its parameter (cast on copy): no second copy of SAM2 is ever held.
    targets = model.state_dict()
    with torch.no_grad():
        for name, tensor in index.iter_tensors(keymap.SAM2_PREFIX):
            for native, row, value in keymap.sam2_tensor_to_native(name[len(keymap.SAM2_PREFIX):], tensor):
                target = targets[native] if row is None else targets[native][row:row + 1]
                target.copy_(value)
    return GroundingHead(model.to(device=device, dtype=dtype).eval(), compile_encoder=compile_encoder)


def resolve_folder(path_or_name: str | os.PathLike) -> Path:
    """A model folder path, or a folder name under ``$SA2VA_MODELS_DIR``."""
    path = Path(path_or_name).expanduser()
    if path.is_dir():
        return path
    base = os.environ.get(MODELS_DIR_ENV)
    if base and not path.is_absolute() and (Path(base) / path).is_dir():
        return Path(base) / path
    raise ModelFolderError(f"Model folder not found: {path_or_name}. Give the path of a downloaded Sa2VA model "
                           f"folder (or set {MODELS_DIR_ENV} to the folder that holds it).")


#: CUDA compute capability from which bfloat16 is native (Ampere); older GPUs only emulate it, slowly
BF16_MIN_CAPABILITY = (8, 0)


def default_dtype(device: str | torch.device) -> torch.dtype:
    """The compute dtype of ``dtype="auto"`` on ``device`` (docs/design.md): bf16 where that GPU runs it natively (CUDA
    compute capability 8.0 or newer, asked of that GPU, not of the current one), else fp16 on CUDA; fp32 on the CPU
    and every other device.

    ``torch.cuda.is_bf16_supported()`` is not used: it answers for the current device only and counts the slow
    emulation of pre-Ampere GPUs as support. On ROCm builds (no NVIDIA compute capability) torch's own answer for
    that GPU is used."""
    device = torch.device(device)
    if device.type != "cuda":
        return torch.float32
    index = device.index if device.index is not None else torch.cuda.current_device()
    if torch.version.hip:
        with torch.cuda.device(index):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if tuple(torch.cuda.get_device_capability(index)) >= BF16_MIN_CAPABILITY else torch.float16


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    """The compute dtype for ``dtype``: a torch floating dtype, a name of :data:`DTYPES`, or None / "auto" for
    :func:`default_dtype` of ``device``."""
    if isinstance(dtype, str) and dtype in DTYPES:
        dtype = DTYPES[dtype]
    if dtype is None:
        return default_dtype(device)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise InputError(f"dtype must be torch.float32, torch.bfloat16, torch.float16 or one of "
                         f"{', '.join(DTYPES)}, got {dtype!r}.")
    return dtype


def load_model(path_or_name: str | os.PathLike, device: str | torch.device = "cpu",
               dtype: torch.dtype | str | None = torch.bfloat16, quantization: str | None = None,
               attn_implementation: str | None = None, compile_sam2: bool | str = False,
               encoder_cache_mb: float | None = None, device_map: str | dict | None = None) -> Sa2VAModel:
    """Load a Sa2VA model folder in the release format onto ``device``.

    dtype: a torch dtype, a name of :data:`DTYPES` ("bf16", ...), or None / "auto" for :func:`default_dtype`. quantization: None, "8bit" or "4bit"
    (bitsandbytes; the language model only). attn_implementation: None means "sdpa"; "eager" for exact parity.
    compile_sam2: wrap the SAM2 image encoder in ``torch.compile`` (True for the default inductor backend, or a
    backend name); opt-in, worth it on CUDA for many images, as the first call compiles for minutes.
    encoder_cache_mb: byte limit of :attr:`Sa2VAModel.encoder_cache` in MiB (None: ``$SA2VA_ENCODER_CACHE_MB``, else
    :data:`sa2va.cache.DEFAULT_CACHE_MB`; 0 turns the cache off).
    device_map: None (the vision-language model on ``device``) or an accelerate device map for a model larger than
    one GPU (Sa2VA-26B): ``"auto"``, ``"balanced"``, ``"balanced_low_0"``, ``"sequential"`` or a dict of module-name
    prefixes to devices; SAM2 and the [SEG] projection stay on ``device``. The Sa2VA Loader node offers the named
    maps as ``gpu_split`` (such a model stays where it was placed).
    Never downloads: use :mod:`sa2va.hub.download` for that."""
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"Device {device} was requested but CUDA is not available to this PyTorch; use "
                             f"device='cpu' or install a CUDA build of PyTorch.")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    dtype = resolve_dtype(dtype, device)
    if quantization not in QUANTIZATION_MODES:
        raise InputError(f"quantization must be None, '8bit' or '4bit', got {quantization!r}.")
    compile_sam2 = False if compile_sam2 is None else compile_sam2
    if not isinstance(compile_sam2, (bool, str)) or compile_sam2 == "":
        raise InputError(f"compile_sam2 must be False, True or a torch.compile backend name such as 'inductor', "
                         f"got {compile_sam2!r}.")
    if encoder_cache_mb is not None and (isinstance(encoder_cache_mb, bool) or
                                         not isinstance(encoder_cache_mb, (int, float)) or encoder_cache_mb < 0):
        raise InputError(f"encoder_cache_mb must be a number of MiB >= 0 (0 turns the cache off), got "
                         f"{encoder_cache_mb!r}.")
    if not (device_map is None or isinstance(device_map, dict) or device_map in DEVICE_MAPS):
        raise InputError(f"device_map must be None, one of {', '.join(DEVICE_MAPS)} or a dict of module names to "
                         f"devices, got {device_map!r}.")
    require_transformers()
    if quantization:
        require_bitsandbytes(quantization)
    require_accelerate(device, quantization)
    folder = resolve_folder(path_or_name)
    config = read_config(folder)
    family = detect_family(config, folder)
    adapter = adapter_for(family)
    index = read_index(folder)
    options = LoadOptions(dtype=dtype, device=device, quantization=quantization,
                          attn_implementation=attn_implementation or "sdpa", device_map=device_map)
    processor = adapter.load_processor(folder, config)
    grounding = _load_grounding(folder, config, index, dtype, device, compile_sam2)
    projection = _load_projection(folder, index, adapter.hidden_size(config), dtype, device)
    vlm = adapter.load_vlm(folder, config, index, options)
    logger.info("Loaded %s (%s) on %s as %s%s", folder.name, family, device, dtype,
                f", {quantization}" if quantization else "")
    cache = EncoderCache(None if encoder_cache_mb is None else int(encoder_cache_mb * 2**20))
    return Sa2VAModel(folder, config, adapter, vlm, processor, projection, grounding, options, cache)
