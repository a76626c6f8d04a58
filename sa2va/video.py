"""Video: segment what a prompt asks for through every frame of a clip (Sa2VA's video path).

Reference semantics (``predict_forward(video=...)``, docs/design.md, "Video"):

1. the key frames (the reference: the first 5) go to the language model as separate images, after which the
   answer is generated and the [SEG] hidden states are projected, as for one image;
2. every [SEG] embedding prompts SAM2 on every key frame, each an independent *conditioning frame*: top-level
   features + ``no_memory_embedding``, sparse prompt ``[not_a_point, pad, language]``, multimask output and the best
   mask by predicted IoU, **no** -1024 object-score clamp, the object pointer gated by the object score;
3. mode ``"memory"`` (the reference): the conditioning frames are memory-encoded (``sigmoid * 20 - 10`` of the
   logits, never binarised) and the other frames are tracked in frame order with SAM2's memory attention (every
   conditioning frame + the last 6 tracked frames + object pointers), decoded without a language token;
   mode ``"consistent"`` (Sa2VA-i, arXiv 2509.19082): every frame is decoded from the [SEG] embedding alone, as a
   single image is, with no memory;
4. each frame's 256x256 logits go to the model's image size and then to the size of frame 0 (bilinear both times),
   then through a sigmoid.

Scores, as for one image (:mod:`sa2va.outputs.objects`): on each key frame the decoder gives every object a predicted
IoU and an object probability. An object's scores are those of its best key frame, the one where IoU x object
probability is highest (:class:`KeyFrameScores`): an object that is visible on one key frame only still scores as
visible, and an object absent from every key frame scores near 0.

Sa2VA-Qwen3-VL-4B-SAM3 runs the same steps on SAM 3's tracker (1008 px, 288x288 logits) with its release's rules
(:class:`~sa2va.grounding.rules.GroundingRules`, :mod:`sa2va.grounding.memory`): the object-score clamp is on, conditioning
memory is binarised, at most 4 conditioning frames are attended, pointers carry a temporal encoding and absent
objects an occlusion embedding.

Unlike the reference, the SAM2 image encoder runs once per frame (the reference encodes each key frame twice and the
whole clip once per [SEG]); all [SEG] of a frame share that pass. Frames are converted and resized one at a time, so
only one frame's pixels and features exist at once, and the memory bank (:mod:`sa2va.grounding.memory`) holds only what
attention can still read: memory stays flat in the clip length apart from the returned masks themselves.

This module uses only the model's public seams (``answer``, ``seg_embeddings``, ``grounding``) and the grounding
head's public methods; :meth:`Sa2VAModel.predict_video <sa2va.model.Sa2VAModel.predict_video>` is its entry point.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .errors import Cancelled, InputError
from .inputs import FrameSource
from .monitor import Monitor, TokenMonitor
from .grounding.sam2 import sam2_pixels, upsample_logits
from .grounding.memory import MemoryBank, encode_memory
from .outputs.objects import object_score

logger = logging.getLogger(__name__)

DEFAULT_KEY_FRAMES = 5
KEY_FRAME_SPACINGS = ("first", "even")
VIDEO_MODES = ("memory", "consistent")


@dataclass
class VideoPrediction:
    """Result of :meth:`Sa2VAModel.predict_video` for one clip of T frames.

    text: the answer without special tokens and [SEG] markers; raw_text: the decoded answer with special tokens;
    token_ids: generated ids, 1-D LongTensor; masks: float32 ``[N, T, H, W]`` sigmoid probabilities at the size of
    frame 0, one track per [SEG] that was fed back into the model; phrases: N strings naming what each track shows;
    key_frames: the indices of the frames the language model saw (SAM2's conditioning frames); iou_scores,
    object_scores: float32 ``[N]`` probabilities of each object on its best key frame (:class:`KeyFrameScores`);
    ``scores`` is their product."""

    text: str
    raw_text: str
    token_ids: torch.Tensor
    masks: torch.Tensor
    phrases: list[str] = field(default_factory=list)
    key_frames: list[int] = field(default_factory=list)
    iou_scores: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    object_scores: torch.Tensor = field(default_factory=lambda: torch.zeros(0))

    @property
    def scores(self) -> torch.Tensor:
        """``[N]`` the score of each object: predicted IoU times object probability on its best key frame."""
        return object_score(self.iou_scores, self.object_scores)


class KeyFrameScores:
    """Each object's predicted IoU and object probability over the key frames: the pair of the key frame where
    their product is highest is kept (the first such frame on a tie)."""

    def __init__(self, count: int) -> None:
        self.iou = torch.zeros(count, dtype=torch.float32)
        self.object = torch.zeros(count, dtype=torch.float32)
        self.seen = False

    def add(self, iou: torch.Tensor, object_logits: torch.Tensor) -> None:
        """One key frame's decoder outputs: ``iou`` ``[N]`` probabilities, ``object_logits`` ``[N, 1]`` logits."""
        iou = iou.detach().float().cpu()
        probability = object_logits[:, 0].detach().float().sigmoid().cpu()
        better = iou * probability > self.iou * self.object if self.seen else torch.ones_like(iou, dtype=torch.bool)
        self.iou = torch.where(better, iou, self.iou)
        self.object = torch.where(better, probability, self.object)
        self.seen = True


@dataclass(frozen=True)
class VideoOptions:
    """How a clip is segmented (one object instead of flags threaded through calls).

    key_frames: frames shown to the language model (SAM2's conditioning frames), at most the clip length;
    key_frame_spacing: ``"first"`` (frames 0..K-1, the reference) or ``"even"`` (:func:`key_frame_indices`);
    mode: ``"memory"`` (SAM2 tracking with memory, the reference) or ``"consistent"`` (every frame decoded from the
    [SEG] embeddings alone); offload_frames: keep the finished masks on the CPU instead of the compute device;
    offload_state: keep SAM2's memory bank on the CPU; mask_device: where each frame's masks go as soon as they are
    made (it overrides offload_frames; ComfyUI's nodes pass its intermediate device)."""

    key_frames: int = DEFAULT_KEY_FRAMES
    key_frame_spacing: str = "first"
    mode: str = "memory"
    offload_frames: bool = False
    offload_state: bool = False
    mask_device: torch.device | str | None = None

    def validate(self) -> None:
        """Raise :class:`InputError` for an unusable option."""
        if not isinstance(self.key_frames, (int, np.integer)) or isinstance(self.key_frames, bool) or \
                self.key_frames < 1:
            raise InputError(f"key_frames must be a positive integer, got {self.key_frames!r}.")
        if self.key_frame_spacing not in KEY_FRAME_SPACINGS:
            raise InputError(f"key_frame_spacing must be 'first' or 'even', got {self.key_frame_spacing!r}.")
        if self.mode not in VIDEO_MODES:
            raise InputError(f"mode must be 'memory' or 'consistent', got {self.mode!r}.")


def key_frame_indices(num_frames: int, count: int = DEFAULT_KEY_FRAMES, spacing: str = "first") -> list[int]:
    """The frames shown to the language model: ``min(count, num_frames)`` of them.

    ``"first"``: frames 0..K-1 (the reference). ``"even"``: ``round(i * (T - 1) / (K - 1))`` for i = 0..K-1, rounding
    halves up, so the first and the last frame are always included."""
    if not isinstance(count, (int, np.integer)) or isinstance(count, bool) or count < 1:
        raise InputError(f"key_frames must be a positive integer, got {count!r}.")
    if spacing not in KEY_FRAME_SPACINGS:
        raise InputError(f"key_frame_spacing must be 'first' or 'even', got {spacing!r}.")
    count = min(int(count), num_frames)
    if spacing == "first" or count == 1:
        return list(range(count))
    return [math.floor(i * (num_frames - 1) / (count - 1) + 0.5) for i in range(count)]


class _Steps:
    """Per-frame progress and cancel, after the answer's ``offset`` units (:class:`~sa2va.monitor.Monitor`)."""

    def __init__(self, total: int, monitor: Monitor, offset: int) -> None:
        self.total, self.done = total, 0
        self.monitor, self.offset = monitor, offset

    def check(self) -> None:
        if self.monitor.is_cancelled():
            raise Cancelled(f"Video segmentation was cancelled after {self.done} of {self.total} frames.")

    def step(self) -> None:
        self.done += 1
        self.monitor.report(self.offset + self.done, self.offset + self.total)


class _MaskWriter:
    """Turns each frame's low-resolution logits into probabilities at the clip's size and stores them.

    masks: ``[N, T, H, W]`` float32, on the compute device (``keep_on_device``) or on the CPU."""

    def __init__(self, count: int, num_frames: int, height: int, width: int, image_size: int,
                 device: torch.device) -> None:
        self.masks = torch.zeros(count, num_frames, height, width, dtype=torch.float32, device=device)
        self.image_size, self.height, self.width = image_size, height, width

    def write(self, frame: int, low_res: torch.Tensor) -> None:
        probabilities = upsample_logits(low_res, self.image_size, self.height, self.width).sigmoid()
        self.masks[:, frame] = probabilities.to(self.masks.device)


def _upsample_to_image(low_res: torch.Tensor, image_size: int) -> torch.Tensor:
    """``[K, 1, h, w]`` logits -> ``[K, 1, S, S]`` float32 at the model's image size (bilinear), the memory
    encoder's input."""
    return F.interpolate(low_res.float(), size=(image_size, image_size), mode="bilinear", align_corners=False)


def _track_memory(head, source: FrameSource, keys: list[int], key_images: dict[int, Image.Image],
                  embeddings: torch.Tensor, writer: _MaskWriter, steps: _Steps, storage: torch.device,
                  scores: KeyFrameScores) -> int:
    """Reference mode: condition the key frames on the embeddings, then track every other frame with memory.

    Returns the peak size of the memory bank in bytes."""
    sam = head.model
    size = head.image_size
    bank = MemoryBank(sam, len(source), storage)
    peak = 0
    for frame in keys:
        steps.check()
        features = head.encode(sam2_pixels([key_images.pop(frame)], size))
        out = head.decode(head.pixel_embedding(features), features.high_res, embeddings)
        memory, position = encode_memory(sam, features.top, features.size, _upsample_to_image(out.low_res_logits, size),
                                         binarize=head.rules.binarize_conditioning_memory,
                                         object_score=out.object_score)
        bank.add_conditioning(frame, memory, out.object_pointer, position)
        scores.add(out.iou, out.object_score)
        writer.write(frame, out.low_res_logits)
        del features, out, memory
        steps.step()
    keyset = set(keys)
    for frame in range(len(source)):
        if frame in keyset:
            continue
        steps.check()
        features = head.encode(sam2_pixels([source.pil(frame)], size))
        conditioned = bank.condition(frame, features.top, features.position, features.size)
        outs = [head.decode(conditioned[k:k + 1], features.high_res, None) for k in range(conditioned.shape[0])]
        low = torch.cat([o.low_res_logits for o in outs])
        pointer = torch.cat([o.object_pointer for o in outs])
        score = torch.cat([o.object_score for o in outs])
        memory, position = encode_memory(sam, features.top, features.size, _upsample_to_image(low, size),
                                         object_score=score)
        bank.add_tracked(frame, memory, pointer, position)
        peak = max(peak, bank.size_bytes())
        writer.write(frame, low)
        del features, conditioned, outs, low, memory
        steps.step()
    return max(peak, bank.size_bytes())


def _decode_each_frame(head, source: FrameSource, key_images: dict[int, Image.Image], embeddings: torch.Tensor,
                       writer: _MaskWriter, steps: _Steps, scores: KeyFrameScores) -> None:
    """Consistent mode: every frame decoded from the [SEG] embeddings alone, as a single image (no memory); the key
    frames' decoder scores go to ``scores``."""
    for frame in range(len(source)):
        steps.check()
        key = frame in key_images
        image = key_images.pop(frame) if key else source.pil(frame)
        features = head.encode(sam2_pixels([image], head.image_size))
        out = head.image_decode(features, embeddings)
        if key:
            scores.add(out.iou, out.object_score)
        writer.write(frame, out.low_res_logits)
        del features, out
        steps.step()


def segment_clip(model, source: FrameSource, prompt: str, options: VideoOptions, max_new_tokens: int,
                 logits_processor=None, stopping_criteria=None, monitor: Monitor | None = None,
                 ground: bool = True) -> VideoPrediction:
    """The engine behind :meth:`Sa2VAModel.predict_video` (see there for the arguments), on the model's public seams.

    model: a :class:`~sa2va.model.Sa2VAModel`; options: validated :class:`VideoOptions`; monitor: progress in units
    of ``max_new_tokens`` (one per generated token) then one per frame, and Cancel (polled after every token and
    before every frame); ground: False for a text-only answer (the "describe" task: its [SEG] are ignored and the
    grounding head never runs)."""
    monitor = monitor or Monitor()
    total = len(source)
    if total == 0:
        raise InputError("The clip has no frames; pass at least one frame.")
    keys = key_frame_indices(total, options.key_frames, options.key_frame_spacing)
    steps = _Steps(total, monitor, max_new_tokens)
    key_images = {frame: source.pil(frame) for frame in keys}
    width, height = (key_images[0] if 0 in key_images else source.pil(0)).size
    criteria = [*(stopping_criteria or []), TokenMonitor(monitor, 0, max_new_tokens + total)]
    with monitor.watching(model.vlm, model.grounding.model):  # Cancel between blocks too
        answer = model.answer([key_images[f] for f in keys], prompt, max_new_tokens, logits_processor, criteria)
        seg_states, phrases = (answer.seg_states, answer.phrases) if ground else ([], [])
        steps.check()
        monitor.report(max_new_tokens, max_new_tokens + total)
        head = model.grounding
        if options.mask_device is not None:
            out_device = torch.device(options.mask_device)
        else:
            out_device = torch.device("cpu") if options.offload_frames else head.device
        writer = _MaskWriter(len(seg_states), total, height, width, head.image_size, out_device)
        scores = KeyFrameScores(len(seg_states))
        if seg_states:
            embeddings = model.seg_embeddings(seg_states)
            if options.mode == "memory":
                storage = torch.device("cpu") if options.offload_state else head.device
                peak = _track_memory(head, source, keys, key_images, embeddings, writer, steps, storage, scores)
                logger.debug("memory bank peak: %.1f MB", peak / 2**20)
            else:
                _decode_each_frame(head, source, key_images, embeddings, writer, steps, scores)
        else:
            monitor.report(max_new_tokens + total, max_new_tokens + total)
    masks = writer.masks.cpu()
    return VideoPrediction(text=answer.text, raw_text=answer.raw_text, token_ids=answer.token_ids, masks=masks,
                           phrases=phrases, key_frames=keys, iou_scores=scores.iou, object_scores=scores.object)
