"""What the synthetic checkpoint writers share: the tokenizer corpus and BPE trainer, the portable value generator,
the [SEG] chain, sharded saving and the ``ForceTokens`` logits processor.

Portability. A checkpoint is a pure function of its arguments, the same bytes on every CPU: a value is drawn from
an integer counter-based generator (SplitMix64 of the tensor's name, the seed and the element index, in uint64
arithmetic) and turned into a float with exactly rounded operations only (an integer sum converted exactly to
float64, then products and sums of two operands, then one rounding to float32). Nothing uses ``torch.randn``
(whose values depend on the SIMD width), LAPACK, transcendental functions or float reductions (whose rounding
depends on the kernel). ``tests/test_synthetic.py`` writes checkpoints under different CPU capabilities and
compares the bytes.
"""
from __future__ import annotations

import json
import math
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import torch

SA2VA_TOKENS = ["[SEG]", "<p>", "</p>", "<vp>", "</vp>"]
QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
QWEN_NON_SPECIAL = ["<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
                    "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
              r"\s*[\r\n]+|\s+(?!\S)|\s+")
CORPUS = (
    "Sure, it is [SEG]. Sure, [SEG] and [SEG]. Please segment the person in this image. "
    "Segment the cat and the dog. The woman holding the red umbrella is on the left. "
    "What is in the picture? There is a man riding a bicycle on the street next to a car. "
    "It is a photo of a kitchen with a table, two chairs and a window. Describe the image in detail. "
    "Please segment the object similar to region1. What is in region1? The sky is blue and the grass is green. "
    "0123456789 user assistant system You are a helpful assistant.\n"
)
NUM_MERGES = 160
TINY_SAM2 = {
    "image_size": 256,
    "vision_config": {
        "backbone_config": {"model_type": "sam2_hiera_det_model", "hidden_size": 16, "image_size": [256, 256],
                            "embed_dim_per_stage": [16, 32, 64, 128], "num_attention_heads_per_stage": [1, 1, 2, 2],
                            "blocks_per_stage": [1, 1, 2, 1], "global_attention_blocks": [3],
                            "window_positional_embedding_background_size": [4, 4],
                            "window_size_per_stage": [8, 4, 4, 2]},
        "backbone_channel_list": [128, 64, 32, 16],
        "backbone_feature_sizes": [[64, 64], [32, 32], [16, 16]],
    },
    "prompt_encoder_config": {"image_size": 256, "patch_size": 16},
    "memory_attention_rope_feat_sizes": [16, 16],
    "memory_attention_feed_forward_hidden_size": 256,
    "memory_fuser_intermediate_dim": 256,
}

#: SAM2 with Hiera-T, SAM2's smallest trunk (96 wide, 1-2-7-2 blocks), at the releases' 1024 px: the neck, memory,
#: prompt encoder and mask decoder keep the release geometry (256 channels, a 64x64 top level), at about a ninth
#: of Hiera-L's encoder work. For parity references that test what the trunk does not change (tracking, a format's
#: language side); the releases' own trunk, Hiera-L, is the ``"full"`` geometry (no block).
HIERA_T_SAM2 = {
    "vision_config": {
        "backbone_config": {"model_type": "sam2_hiera_det_model", "hidden_size": 96,
                            "embed_dim_per_stage": [96, 192, 384, 768], "num_attention_heads_per_stage": [1, 2, 4, 8],
                            "blocks_per_stage": [1, 2, 7, 2], "global_attention_blocks": [5, 7, 9],
                            "window_positional_embedding_background_size": [7, 7],
                            "window_size_per_stage": [8, 4, 14, 7]},
        "backbone_channel_list": [768, 384, 192, 96],
    },
}

#: the ``sam2`` argument of the checkpoint writers -> the ``sam2_config`` block written to config.json (None: no block,
#: SAM2 Hiera-L v1 at 1024 px as in the releases)
SAM2_GEOMETRIES = {"tiny": TINY_SAM2, "hiera_t": HIERA_T_SAM2, "full": None}


