"""SAM2's (and SAM 3's tracker's) video memory on transformers' public modules: memory encoding, the memory bank,
memory attention.

transformers implements these steps in private methods of ``Sam2VideoModel`` (``_encode_new_memory``,
``_prepare_memory_conditioned_features``) that read from a ``Sam2VideoInferenceSession``; private methods may change
between releases, so this module re-implements them (docs/design.md, "Video") on the public sub-modules
``memory_encoder`` and ``memory_attention`` and the model's ``memory_temporal_positional_encoding``. It is the only
place in the pack that knows how SAM2 builds its memory; tests/test_video.py checks it against the private helpers
(equal to float rounding) whenever the installed transformers still has them.

Semantics (SAM2 v1.0 as Sa2VA configures it, docs/design.md, "Video"):

* memory of a frame = ``memory_encoder(top-level features, sigmoid(high-res logits) * 20 - 10)``, never binarised;
  the features are stored in bfloat16 (as SAM2 and transformers do), their sine position encoding once per clip;
* a tracked frame attends to every conditioning frame (temporal encoding index ``num_maskmem - 1``) plus the
  memories of the ``num_maskmem - 1`` frames right before it that were tracked (index ``offset - 1``), and to
  object pointers: those of the conditioning frames at or before it, then those of up to
  ``min(T, max_object_pointers_in_encoder) - 1`` tracked frames before it (no temporal encoding on pointers in
  v1.0; each 256-d pointer is split into ``256 / mem_dim`` tokens that skip the rotary encoding);
* SAM2.1's extras (an occlusion embedding on memories, a temporal encoding of pointers) are absent: ``sam2_config``
  forces the v1.0 flags that match the release weights;
* SAM 3's tracker (Sa2VA-Qwen3-VL-4B-SAM3, ``Sam3TrackerVideoModel``) adds what its config enables and its release
  code does: a conditioning frame's memory is encoded from its mask binarised at 0 (``binarize=True``), the mask
  (as +-10) is resampled to the mask downsampler's input size (1152 at 1008 px; bilinear with antialiasing) *after*
  that step, an occlusion embedding is added to the memory of a frame whose object score is <= 0, at most
  ``max_cond_frame_num`` (4) conditioning frames are attended (the temporally closest; the others count as tracked
  frames when recent), and each object pointer carries a temporal sine encoding of its distance to the current frame
  (normalised by ``max_object_pointers - 1``) projected to ``mem_dim``;
* the bank keeps only what that attention can still read: every conditioning frame, the last
  ``max(num_maskmem, max_object_pointers) - 1`` tracked frames' pointers and the last ``num_maskmem - 1`` tracked
  frames' features. Its size does not grow with the clip length.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class FrameMemory:
    """What the bank keeps of one frame for K objects.

    features: ``[h*w, K, mem_dim]`` bfloat16 memory features (None once too old to be attended);
    pointer: ``[K, C]`` object pointers (C = 256)."""

    features: torch.Tensor | None
    pointer: torch.Tensor


def encode_memory(model, top: torch.Tensor, size: tuple[int, int], high_res_logits: torch.Tensor,
                  binarize: bool = False, object_score: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Memory features of one frame for K objects (what the release code's ``_encode_new_memory`` computes).

    top: the frame's raw top-level features ``[h*w, 1 or K, C]`` (no ``no_memory_embedding`` added); size: ``(h, w)``;
    high_res_logits: ``[K, 1, S, S]`` mask logits at the model's image size; binarize: encode ``logits > 0`` instead
    of ``sigmoid(logits)`` (SAM 3's conditioning frames); object_score: ``[K, 1]`` logits, needed when the model has an
    occlusion embedding (SAM 3), which is added where the score is <= 0. The mask, as ``* 20 - 10``, is resampled to
    ``4 x`` the prompt encoder's mask size when that differs from S (SAM 3: 1008 -> 1152; the release resamples
    after scaling, transformers before, which differs at the mask's edge). Returns (features ``[h*w, K, mem_dim]``
    bfloat16, position encoding ``[h*w, 1, mem_dim]`` in the logits' dtype)."""
    count = high_res_logits.shape[0]
    config = model.config
    mask_h, mask_w = model.prompt_encoder.mask_input_size
    pixels = top.permute(1, 2, 0).reshape(top.shape[1], top.shape[2], *size).expand(count, -1, -1, -1)
    mask = (high_res_logits > 0).to(high_res_logits.dtype) if binarize else torch.sigmoid(high_res_logits)
    mask = mask * config.sigmoid_scale_for_mem_enc + config.sigmoid_bias_for_mem_enc
    if tuple(mask.shape[-2:]) != (4 * mask_h, 4 * mask_w):
        mask = F.interpolate(mask.float(), size=(4 * mask_h, 4 * mask_w), mode="bilinear", align_corners=False,
                             antialias=True)
    features, position = model.memory_encoder(pixels, mask.to(pixels.dtype))
    occlusion = getattr(model, "occlusion_spatial_embedding_parameter", None)
    if occlusion is not None:
        if object_score is None:
            raise RuntimeError("encode_memory needs the object scores for a model with an occlusion embedding")
        absent = 1 - (object_score > 0).to(features.dtype)                     # [K, 1]
        features = features + absent[..., None, None] * occlusion[..., None, None].to(features.dtype)
    features = features.to(torch.bfloat16).flatten(2).permute(2, 0, 1)
    position = position[:1].to(high_res_logits.dtype).flatten(2).permute(2, 0, 1)
    return features, position


