"""The one engine call: segment these images for these requests (:func:`segment`).

It takes images, requests (one for every image, one per image, or several per image), optional region masks and
the options, and plans the work itself:

1. every (image, request) pair is a row; requests go through :func:`sa2va.tasks.task_request` for the task
   ("segment": :func:`sa2va.requests.as_request`, so a bare phrase means the same here as in the nodes and the CLI;
   "describe with masks" / "describe": the release's trained instruction; "ask": the text as written);
2. the rows are answered in batched generation, ``generate_batch_size`` rows per ``generate`` call
   (:class:`~sa2va.generation.AnswerGenerator`; rows with regions and rows without are generated apart);
3. the grounding image encoder runs once per distinct image (by content: identical images of a batch are encoded
   once), ``encode_batch_size`` images per call, and each row's masks are decoded in one call
   (:class:`~sa2va.decoding.MaskDecoder`); the "describe" task skips this step (its answers keep no [SEG] state);
4. the predictions come back grouped per image, then per request.

Progress and Cancel go through one :class:`Monitor`: ``progress(done, total)`` after every generated token, every
``generate`` call and every image's masks; ``cancelled()`` before every stage, after every generated token and
before every block of the vision tower, the language model and the grounding encoder (:meth:`Monitor.watching`).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from .decoding import MaskDecoder, stop_if_cancelled
from .errors import Cancelled, InputError
from .generation import DEFAULT_GENERATE_BATCH, AnswerGenerator, Row
from .cache import keyed_image
from .inputs import check_request
from .monitor import Monitor, TokenMonitor
from .requests import DEFAULT_MAX_NEW_TOKENS
from .results import Prediction
from .tasks import DEFAULT_TASK, grounds, task_request, uses_prompt

#: images per grounding-encoder call (bounds activation memory, ~0.4 GB per image at fp32 on the CPU for SAM2)
DEFAULT_ENCODE_BATCH = 8


def image_list(images) -> list[Image.Image]:
    """The images of a batch as RGB PIL images: a list of PIL images / HxWx3 uint8 arrays, or a ``[B, H, W, 3]``
    uint8 array. Each one's content hash is taken here, from the source (:func:`~sa2va.cache.keyed_image`), once for
    every encoder-cache key of the call."""
    if isinstance(images, (Image.Image, str)) or (isinstance(images, np.ndarray) and images.ndim != 4):
        raise InputError("segment takes a list of images or a [B, H, W, 3] array; use predict for one image.")
    return [keyed_image(image) for image in images]


def requests_per_image(requests: str | Sequence, count: int) -> list[list[str]]:
    """``requests`` as one list per image: a string is every image's one request; a list of strings is one request
    per image (as many as images); a list of lists gives each image its own requests."""
    if isinstance(requests, str):
        return [[requests] for _ in range(count)]
    requests = list(requests)
    if requests and all(isinstance(r, str) for r in requests):
        if len(requests) != count:
            raise InputError(f"Give one request, one request per image, or a list of requests per image: got "
                             f"{len(requests)} requests for {count} images.")
        return [[r] for r in requests]
    if len(requests) != count or not all(isinstance(r, (list, tuple)) and r and all(isinstance(x, str) for x in r)
                                         for r in requests):
        raise InputError(f"Give one request, one request per image, or a non-empty list of requests per image for "
                         f"each of the {count} images.")
    return [list(r) for r in requests]


def concurrent_rows(images: int, requests: int, generate_batch_size: int | None = DEFAULT_GENERATE_BATCH) -> int:
    """How many requests one ``generate`` call holds at most for ``images`` images with ``requests`` requests each
    (the rows whose activations add up at once)."""
    rows = images * requests
    return min(rows, generate_batch_size) if generate_batch_size else rows


@torch.inference_mode()
def segment(generator: AnswerGenerator, decoder: MaskDecoder, images, requests: str | Sequence,
            regions: Sequence | None = None, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
            generate_batch_size: int | None = DEFAULT_GENERATE_BATCH,
            encode_batch_size: int | None = DEFAULT_ENCODE_BATCH, logits_processor=None, stopping_criteria=None,
            monitor: Monitor | None = None, task: str = DEFAULT_TASK,
            release_codebase: str = "v2") -> list[list[Prediction]]:
    """Answer every request about its image and segment every [SEG] of every answer (see the module docstring).

    task: one of :data:`sa2va.tasks.TASKS`; release_codebase: ``"v1"`` or ``"v2"`` (:func:`sa2va.tasks.codebase`),
    which grounded-caption instruction "describe with masks" sends.

    regions: None, or one entry per image, each None or that image's region masks (HxW arrays of the image's size,
    non-zero inside; InternVL3 models), applied to every request of that image. ``logits_processor`` and
    ``stopping_criteria`` are passed to every ``generate`` and see its rows. Returns ``[image][request]``
    :class:`~sa2va.results.Prediction` s; a request of an image equals running it alone (ids identical, masks
    within float rounding)."""
    monitor = monitor or Monitor()
    pils = image_list(images)
    if not pils:
        return []
    typed = requests_per_image(requests, len(pils))
    if uses_prompt(task):  # the text as the user typed it first: an error names what they wrote
        for request in (r for rs in typed for r in rs):
            check_request(request, max_new_tokens)
    per_image = [[task_request(task, r, release_codebase) for r in rs] for rs in typed]
    for request in (r for rs in per_image for r in rs):
        check_request(request, max_new_tokens)
    regions = [None] * len(pils) if regions is None else list(regions)
    if len(regions) != len(pils):
        raise InputError(f"Give one region list (or None) per image: got {len(regions)} for {len(pils)} images.")
    if encode_batch_size is not None and (isinstance(encode_batch_size, bool) or
                                          not isinstance(encode_batch_size, int) or encode_batch_size < 1):
        raise InputError(f"encode_batch_size must be a positive integer or None, got {encode_batch_size!r}.")
    if generate_batch_size is not None and (isinstance(generate_batch_size, bool) or
                                            not isinstance(generate_batch_size, int) or generate_batch_size < 1):
        raise InputError(f"generate_batch_size must be a positive integer or None, got {generate_batch_size!r}.")
    rows = [(i, Row([pils[i]], request, regions[i])) for i, rs in enumerate(per_image) for request in rs]
    step = generate_batch_size or len(rows)
    chunks = [rows[start:start + step] for start in range(0, len(rows), step)]
    total = len(chunks) * max_new_tokens + len(pils)
    with monitor.watching(generator.vlm, decoder.grounding.model):  # Cancel between encoder and layer blocks too
        answers = []
        for k, chunk in enumerate(chunks):
            if monitor.is_cancelled():
                raise Cancelled(f"Generation was cancelled after {k * step} of {len(rows)} requests.")
            criteria = [*(stopping_criteria or []), TokenMonitor(monitor, k * max_new_tokens, total)]
            answers += generator.answer_rows([row for _, row in chunk], max_new_tokens, batch_size=None,
                                             logits_processor=logits_processor, stopping_criteria=criteria)
            if monitor.is_cancelled():
                raise Cancelled("Generation was cancelled.")
            monitor.report((k + 1) * max_new_tokens, total)
        if not grounds(task):  # text only: no [SEG] state is kept, so the grounding head never runs
            answers = [dataclasses.replace(answer, seg_states=[], phrases=[]) for answer in answers]
        groups: list[list[list[torch.Tensor]]] = [[] for _ in pils]
        for (i, _), answer in zip(rows, answers):
            groups[i].append(answer.seg_states)
        stop_if_cancelled(monitor.cancelled, "SAM2")
        base = len(chunks) * max_new_tokens
        decoded = decoder.decode_groups(pils, groups, encode_batch_size, monitor.cancelled,
                                        on_image=lambda done: monitor.report(base + done, total))
        monitor.report(total, total)
    found = iter(answers)
    return [[Prediction.of(next(found), objects) for objects in image_objects] for image_objects in decoded]
