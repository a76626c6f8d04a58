"""The encoder cache: image-encoder outputs kept by image content, so a second prompt on an image skips both encoders.

A :class:`EncoderCache` lives on each loaded model (``Sa2VAModel.encoder_cache``) and goes with it. It holds the SAM2
image features and the vision tower's image embeddings of the most recently used images, least recently used first
out, within a byte limit (:data:`DEFAULT_CACHE_MB`, the ``SA2VA_ENCODER_CACHE_MB`` environment variable or
``load_model(encoder_cache_mb=...)``; 0 turns it off). Keys are made on the CPU from the source image (a hash of
its uint8 pixels, :func:`image_digest`, taken once per image and call) and every setting that changes the numbers
(the preprocessing, the weights' device and dtype, the encoder's kernels), before anything moves to the device, so a
miss costs about a millisecond per image and no copy from the device; equal images hit and anything else misses,
whichever node or queued run asks. A cached value is what the encoder returned for that image
alone, so results with and without the cache are the same numbers.

The cache assumes the weights do not change while the model is loaded; :meth:`EncoderCache.clear` empties it. In
ComfyUI its bytes are counted with the model's, and it is emptied whenever the model leaves the GPU (offload,
eviction, "Unload Models", ``clean_vram_after``; nodes/loader.py, docs/performance.md).
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

logger = logging.getLogger(__name__)

#: default byte limit in MiB: about 15 full-size images (SAM2 features ~20 MB in fp32, ~10 MB in bf16, and Qwen3-VL-4B
#: embeddings with their deepstack levels ~21 MB in bf16, each)
DEFAULT_CACHE_MB = 512
CACHE_ENV = "SA2VA_ENCODER_CACHE_MB"


def default_limit_bytes() -> int:
    """The byte limit from ``$SA2VA_ENCODER_CACHE_MB`` (MiB, 0 = off), else :data:`DEFAULT_CACHE_MB`."""
    text = os.environ.get(CACHE_ENV, "").strip()
    if not text:
        return DEFAULT_CACHE_MB * 2**20
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0:
        logger.warning("%s=%r is not a number of MiB >= 0; using %d", CACHE_ENV, text, DEFAULT_CACHE_MB)
        return DEFAULT_CACHE_MB * 2**20
    return int(value * 2**20)


def tensor_bytes(value: object) -> int:
    """Bytes held by the tensors in ``value`` (a tensor, or lists / tuples / dicts / dataclass-like objects of them)."""
    if torch.is_tensor(value):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    if hasattr(value, "__dict__"):
        return sum(tensor_bytes(v) for v in vars(value).values())
    return 0


def tensors_of(value: object) -> list[torch.Tensor]:
    """The tensors in ``value`` (as :func:`tensor_bytes` walks it)."""
    if torch.is_tensor(value):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in tensors_of(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in tensors_of(v)]
    if hasattr(value, "__dict__"):
        return [t for v in vars(value).values() for t in tensors_of(v)]
    return []


def _update(digest, part: object) -> None:
    if isinstance(part, Image.Image):
        digest.update(repr(("image", part.mode, part.size)).encode())
        digest.update(part.tobytes())
    elif torch.is_tensor(part):
        flat = part.detach().contiguous().reshape(-1)
        digest.update(repr(("tensor", tuple(part.shape), str(part.dtype))).encode())
        digest.update(flat.view(torch.uint8).cpu().numpy().tobytes())
    elif isinstance(part, np.ndarray):
        digest.update(repr(("array", part.shape, str(part.dtype))).encode())
        digest.update(np.ascontiguousarray(part).tobytes())
    else:
        digest.update(repr(part).encode())
    digest.update(b"\0")


#: 64-bit words per block of :func:`pixel_digest` and its two lanes of odd multipliers (fixed: keys stay comparable)
_BLOCK_WORDS = 1 << 16
_MULTIPLIERS = np.frombuffer(np.random.default_rng(0x5A2FA).bytes(2 * _BLOCK_WORDS * 8),
                             dtype=np.uint64).reshape(2, _BLOCK_WORDS) | np.uint64(1)
#: digests of live images made by keyed_image, by id (PIL images are not hashable); dropped with the image
_DIGESTS: dict[int, str] = {}


def pixel_digest(pixels: np.ndarray) -> str:
    """A 160-bit hash of a uint8 image array's bytes and shape, read in place (no copy of a C-contiguous array).

    Two lanes of a multilinear hash over 64-bit words (a sum of products with fixed random odd multipliers, modulo
    2**64) per block of 512 KiB, then blake2b over the block hashes, the tail bytes and the shape: about 1 ms for a
    1024x1024 RGB image where blake2b over the bytes takes 5-10 ms (bench/bench_cache_key.py)."""
    flat = np.ascontiguousarray(pixels).reshape(-1).view(np.uint8)
    whole = flat.size // 8 * 8
    words = flat[:whole].view(np.uint64)
    digest = hashlib.blake2b(repr(("pixels", tuple(pixels.shape), str(pixels.dtype))).encode(), digest_size=20)
    for start in range(0, words.size, _BLOCK_WORDS):
        block = words[start:start + _BLOCK_WORDS]
        lanes = (block * _MULTIPLIERS[:, :block.size]).sum(axis=1, dtype=np.uint64)
        digest.update(lanes.tobytes())
    digest.update(flat[whole:].tobytes())
    return digest.hexdigest()


def image_digest(image: Image.Image | np.ndarray) -> str:
    """The content hash of an image as the models see it (its RGB uint8 pixels, :func:`pixel_digest`), on the CPU.

    A PIL image made by :func:`keyed_image` answers from memory; an HxWx3 uint8 array is hashed in place; anything
    else is converted (:func:`~sa2va.inputs.to_pil`) and its bytes hashed."""
    if isinstance(image, Image.Image):
        known = _DIGESTS.get(id(image))
        if known is not None:
            return known
        if image.mode == "RGB":
            return pixel_digest(np.asarray(image))
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        return pixel_digest(image)
    from .inputs import to_pil

    return pixel_digest(np.asarray(to_pil(image)))


def keyed_image(image: Image.Image | np.ndarray) -> Image.Image:
    """``image`` as an RGB PIL image (:func:`~sa2va.inputs.to_pil`) whose :func:`image_digest` was taken from the
    source (in place for a uint8 array) and is remembered, so every key of this call costs one hash per image."""
    from .inputs import to_pil

    pil = to_pil(image)
    _DIGESTS[id(pil)] = image_digest(image)
    weakref.finalize(pil, _DIGESTS.pop, id(pil), None)
    return pil


@dataclass(frozen=True)
class UnitKeys:
    """The cache keys of the vision units (images or tiles) of one language-model call, in the order of its pixel
    inputs, made on the CPU from the source images before anything moves to the device; ``sizes``: each unit's row
    count in ``pixel_values`` where units are row ranges (Qwen's patches), else None."""

    keys: tuple[str, ...]
    sizes: tuple[int, ...] | None = None


def content_key(*parts: object) -> str:
    """A hash of ``parts``: images, tensors and arrays by content, shape and dtype; anything else by ``repr``."""
    digest = hashlib.blake2b(digest_size=20)
    for part in parts:
        _update(digest, part)
    return digest.hexdigest()


class EncoderCache:
    """A thread-safe least-recently-used map from content keys to encoder outputs, bounded in bytes.

    Values are read-only by convention: callers must not change a returned tensor in place. An entry larger than the
    whole limit is not stored. ``hits`` and ``misses`` count lookups since the last :meth:`clear`."""

    def __init__(self, limit_bytes: int | None = None) -> None:
        self._entries: OrderedDict[Hashable, tuple[object, int]] = OrderedDict()
        self._lock = threading.Lock()
        self._limit = default_limit_bytes() if limit_bytes is None else int(limit_bytes)
        self.nbytes = 0
        self._device: torch.device | None = None
        self.hits = 0
        self.misses = 0
        self._serving = threading.local()

    @contextmanager
    def serving(self, units: UnitKeys | None) -> Iterator[None]:
        """Within this block (this thread only) the vision tower's cache wrapper keys its units by ``units``; outside
        it, or with None, the tower runs uncached (nothing is ever hashed from the device)."""
        previous = getattr(self._serving, "units", None)
        self._serving.units = units
        try:
            yield
        finally:
            self._serving.units = previous

    def unit_keys(self, count: int) -> UnitKeys | None:
        """The :class:`UnitKeys` being served when they name ``count`` units, else None (run uncached)."""
        units = getattr(self._serving, "units", None)
        return units if units is not None and len(units.keys) == count else None

    @property
    def limit_bytes(self) -> int:
        return self._limit

    @limit_bytes.setter
    def limit_bytes(self, value: int) -> None:
        with self._lock:
            self._limit = max(int(value), 0)
            self._evict()

    @property
    def enabled(self) -> bool:
        return self._limit > 0

    def __len__(self) -> int:
        return len(self._entries)

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor the cache holds now (for memory accounting and tests)."""
        with self._lock:
            return [t for value, _ in self._entries.values() for t in tensors_of(value)]

    def entries(self) -> list[tuple[Hashable, object]]:
        """(key, value) of every entry, least recently used first (a snapshot)."""
        with self._lock:
            return [(key, value) for key, (value, _) in self._entries.items()]

    def get(self, key: Hashable) -> object | None:
        """The value stored under ``key`` (now the most recently used), or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[0]

    def put(self, key: Hashable, value: object) -> None:
        """Store ``value`` under ``key``, dropping the least recently used entries beyond the limit."""
        size = tensor_bytes(value)
        with self._lock:
            if key in self._entries:
                self.nbytes -= self._entries.pop(key)[1]
            if size > self._limit:
                return
            self._entries[key] = (value, size)
            self.nbytes += size
            self._evict()

    def bind(self, device: torch.device) -> None:
        """Note the device the model now runs on; entries made on another device are dropped (a model moved off the
        GPU and back must not keep GPU memory for stale entries)."""
        with self._lock:
            if self._device != device:
                self._entries.clear()
                self.nbytes = 0
                self._device = device

    def clear(self) -> None:
        """Drop every entry (the memory goes back once no result refers to it)."""
        with self._lock:
            self._entries.clear()
            self.nbytes = 0
            self.hits = self.misses = 0

    def _evict(self) -> None:
        while self._entries and self.nbytes > self._limit:
            _, (_, size) = self._entries.popitem(last=False)
            self.nbytes -= size


def cached_per_unit(cache: EncoderCache, keys: list[Hashable],
                    compute: Callable[[list[int]], list[object]]) -> tuple[list[object], bool]:
    """Encoder outputs for units (images, tiles) with content ``keys``: hits from ``cache``, the rest from one
    ``compute(indices)`` call that returns one value per index, in order, for the first unit of each distinct key
    missing (identical units of a batch are encoded once); those are stored (cloned when they are views of a larger
    batch, so every entry owns just its memory). Returns (values, True when every unit was computed now, i.e. the
    caller's own output of that call can be returned unchanged)."""
    found = [cache.get(key) for key in keys]
    first: dict[Hashable, int] = {}
    for i, value in enumerate(found):
        if value is None:
            first.setdefault(keys[i], i)
    missing = list(first.values())
    if missing:
        computed = dict(zip(missing, compute(missing)))
        for i, value in computed.items():
            cache.put(keys[i], _clone(value) if len(missing) > 1 else value)
        found = [computed[first[keys[i]]] if value is None else value for i, value in enumerate(found)]
    return found, len(missing) == len(keys)


def _clone(value: object) -> object:
    if torch.is_tensor(value):
        return value.clone()
    if isinstance(value, (list, tuple)):
        return type(value)(_clone(v) for v in value)
    return value