class MemoryBank:
    """The memory of K objects tracked together through one clip, bounded in size.

    ``storage`` is where entries wait between frames (the CPU to keep device memory flat, or the compute device);
    entries move to the compute device only while a frame attends to them."""

    def __init__(self, model, num_frames: int, storage: torch.device) -> None:
        config = model.config
        self.model = model
        self.num_frames = num_frames
        self.storage = storage
        self.num_maskmem: int = int(config.num_maskmem)
        self.max_pointers: int = min(num_frames, int(config.max_object_pointers_in_encoder))
        self.max_conditioning: int = int(getattr(config, "max_cond_frame_num", -1))
        self.conditioning: dict[int, FrameMemory] = {}
        self.tracked: OrderedDict[int, FrameMemory] = OrderedDict()
        self.position: torch.Tensor | None = None

    def _store(self, features: torch.Tensor, pointer: torch.Tensor, position: torch.Tensor) -> FrameMemory:
        if self.position is None:  # the sine encoding depends on the feature size only: one copy per clip
            self.position = position.to(self.storage)
        return FrameMemory(features.to(self.storage), pointer.to(self.storage))

    def add_conditioning(self, frame: int, features: torch.Tensor, pointer: torch.Tensor,
                         position: torch.Tensor) -> None:
        """Keep a conditioning frame's memory (for the whole clip)."""
        self.conditioning[frame] = self._store(features, pointer, position)

    def add_tracked(self, frame: int, features: torch.Tensor, pointer: torch.Tensor, position: torch.Tensor) -> None:
        """Keep a tracked frame's memory; frames must arrive in increasing order. Drops what no later frame reads."""
        self.tracked[frame] = self._store(features, pointer, position)
        keep_pointers = max(self.max_pointers - 1, self.num_maskmem - 1)
        for old in [f for f in self.tracked if f <= frame - keep_pointers]:
            del self.tracked[old]
        for old, entry in self.tracked.items():
            if old <= frame - (self.num_maskmem - 1):
                entry.features = None

    def size_bytes(self) -> int:
        """Bytes held by the bank (features, pointers, position encoding)."""
        tensors = [self.position] if self.position is not None else []
        for entry in [*self.conditioning.values(), *self.tracked.values()]:
            tensors += [t for t in (entry.features, entry.pointer) if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)

    def _selected_conditioning(self, frame: int) -> tuple[dict[int, FrameMemory], dict[int, FrameMemory]]:
        """(conditioning frames attended as such, the others): all of them unless ``max_cond_frame_num`` limits
        them to the temporally closest ones (SAM2's ``select_closest_cond_frames``)."""
        outputs = self.conditioning
        if self.max_conditioning == -1 or len(outputs) <= self.max_conditioning:
            return outputs, {}
        selected: dict[int, FrameMemory] = {}
        before = max((t for t in outputs if t < frame), default=None)
        after = min((t for t in outputs if t >= frame), default=None)
        for t in (before, after):
            if t is not None:
                selected[t] = outputs[t]
        rest = sorted((t for t in outputs if t not in selected), key=lambda t: abs(t - frame))
        for t in rest[:self.max_conditioning - len(selected)]:
            selected[t] = outputs[t]
        return selected, {t: v for t, v in outputs.items() if t not in selected}

    def condition(self, frame: int, top: torch.Tensor, position: torch.Tensor, size: tuple[int, int]
                  ) -> torch.Tensor:
        """Memory-conditioned image embedding of a tracked frame for the K objects of the bank.

        top, position: the frame's top-level features and their position encoding, ``[h*w, 1, C]``. Returns
        ``[K, C, h, w]`` (what ``Sam2VideoModel._prepare_memory_conditioned_features`` returns)."""
        model = self.model
        device, dtype = top.device, top.dtype
        if not self.conditioning:
            raise RuntimeError("MemoryBank.condition needs at least one conditioning frame; add them first")
        selected, unselected = self._selected_conditioning(frame)
        offsets_and_memories = [(0, entry) for entry in selected.values()]
        for offset in range(self.num_maskmem - 1, 0, -1):
            entry = self.tracked.get(frame - offset, unselected.get(frame - offset))
            if entry is not None and entry.features is not None:
                offsets_and_memories.append((offset, entry))
        temporal = model.memory_temporal_positional_encoding  # [num_maskmem, 1, 1, mem_dim]
        memory, memory_position = [], []
        for offset, entry in offsets_and_memories:
            memory.append(entry.features.to(device=device, dtype=dtype))
            memory_position.append(self.position.to(device=device, dtype=dtype) + temporal[offset - 1].to(dtype))
        pointers = [entry.pointer for t, entry in selected.items() if t <= frame]
        offsets = [frame - t for t in selected if t <= frame]
        for distance in range(1, self.max_pointers):
            t = frame - distance
            if t < 0:
                break
            entry = self.tracked.get(t, unselected.get(t))
            if entry is not None:
                pointers.append(entry.pointer)
                offsets.append(distance)
        count = memory[0].shape[1] if memory else pointers[0].shape[0]
        pointer_tokens = 0
        if pointers:
            stacked = torch.stack([p.to(device=device, dtype=dtype) for p in pointers])  # [P, K, C]
            channels, mem_dim = stacked.shape[-1], model.mem_dim
            if getattr(model.config, "enable_temporal_pos_encoding_for_object_pointers", False):
                # SAM 3 (SAM2.1): sine encoding of each pointer's distance, normalised by max_pointers - 1
                distances = torch.tensor(offsets, device=device, dtype=torch.float32) / max(self.max_pointers - 1, 1)
                encoding = sine_encoding(distances, channels).to(dtype)
                encoding = model.temporal_positional_encoding_projection_layer(encoding)     # [P, mem_dim]
                pointer_position = encoding[:, None, :].expand(-1, count, -1)
            else:
                pointer_position = stacked.new_zeros(stacked.shape[0], count, mem_dim)
            if mem_dim < channels:  # split each pointer into channels / mem_dim tokens
                splits = channels // mem_dim
                stacked = stacked.reshape(-1, count, splits, mem_dim).permute(0, 2, 1, 3).flatten(0, 1)
                pointer_position = pointer_position.repeat_interleave(splits, dim=0)
            memory.append(stacked)
            memory_position.append(pointer_position)
            pointer_tokens = stacked.shape[0]
        memory_position = [p.expand(-1, count, -1) for p in memory_position]
        out = model.memory_attention(current_vision_features=top.expand(-1, count, -1),
                                     current_vision_position_embeddings=position.expand(-1, count, -1),
                                     memory=torch.cat(memory, dim=0),
                                     memory_posision_embeddings=torch.cat(memory_position, dim=0),
                                     num_object_pointer_tokens=pointer_tokens)
        return _to_maps(out, count, top.shape[0], size)