def sam2_block(sam2: str) -> dict | None:
    """The ``sam2_config`` block of the writers' ``sam2`` choice (a copy), None for the releases' geometry."""
    if sam2 not in SAM2_GEOMETRIES:
        raise ValueError(f"sam2 must be one of {sorted(SAM2_GEOMETRIES)}, not {sam2!r}")
    block = SAM2_GEOMETRIES[sam2]
    return None if block is None else json.loads(json.dumps(block))




# ----------------------------------------------------------------------------------------------- tokenizer
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (the alphabet of byte-level BPE)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def pair_counts(splits: dict[str, list[str]], counts: Counter) -> Counter:
    """How often each adjacent pair of parts occurs over the words (``splits``: word -> its current parts)."""
    pairs: Counter = Counter()
    for word, parts in splits.items():
        for a, b in zip(parts, parts[1:]):
            pairs[(a, b)] += counts[word]
    return pairs


def merge_pair(splits: dict[str, list[str]], best: tuple[str, str]) -> None:
    """Join every occurrence of the pair ``best`` in every word's parts, left to right, in place."""
    for word, parts in splits.items():
        i, merged = 0, []
        while i < len(parts):
            if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                merged.append(parts[i] + parts[i + 1])
                i += 2
            else:
                merged.append(parts[i])
                i += 1
        splits[word] = merged


