"""How much memory one prediction needs on top of the weights: :class:`MemoryProfile` (the sizes of a model) and its
upper-end activation estimate, which the nodes ask ComfyUI's memory manager to free before a run
(docs/performance.md, "Memory the nodes ask ComfyUI for")."""
from __future__ import annotations

from dataclasses import dataclass

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
