"""The grounding half of a loaded model: [SEG] states -> SAM2 prompt tokens -> masks with SAM2's scores.

:class:`MaskDecoder` owns the [SEG] projection and the grounding head (SAM2, or SAM 3's tracker). The image encoder
runs once per distinct image (by content, :meth:`MaskDecoder.image_key`) that is not in the encoder cache, and every
group of states (one per request) is decoded in one mask-decoder call.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from .cache import EncoderCache, content_key, image_digest
from .errors import Cancelled
from .grounding.sam2 import GroundingHead, sam2_pixels, upsample_logits
from .inputs import to_pil
from .outputs.objects import ObjectMasks


def stop_if_cancelled(cancelled: Callable[[], bool] | None, stage: str) -> None:
    """Raise :class:`~sa2va.errors.Cancelled` before ``stage`` starts when ``cancelled()`` says so."""
    if cancelled is not None and cancelled():
        raise Cancelled(f"Segmentation was cancelled before {stage}.")


class MaskDecoder:
    """Masks and scores for [SEG] hidden states on images.

    projection: the release's Linear-ReLU-Linear from the language model's hidden size to 256; grounding: the
    :class:`~sa2va.grounding.sam2.GroundingHead`; encoder_cache: shared with the vision tower; cache_device(): the
    device the cache is bound to (entries made on another device are dropped)."""

    def __init__(self, projection: torch.nn.Module, grounding: GroundingHead, encoder_cache: EncoderCache,
                 cache_device: Callable[[], torch.device]) -> None:
        self.projection = projection
        self.grounding = grounding
        self.encoder_cache = encoder_cache
        self.cache_device = cache_device

    def seg_embeddings(self, seg_states: list[torch.Tensor]) -> torch.Tensor:
        """SAM2 prompt tokens ``[N, 256]`` (on the grounding head's device, in the projection's dtype) for N [SEG]
        hidden states."""
        dtype = next(self.projection.parameters()).dtype
        return self.projection(torch.stack(seg_states).to(device=self.grounding.device, dtype=dtype))

    def image_key(self, image: Image.Image | np.ndarray) -> str:
        """The encoder cache key of an image's grounding features, made on the CPU: the image's content hash
        (:func:`~sa2va.cache.image_digest`) and every setting that changes the numbers: the head (SAM2 / SAM 3), its
        input size, the weights' device and dtype, the encoder path, its CPU kernels and compile backend (which may
        round differently)."""
        head = self.grounding
        return content_key("grounding", image_digest(image), head.rules.name, head.image_size, str(head.device),
                           str(head.dtype), head.fast_encoder, head.cpu_kernels, head.compiled)

    def decode_groups(self, images: list, groups: list[list[list[torch.Tensor]]],
                      encode_batch_size: int | None = None, cancelled: Callable[[], bool] | None = None,
                      on_image: Callable[[int], None] | None = None) -> list[list[ObjectMasks]]:
        """Masks and scores for each image and each group of its [SEG] states (one group per request).

        ``groups[i]``: the state lists of image i, one per request. The image encoder runs once per distinct image
        (by content) that has at least one state and is not in the encoder cache, batched over up to
        ``encode_batch_size`` such images (all at once when None); each group is decoded in one mask-decoder call.
        ``cancelled()`` is polled before every encoder call and every decoding (raises
        :class:`~sa2va.errors.Cancelled`); ``on_image(done)`` is called with the number of images finished so far
        after each image with states. Returns ``[image][group]`` :class:`~sa2va.outputs.objects.ObjectMasks`
        with float32 probabilities ``[N, H, W]`` on the CPU at each image's size."""
        keys = {i: self.image_key(image) for i, (image, group) in enumerate(zip(images, groups)) if any(group)}
        images = [to_pil(image) for image in images]
        head = self.grounding
        empty = torch.zeros(0, dtype=torch.float32)
        out = [[ObjectMasks(torch.zeros(0, im.height, im.width, dtype=torch.float32), empty, empty) for _ in group]
               for im, group in zip(images, groups)]
        distinct = list(dict.fromkeys(keys.values()))
        first = {key: next(i for i in keys if keys[i] == key) for key in distinct}
        cache = self.encoder_cache
        cache.bind(self.cache_device())
        step = encode_batch_size or max(len(distinct), 1)
        done = len(images) - len(keys)  # images without states are finished already
        for start in range(0, len(distinct), step):
            chunk = distinct[start:start + step]
            features = {key: cache.get(key) for key in chunk}
            todo = [key for key in chunk if features[key] is None]
            if todo:
                stop_if_cancelled(cancelled, "the SAM2 image encoder")
                encoded = head.encode(sam2_pixels([images[first[key]] for key in todo], head.image_size))
                for j, key in enumerate(todo):
                    features[key] = encoded if len(todo) == 1 else encoded.select(j)
                    if cache.enabled:
                        cache.put(key, features[key] if len(todo) == 1 else features[key].clone())
            for i in (i for i in keys if keys[i] in features):
                for g, states in enumerate(groups[i]):
                    if not states:
                        continue
                    stop_if_cancelled(cancelled, "the SAM2 mask decoder")
                    decoded = head.image_decode(features[keys[i]], self.seg_embeddings(states))
                    masks = upsample_logits(decoded.low_res_logits, head.image_size, images[i].height,
                                            images[i].width).sigmoid().cpu()
                    out[i][g] = ObjectMasks(masks, decoded.iou.float().cpu(),
                                            decoded.object_score[:, 0].float().sigmoid().cpu())
                done += 1
                if on_image is not None:
                    on_image(done)
        return out