def train_bpe(words: list[str], num_merges: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Deterministic BPE on pre-tokenised byte-level words: most frequent pair first, ties by the pair."""
    alphabet = bytes_to_unicode()
    vocab = {ch: i for i, ch in enumerate(alphabet[b] for b in range(256))}
    counts = Counter(words)
    splits = {w: list(w) for w in counts}
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs = pair_counts(splits, counts)
        if not pairs:
            break
        best = max(pairs.items(), key=lambda kv: (kv[1], tuple(-ord(c) for c in kv[0][0] + "\0" + kv[0][1])))[0]
        merges.append(best)
        vocab.setdefault(best[0] + best[1], len(vocab))
        merge_pair(splits, best)
    return vocab, merges



# ------------------------------------------------------------------------------------------- values
_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
#: 4 uniform 16-bit integers summed (Irwin-Hall): mean 131070, variance 4 * (65536**2 - 1) / 12
_IH_MEAN = 2 * 65535
_IH_SCALE = math.sqrt(3.0) / 65536.0


def splitmix64(state: np.ndarray) -> np.ndarray:
    """SplitMix64's output function on a uint64 array (wrapping arithmetic): a bijective 64-bit mix."""
    with np.errstate(over="ignore"):
        z = state.astype(np.uint64, copy=True)
        z ^= z >> np.uint64(30)
        z *= _MIX1
        z ^= z >> np.uint64(27)
        z *= _MIX2
        z ^= z >> np.uint64(31)
    return z


def stream_key(name: str, seed: int) -> int:
    """The 64-bit key of one named stream: the seed and the name's CRC-32, mixed."""
    base = np.array([(seed * 1_000_003 + zlib.crc32(name.encode())) % 2**64], dtype=np.uint64)
    return int(splitmix64(base)[0])


def random_bits(name: str, seed: int, count: int) -> np.ndarray:
    """``count`` uint64 values of the stream ``(name, seed)``: SplitMix64 of ``key + (i + 1) * golden`` (exact
    integer arithmetic, identical on every CPU)."""
    index = np.arange(1, count + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        state = np.uint64(stream_key(name, seed)) + index * _GAMMA
    return splitmix64(state)


def standard_values(name: str, seed: int, count: int) -> np.ndarray:
    """``count`` float64 values with mean 0 and variance 1 (Irwin-Hall sum of four 16-bit uniforms, rescaled),
    bounded by +-3.46. The integer sum is exact and converts exactly; the one product is exactly rounded."""
    bits = random_bits(name, seed, count)
    mask = np.uint64(0xFFFF)
    total = (bits & mask).astype(np.int64)
    for shift in (16, 32, 48):
        total += ((bits >> np.uint64(shift)) & mask).astype(np.int64)
    return (total - _IH_MEAN).astype(np.float64) * _IH_SCALE


def scaled_values(name: str, shape: tuple[int, ...], seed: int, scale: float, offset: float = 0.0) -> torch.Tensor:
    """``offset + scale * z`` for the stream's standard values ``z``, as a float32 tensor of ``shape``: one exactly
    rounded product and one exactly rounded sum in float64, then one rounding to float32."""
    count = math.prod(shape)
    values = standard_values(name, seed, count) * float(scale)
    if offset:
        values = values + float(offset)
    return torch.from_numpy(values.astype(np.float32).reshape(shape))


def seeded_tensor(name: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """A deterministic random float32 tensor for one parameter, independent of the order tensors are made in and
    of the CPU.

    Norm scales are near 1, biases small, embeddings 0.5 (token) or 0.1 (others), matrices scaled by
    1/sqrt(fan_in) so activations stay in range through the tiny networks."""
    leaf = name.rsplit(".", 1)[-1]
    if len(shape) == 1 and leaf == "weight":
        return scaled_values(name, shape, seed, 0.05, 1.0)
    if leaf == "bias" or len(shape) <= 1:
        return scaled_values(name, shape, seed, 0.02)
    if "embed_tokens" in name:
        return scaled_values(name, shape, seed, EMBED_TOKENS_STD)
    if "pos_embed" in name or "positional" in name or "embedding" in name:
        return scaled_values(name, shape, seed, 0.1)
    fan_in = math.prod(shape[1:])
    return scaled_values(name, shape, seed, 1.0 / math.sqrt(max(fan_in, 1)))


#: the standard deviation ``seeded_tensor`` gives token embeddings (the [SEG] chain is scaled from it)
EMBED_TOKENS_STD = 0.5


def orthonormal_directions(size: int, count: int, seed: int) -> np.ndarray:
    """``count`` orthonormal float64 vectors of length ``size``, without LAPACK: rows of a Sylvester-Hadamard matrix
    of the largest power of two ``m <= size``, placed on ``m`` coordinates chosen by the integer generator, with
    random signs, scaled by ``1/sqrt(m)``. Exactly orthogonal (entries are +-1/sqrt(m) or 0)."""
    m = 1 << (size.bit_length() - 1)
    if count > m:
        raise ValueError(f"{count} orthonormal directions need a hidden size of at least {count}")
    hadamard = np.ones((1, 1), dtype=np.int64)
    while hadamard.shape[0] < m:
        hadamard = np.block([[hadamard, hadamard], [hadamard, -hadamard]])
    order = np.argsort(random_bits("seg_chain.rows", seed, m), kind="stable")
    coords = np.argsort(random_bits("seg_chain.coords", seed, size), kind="stable")[:m]
    signs = np.where(random_bits("seg_chain.signs", seed, m) >> np.uint64(63), -1, 1)
    out = np.zeros((count, size), dtype=np.float64)
    out[:, coords] = hadamard[order[:count]] * signs / math.sqrt(m)
    return out


def add_seg_chain(state: dict, embed_key: str, head_key: str, chain: list[int], seed: int) -> None:
    """Make greedy decoding follow ``chain`` (token ids) by itself: each token's input embedding gets its own
    orthonormal direction and the next token's lm_head row the same direction, scaled up. The arithmetic is done in
    float64 on the float32 rows (exact), then rounded once to float32."""
    embed, head = state[embed_key], state[head_key]
    hidden = embed.shape[1]
    directions = orthonormal_directions(hidden, len(chain) - 1, seed)
    scale = EMBED_TOKENS_STD * math.sqrt(hidden)
    for i, (cur, nxt) in enumerate(zip(chain, chain[1:])):
        row = embed[cur].numpy().astype(np.float64) + directions[i] * (3.0 * scale)
        embed[cur] = torch.from_numpy(row.astype(np.float32))
        row = head[nxt].numpy().astype(np.float64) + directions[i] * (12.0 / scale)
        head[nxt] = torch.from_numpy(row.astype(np.float32))


def sam2_release_state(sam2_block: dict | None, seed: int) -> dict[str, torch.Tensor]:
    """The SAM2 grounding encoder of a synthetic checkpoint under the releases' names (``SAM2_PREFIX`` included):
    a ``Sam2VideoModel`` described by ``sam2_block`` (a ``sam2_config`` block; None for Hiera-L v1 at 1024 px) with
    every tensor drawn under its native name, the shared Gaussian matrix stored once as the releases do."""
    from transformers import Sam2VideoModel

    from ..hub import keymap
    from ..grounding.sam2 import sam2_config

    with torch.device("meta"):
        sam = Sam2VideoModel(sam2_config(sam2_block))
    native = {name: seeded_tensor(name, tuple(t.shape), seed) for name, t in sam.state_dict().items()}
    native["shared_image_embedding.positional_embedding"] = \
        native["prompt_encoder.shared_embedding.positional_embedding"]
    release = keymap.sam2_state_to_release(native)
    return {keymap.SAM2_PREFIX + name: tensor.contiguous() for name, tensor in release.items()}


def projection_state(hidden: int, seed: int) -> dict[str, torch.Tensor]:
    """The [SEG] projection ``text_hidden_fcs`` (Linear hidden->hidden, ReLU, Linear hidden->256) of a synthetic
    checkpoint, under the releases' names."""
    from ..hub import keymap

    shapes = (("0.weight", (hidden, hidden)), ("0.bias", (hidden,)), ("2.weight", (256, hidden)), ("2.bias", (256,)))
    return {keymap.PROJECTION_PREFIX + name: seeded_tensor(keymap.PROJECTION_PREFIX + name, shape, seed)
            for name, shape in shapes}


def save_sharded(folder: Path, state: dict[str, torch.Tensor], max_shard_bytes: int) -> None:
    """Write safetensors shards in key order plus ``model.safetensors.index.json`` (as save_pretrained does)."""
    from safetensors.torch import save_file

    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name in state:
        nbytes = state[name].numel() * state[name].element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = state[name]
        size += nbytes
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / fname), metadata={"format": "pt"})
        for name, tensor in shard.items():
            weight_map[name] = fname
            total += tensor.numel() * tensor.element_size()
    parameters = sum(t.numel() for t in state.values())
    index = {"metadata": {"total_parameters": parameters, "total_size": total},
             "weight_map": dict(sorted(weight_map.items()))}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


def save_single(folder: Path, state: dict[str, torch.Tensor]) -> None:
    """Write every tensor into one ``model.safetensors`` without an index (Sa2VA-1B's layout)."""
    from safetensors.torch import save_file

    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


class ForceTokens:
    """A logits processor that makes greedy decoding emit ``token_ids`` in order, then repeat the last id.

    Steps are counted from ``prompt_length`` (``generate`` keeps the prompt in ``input_ids``). Used by tests and
    benchmarks to get answers with an exact number of [SEG] tokens from random weights."""

    def __init__(self, prompt_length: int, token_ids: list[int]) -> None:
        self.prompt_length = prompt_length
        self.token_ids = list(token_ids)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = min(input_ids.shape[1] - self.prompt_length, len(self.token_ids) - 1)
        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.token_ids[step]] = 0
        return forced


class ForceByPromptLength:
    """Forces a different answer per batch row: the row's prompt length, left padding not counted, picks it.

    ``schedules``: unpadded prompt length -> answer ids (emitted in order, then the last id repeated); ``pad_id``:
    the id ``generate`` pads rows with on the left. The prompts must differ in length by more than the longest
    answer, and must not start with ``pad_id``. Works for one-by-one and batched ``generate`` alike, so tests can
    compare the two."""

    def __init__(self, schedules: dict[int, list[int]], pad_id: int) -> None:
        self.schedules = dict(sorted(schedules.items()))
        self.pad_id = pad_id

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        forced = torch.full_like(scores, float("-inf"))
        not_pad = (input_ids != self.pad_id).int()
        padding = (not_pad.cumsum(1) == 0).sum(1).tolist()  # leading pad ids of each row
        for row, pad in enumerate(padding):
            length = input_ids.shape[1] - pad
            prompt = max((p for p in self.schedules if p <= length), default=None)
            if prompt is None:
                raise ValueError(f"unknown prompt: row {row} has no schedule for a prompt of at most {length} tokens")
            answer = self.schedules[prompt]
            forced[row, answer[min(length - prompt, len(answer) - 1)]] = 0
        return forced
