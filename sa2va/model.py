"""Sa2VAModel: a loaded Sa2VA model and its public API.

One engine for every family; the family adapter builds the language model, the prompt and the pixel inputs. The
reference algorithm is ``predict_forward`` of the upstream Sa2VA code (docs/design.md, "The reference algorithm");
this implementation returns the same token ids and mask logits with less work:

* only the last layer's hidden state at [SEG] positions is kept during generation (a hook on the final norm and a
  score-neutral logits processor), not every layer at every step;
* the SAM2 image encoder runs once per image, not once per [SEG];
* all masks of an image are decoded in one mask-decoder call; no memory-encoder pass for single images.

The model is two halves and the engine call that plans their work: :class:`~sa2va.generation.AnswerGenerator`
(requests -> :class:`~sa2va.answer.Answer` with ids and [SEG] states), :class:`~sa2va.decoding.MaskDecoder` ([SEG]
states on images -> masks with SAM2's scores) and :func:`sa2va.engine.segment` (images x requests -> predictions).
:meth:`Sa2VAModel.segment` is that call; :meth:`Sa2VAModel.predict` the one-image convenience on top of it;
:meth:`Sa2VAModel.predict_video` the video path (:mod:`sa2va.video`). The seams (``answer``, ``answer_batch``,
``seg_embeddings``, ``masks_for``, ``objects_for``, ``decode_groups``) are public for tests, benchmarks and new
features. :func:`load_model` (in :mod:`sa2va.loading`) builds it.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from .activations import SAM2_ENCODER_BYTES_FP32, SAM3_ENCODER_BYTES_FP32, MemoryProfile
from .answer import Answer
from .cache import EncoderCache
from .decoding import MaskDecoder
from .engine import DEFAULT_ENCODE_BATCH, segment
from .families import FamilyAdapter
from .families.base import LoadOptions
from .generation import DEFAULT_GENERATE_BATCH, AnswerGenerator, Row
from .grounding.sam2 import GroundingHead
from .errors import InputError
from .inputs import FrameSource, check_request, to_pil
from .monitor import Monitor
from .outputs.objects import ObjectMasks
from .requests import DEFAULT_MAX_NEW_TOKENS
from .results import Prediction
from .tasks import DEFAULT_TASK, codebase, grounds, task_request, uses_prompt
from .video import VideoOptions, VideoPrediction, segment_clip


class Sa2VAModel:
    """A loaded Sa2VA model: native vision-language model + [SEG] projection + grounding head (SAM2 or SAM 3).

    It holds no per-call state but :attr:`encoder_cache` (:mod:`sa2va.cache`): the grounding image features and the
    vision tower's image embeddings of recent images, by content, so a second prompt on an image skips both
    encoders. One instance serves many predictions, from several callers."""

    def __init__(self, folder: Path, config: dict, adapter: FamilyAdapter, vlm: torch.nn.Module, processor,
                 projection: torch.nn.Module, grounding: GroundingHead, options: LoadOptions,
                 encoder_cache: EncoderCache | None = None) -> None:
        self.folder = folder
        self.config = config
        self.options = options
        #: encoder outputs by image content, bytes-bounded LRU (``encoder_cache.limit_bytes``; 0 turns it off)
        self.encoder_cache = encoder_cache if encoder_cache is not None else EncoderCache()
        self.generator = AnswerGenerator(adapter, config, vlm, processor, self.encoder_cache)
        self.decoder = MaskDecoder(projection, grounding, self.encoder_cache, lambda: self.generator.device)
        adapter.cache_image_features(vlm, self.encoder_cache)
        #: which grounded-caption instruction the release was trained with ("v1" or "v2", :func:`sa2va.tasks.codebase`)
        self.codebase = codebase(Path(folder).name, adapter.name, config)

    # the parts, by name
    adapter = property(lambda self: self.generator.adapter)
    vlm = property(lambda self: self.generator.vlm)
    processor = property(lambda self: self.generator.processor)
    tokenizer = property(lambda self: self.generator.tokenizer)
    seg_id = property(lambda self: self.generator.seg_id)
    pad_id = property(lambda self: self.generator.pad_id)
    projection = property(lambda self: self.decoder.projection)
    grounding = property(lambda self: self.decoder.grounding)

    @property
    def family(self) -> str:
        return self.adapter.name

    @property
    def device(self) -> torch.device:
        return self.grounding.device

    def memory_bytes(self) -> int:
        """Bytes the loaded weights actually take: the storage of every parameter and buffer of the language model,
        the projection and the grounding head (shared storage counted once), plus bitsandbytes' quantisation
        statistics (4-bit ``quant_state.absmax``, 8-bit ``SCB``). Exact for quantised models, whose modules kept in
        the compute dtype (vision tower, lm_head) a size estimate from the file would miss."""
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
        return MemoryProfile(layers=int(text.num_hidden_layers),
                             kv_heads=int(getattr(text, "num_key_value_heads", None) or heads),
                             head_dim=int(getattr(text, "head_dim", None) or hidden // heads), hidden=hidden,
                             intermediate=int(getattr(text, "intermediate_size", 4 * hidden)),
                             vocab=int(text.vocab_size),
                             vision_hidden=int(getattr(vision, "hidden_size", hidden) if vision is not None else hidden),
                             dtype_bytes=torch.empty(0, dtype=self.options.dtype).element_size(),
                             grounding_bytes_fp32=SAM3_ENCODER_BYTES_FP32 if self.grounding.rules.name == "sam3"
                             else SAM2_ENCODER_BYTES_FP32)

    # ------------------------------------------------------------------------------------------ engine seams
    def prompt_inputs(self, images: list, prompt: str, regions: list | None = None) -> dict:
        """The language model's inputs (``input_ids``, pixels, ...) for ``images`` shown in order, then ``prompt``
        (a ``<image>`` in it is placed as the family's release places it). Useful to know the prompt length,
        e.g. to force an answer in tests."""
        return self.generator.prompt_inputs(images, prompt, regions=regions)

    @torch.inference_mode()
    def answer(self, images: list, prompt: str, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
               logits_processor=None, stopping_criteria=None, regions: list | None = None) -> Answer:
        """Greedy answer to ``prompt`` (as written) about ``images`` (PIL images / HxWx3 uint8 arrays, shown in
        order), with the hidden state of every [SEG] that was fed back into the model. ``logits_processor`` and
        ``stopping_criteria`` are passed to ``generate`` unchanged. A "[SEG]" typed in the prompt never requests a
        mask."""
        check_request(prompt, max_new_tokens)
        inputs = self.prompt_inputs(images, prompt, regions=regions)
        return self.generator.generate(inputs, [prompt], max_new_tokens, logits_processor, stopping_criteria,
                                       self.generator.unit_keys(images, inputs))[0]

    @torch.inference_mode()
    def answer_batch(self, images: list, prompts: str | list[str], max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                     logits_processor=None, stopping_criteria=None,
                     batch_size: int | None = DEFAULT_GENERATE_BATCH,
                     cancelled: Callable[[], bool] | None = None, regions: list | None = None) -> list[Answer]:
        """One :class:`~sa2va.answer.Answer` per image: ``prompts[i]`` (or the one prompt) about ``images[i]``, up to
        ``batch_size`` requests per ``generate`` call (left-padded; ids equal to :meth:`answer`'s one at a time).
        ``regions``: one entry per request, None or its region masks. ``cancelled()`` is polled before each call."""
        prompts = [prompts] * len(images) if isinstance(prompts, str) else list(prompts)
        regions = [None] * len(images) if regions is None else list(regions)
        if len(prompts) != len(images) or len(regions) != len(images):
            raise InputError(f"Give one prompt, or one prompt per image, and one region list (or None) per request: "
                             f"got {len(prompts)} prompts and {len(regions)} region lists for {len(images)} images.")
        for prompt in prompts:
            check_request(prompt, max_new_tokens)
        rows = [Row([image], prompt, region) for image, prompt, region in zip(images, prompts, regions)]
        return self.generator.answer_rows(rows, max_new_tokens, batch_size, logits_processor, stopping_criteria,
                                          cancelled)

    def seg_embeddings(self, seg_states: list[torch.Tensor]) -> torch.Tensor:
        """SAM2 prompt tokens ``[N, 256]`` for N [SEG] hidden states (:meth:`MaskDecoder.seg_embeddings`)."""
        return self.decoder.seg_embeddings(seg_states)

    @torch.inference_mode()
    def decode_groups(self, images: list, groups: list[list[list[torch.Tensor]]],
                      encode_batch_size: int | None = None,
                      cancelled: Callable[[], bool] | None = None) -> list[list[ObjectMasks]]:
        """Masks and scores for each image and each group of its [SEG] states (:meth:`MaskDecoder.decode_groups`)."""
        return self.decoder.decode_groups(images, groups, encode_batch_size, cancelled)

    def objects_for(self, image, seg_states: list[torch.Tensor],
                    cancelled: Callable[[], bool] | None = None) -> ObjectMasks:
        """Masks ``[N, H, W]`` (CPU, float32 probabilities) with SAM2's predicted IoU and object probability for N
        [SEG] states on one image."""
        return self.decode_groups([image], [[seg_states]], cancelled=cancelled)[0][0]

    def masks_for(self, image, seg_states: list[torch.Tensor],
                  cancelled: Callable[[], bool] | None = None) -> torch.Tensor:
        """Probabilities float32 ``[N, H, W]`` (CPU, the image's size) for N [SEG] states on one image."""
        return self.objects_for(image, seg_states, cancelled).masks

    def sam2_key(self, image) -> str:
        """The encoder cache key of an image's grounding features (:meth:`MaskDecoder.image_key`)."""
        return self.decoder.image_key(to_pil(image))

    # ------------------------------------------------------------------------------------------- predictions
    def segment(self, images, requests: str | Sequence, regions: Sequence | None = None,
                max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, generate_batch_size: int | None = DEFAULT_GENERATE_BATCH,
                encode_batch_size: int | None = DEFAULT_ENCODE_BATCH, logits_processor=None, stopping_criteria=None,
                monitor: Monitor | None = None, task: str = DEFAULT_TASK) -> list[list[Prediction]]:
        """Segment ``images`` for ``requests``: the one engine call (:func:`sa2va.engine.segment`).

        images: a list of PIL images / HxWx3 uint8 arrays, or a ``[B, H, W, 3]`` uint8 array; requests: one string
        for every image, one string per image, or a list of strings per image; regions: None or one entry per image
        (None or its region masks; InternVL3 models); task: one of :data:`sa2va.tasks.TASKS` ("describe with masks"
        and "describe" send the release's trained instruction instead of the requests' text). Returns
        ``[image][request]`` predictions."""
        return segment(self.generator, self.decoder, images, requests, regions=regions,
                       max_new_tokens=max_new_tokens, generate_batch_size=generate_batch_size,
                       encode_batch_size=encode_batch_size, logits_processor=logits_processor,
                       stopping_criteria=stopping_criteria, monitor=monitor, task=task,
                       release_codebase=self.codebase)

    def predict(self, image, prompt: str, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                logits_processor=None, stopping_criteria=None, regions: list | None = None,
                cancelled: Callable[[], bool] | None = None, task: str = DEFAULT_TASK) -> Prediction:
        """Answer ``prompt`` about one ``image`` and segment every [SEG] of the answer: :meth:`segment` of one image
        and one request.

        image: PIL image or HxWx3 uint8 array; prompt: text, with or without ``<image>`` (a bare phrase becomes a
        segmentation request, :func:`sa2va.requests.as_request`). A [SEG] generated as the very last token has no
        hidden state and gives no mask; a "[SEG]" typed in the prompt never requests a mask. ``regions``: region
        masks (HxW arrays of the image's size, non-zero inside) that the prompt names as region1, region2, ...
        (InternVL3 models). ``cancelled()``: polled before every stage and after every token (raises
        :class:`~sa2va.errors.Cancelled`). ``task``: one of :data:`sa2va.tasks.TASKS` (:meth:`segment`)."""
        return self.segment([to_pil(image)], [prompt], regions=[regions], max_new_tokens=max_new_tokens,
                            logits_processor=logits_processor, stopping_criteria=stopping_criteria,
                            monitor=Monitor(cancelled=cancelled), task=task)[0][0]

    @torch.inference_mode()
    def predict_video(self, frames, prompt: str, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                      options: VideoOptions | None = None, logits_processor=None, stopping_criteria=None,
                      monitor: Monitor | None = None, task: str = DEFAULT_TASK, **video_options) -> VideoPrediction:
        """Answer ``prompt`` about a clip and segment every [SEG] of the answer in every frame (:mod:`sa2va.video`).

        frames: a ``[T, H, W, 3]`` uint8 array/tensor, a list of PIL images / HxWx3 uint8 arrays, or any sequence
        returning one such image per index (converted one at a time). ``options`` (a
        :class:`~sa2va.video.VideoOptions`), or its fields as keyword arguments: ``key_frames``, ``key_frame_spacing``
        ("first": 0..K-1 as the reference; "even"), ``mode`` ("memory": SAM2 tracking, the reference; "consistent":
        every frame from the [SEG] embedding alone), ``offload_frames``, ``offload_state``. ``monitor``: progress
        (after every token and frame) and Cancel. ``task``: one of :data:`sa2va.tasks.TASKS` ("describe" runs no
        grounding at all). Returns a :class:`~sa2va.video.VideoPrediction` whose masks are float32 ``[N, T, H, W]``
        probabilities at the size of frame 0, with each object's scores on its key frames."""
        options = options if options is not None else VideoOptions(**video_options)
        if uses_prompt(task):  # the text as the user typed it first: an error names what they wrote
            check_request(prompt, max_new_tokens)
        prompt = task_request(task, prompt, self.codebase, video=True) if isinstance(prompt, str) else prompt
        check_request(prompt, max_new_tokens)
        options.validate()
        source = frames if isinstance(frames, FrameSource) else FrameSource(frames)
        return segment_clip(self, source, prompt, options, max_new_tokens=max_new_tokens,
                            logits_processor=logits_processor, stopping_criteria=stopping_criteria,
                            monitor=monitor or Monitor(), ground=grounds(task))