def sine_encoding(positions: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """1-D sine/cosine encoding ``[P, dim]`` of ``[P]`` positions, as SAM's ``get_1d_sine_pe``: ``dim / 2`` sines
    then ``dim / 2`` cosines of ``position / temperature ** (2 * (i // 2) / (dim / 2))``."""
    half = dim // 2
    scales = torch.arange(half, dtype=torch.float32, device=positions.device)
    scales = temperature ** (2 * (scales // 2) / half)
    angles = positions.unsqueeze(-1) / scales
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def _to_maps(out: torch.Tensor, count: int, tokens: int, size: tuple[int, int]) -> torch.Tensor:
    """The memory attention's output as ``[K, C, h, w]``, whichever token layout it uses (transformers 5.x returns
    ``[1, K, h*w, C]``; sequence-first ``[h*w, K, C]`` is accepted too)."""
    if out.dim() == 4 and out.shape[0] == 1:
        out = out[0]                                   # [K, hw, C]
    elif out.dim() == 3 and out.shape[0] == tokens and out.shape[1] == count:
        out = out.permute(1, 0, 2)                     # [hw, K, C] -> [K, hw, C]
    if out.dim() != 3 or out.shape[0] != count or out.shape[1] != tokens:
        raise RuntimeError(f"unexpected SAM2 memory attention output shape {list(out.shape)}; this transformers "
                           f"version changed Sam2VideoMemoryAttention")
    return out.permute(0, 2, 1).reshape(count, out.shape[2], *size)
