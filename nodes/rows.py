"""Instance-level outputs of Sa2VA Segmentation: region masks per image, the per-object rows (phrases, scores, boxes)
of a batch, and every output of the node assembled from the engine's predictions (:func:`segmentation_outputs`).
Plain functions (no ComfyUI import).

A *group* is the objects one request found on one image: one group per image, or one per image and prompt line in
"one prompt per line" mode. A group without objects is shown as one empty mask (in the single-prompt mode only when
the whole image has none), so every group keeps a place in the outputs.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..sa2va.errors import InputError
from ..sa2va.outputs.boxes import box_record, mask_boxes
from ..sa2va.outputs.labels import request_phrase
from ..sa2va.outputs.masks import draw_labels, overlay
from ..sa2va.outputs.refine import RefineSettings
from ..sa2va.requests import as_request, prompt_lines
from ..sa2va.results import Prediction
from ..sa2va.tasks import check_task, uses_prompt


def request_lines(prompt: str, per_line: bool, task: str) -> list[str]:
    """The requests of one image: each non-empty line of ``prompt`` (one prompt per line), else the whole prompt; one
    empty request for the describe tasks, whose instruction is the release's own (:func:`sa2va.tasks.task_request`)."""
    check_task(task)
    if not uses_prompt(task):
        return [""]
    return (prompt_lines(prompt) or [""]) if per_line else [prompt or ""]


def check_min_score(min_score: float) -> None:
    """Raise :class:`~sa2va.errors.InputError` for a ``min_score`` outside 0..1."""
    if not 0.0 <= min_score <= 1.0:
        raise InputError(f"min_score must be between 0 and 1, got {min_score}.")


def regions_per_image(regions: torch.Tensor | None, batch: int, height: int, width: int) -> list[list | None]:
    """Split a ComfyUI MASK batch of region masks over the images: all of them for one image, else the same number
    per image in image order. Masks are resized (nearest) to the image and binarised at 0.5. Returns, per image, a
    list of HxW bool arrays (None without regions)."""
    if regions is None:
        return [None] * batch
    if not isinstance(regions, torch.Tensor) or regions.ndim not in (2, 3):
        raise InputError(f"Expected a ComfyUI MASK [R, H, W] on regions, got "
                         f"{getattr(regions, 'shape', type(regions))}.")
    regions = regions.unsqueeze(0) if regions.ndim == 2 else regions
    count = int(regions.shape[0])
    if batch > 1 and count % batch:
        raise InputError(f"The regions MASK batch ({count} masks) does not fit the IMAGE batch ({batch} images): "
                         f"give the regions of one image, or the same number of regions for every image, in image "
                         f"order.")
    if tuple(regions.shape[1:]) != (height, width):
        regions = F.interpolate(regions[:, None].float(), size=(height, width), mode="nearest")[:, 0]
    binary = (regions.float() >= 0.5).cpu().numpy()
    per = count if batch == 1 else count // batch
    return [list(binary[i * per:(i + 1) * per]) for i in range(batch)]


@dataclass
class Group:
    """One request's objects on one image: image index, masks ``[N, H, W]`` (refined), labels, scores ``[N]``,
    predicted IoU and object probability ``[N]``, and the request's own label (for an empty group)."""

    image: int
    masks: torch.Tensor
    labels: list[str]
    scores: torch.Tensor
    iou_scores: torch.Tensor
    object_scores: torch.Tensor
    request: str = ""


@dataclass
class ObjectRows:
    """The per-mask outputs of a batch: masks ``[M, H, W]`` (empty masks for empty groups), one phrases line and one
    scores line per mask, per image the objects' labels (for the overlay) and box records."""

    masks: torch.Tensor
    phrases: str
    scores: str
    boxes: list[list[dict]]
    image_masks: list[torch.Tensor]
    image_labels: list[list[str]]


def object_rows(groups: list[Group], batch: int, height: int, width: int, box_threshold: float,
                placeholder_per_group: bool) -> ObjectRows:
    """Assemble the rows of ``groups`` (in output order). ``box_threshold``: the mask value at which a pixel counts
    as inside for its box. ``placeholder_per_group``: every empty group gets an empty mask (one prompt per line);
    otherwise only an image without any object does."""
    masks, phrases, scores = [], [], []
    boxes: list[list[dict]] = [[] for _ in range(batch)]
    image_masks: list[list[torch.Tensor]] = [[] for _ in range(batch)]
    image_labels: list[list[str]] = [[] for _ in range(batch)]
    found = [0] * batch
    for group in groups:
        found[group.image] += group.masks.shape[0]
    for group in groups:
        i = group.image
        if group.masks.shape[0] == 0:
            if placeholder_per_group or found[i] == 0:  # one group per image when not per group
                masks.append(torch.zeros(1, height, width))
                phrases.append(f"{i}: (none) {group.request}".rstrip() if placeholder_per_group else f"{i}: (none)")
                scores.append(f"{i}: (none)")
            continue
        for mask, box, label, score, iou, obj in zip(group.masks, mask_boxes(group.masks, box_threshold), group.labels,
                                                      group.scores.tolist(), group.iou_scores.tolist(),
                                                      group.object_scores.tolist()):
            index = sum(m.shape[0] for m in masks)
            masks.append(mask[None])
            phrases.append(f"{i}: {label}")
            scores.append(f"{i}: {score:.3f} (iou {iou:.3f}, object {obj:.3f})")
            image_masks[i].append(mask[None])
            image_labels[i].append(label)
            if box is not None:
                boxes[i].append(box_record(box, score=round(score, 4), label=label, mask_index=index))
    stacked = [torch.cat(m) if m else torch.zeros(0, height, width) for m in image_masks]
    return ObjectRows(torch.cat(masks), "\n".join(phrases), "\n".join(scores), boxes, stacked, image_labels)


@dataclass
class SegmentationOutputs:
    """Every output of Sa2VA Segmentation but the boxes' socket type: masks ``[M, H, W]``, merged ``[B, H, W]``, mask
    images ``[M, H, W, 3]``, overlays ``[B, H, W, 3]`` (CPU float32), the answers, phrases and scores text, and the
    box records per image."""

    masks: torch.Tensor
    merged: torch.Tensor
    mask_images: torch.Tensor
    overlays: torch.Tensor
    text: str
    phrases: str
    scores: str
    boxes: list[list[dict]]


def segmentation_outputs(rgb: torch.Tensor, predictions: list[list[Prediction]], refined: list[torch.Tensor],
                         lines: list[str], settings: RefineSettings, per_line: bool,
                         check: Callable[[], None] = lambda: None) -> SegmentationOutputs:
    """The node's outputs from the engine's ``[image][request]`` predictions and each image's refined masks
    (``refined[i]``: the masks of all of image i's requests, in request order). ``lines``: the requests as typed;
    ``per_line``: one prompt per line mode (every empty request keeps a place); ``check()`` runs before each
    image's overlay (Cancel)."""
    batch, height, width = int(rgb.shape[0]), int(rgb.shape[1]), int(rgb.shape[2])
    groups = []
    for i, (found, chosen) in enumerate(zip(predictions, refined)):
        start = 0
        for pred, line in zip(found, lines):
            count = pred.masks.shape[0]
            groups.append(Group(i, chosen[start:start + count], pred.phrases, pred.scores, pred.iou_scores,
                                pred.object_scores, request_phrase(as_request(line))))
            start += count
    # boxes at the threshold in use: the binary masks' 1s, or the soft masks' pixels at or above mask_threshold
    box_threshold = 0.5 if settings.apply_mask_threshold else settings.mask_threshold
    rows = object_rows(groups, batch, height, width, box_threshold, placeholder_per_group=per_line)
    overlays = []
    for i in range(batch):
        check()
        overlays.append(draw_labels(overlay(rgb[i], rows.image_masks[i], threshold=0.5), rows.image_masks[i],
                                    rows.image_labels[i]))
    merged = [m.amax(0) if m.shape[0] else torch.zeros(height, width) for m in rows.image_masks]
    texts = ["\n".join(p.text for p in found) for found in predictions]
    return SegmentationOutputs(rows.masks, torch.stack(merged), rows.masks.unsqueeze(-1).expand(-1, -1, -1, 3),
                               torch.stack(overlays), "\n\n".join(texts), rows.phrases, rows.scores, rows.boxes)


# ------------------------------------------------------------------------------------------------- video
def phrase_lines(phrases: list[str], num_frames: int) -> str:
    """One line per object saying which masks of the flattened output are its track."""
    if not phrases:
        return "(none)"
    return "\n".join(f"{k}: {p or '(no phrase)'} (masks {k * num_frames}-{(k + 1) * num_frames - 1})"
                     for k, p in enumerate(phrases))


def score_lines(scores: torch.Tensor, iou_scores: torch.Tensor, object_scores: torch.Tensor) -> str:
    """One ``index: score (iou, object)`` line per object of a clip, or ``(none)``."""
    if scores.shape[0] == 0:
        return "(none)"
    return "\n".join(f"{k}: {s:.3f} (iou {i:.3f}, object {o:.3f})"
                     for k, (s, i, o) in enumerate(zip(scores.tolist(), iou_scores.tolist(), object_scores.tolist())))


def frame_boxes(masks: torch.Tensor, scores: torch.Tensor, labels: list[str], threshold: float) -> list[list[dict]]:
    """Per frame, one box record per object present in it (its mask covers a pixel at ``threshold``), in object
    order: ``{x, y, width, height, score, label, object, mask_index}`` with ``mask_index`` the mask's index in the
    video node's object-major masks (object k, frame t: ``k * T + t``). masks: ``[N, T, H, W]``; scores: ``[N]``."""
    count, total = int(masks.shape[0]), int(masks.shape[1])
    boxes: list[list[dict]] = []
    for t in range(total):
        found = mask_boxes(masks[:, t], threshold) if count else []
        boxes.append([box_record(box, score=round(float(scores[k]), 4), label=labels[k], object=k,
                                 mask_index=k * total + t)
                      for k, box in enumerate(found) if box is not None])
    return boxes


@dataclass
class VideoOutputs:
    """The Video Segmentation node's outputs but the overlay: tracks ``[N, T, H, W]`` (on the output device; binary at
    the threshold, or soft), masks ``[N*T, H, W]`` object-major (T empty masks when N = 0), merged ``[T, H, W]``, the
    phrases and scores text, and the box records per frame."""

    tracks: torch.Tensor
    masks: torch.Tensor
    merged: torch.Tensor
    phrases: str
    scores: str
    boxes: list[list[dict]]


def video_outputs(prediction, total: int, device: torch.device, mask_threshold: float,
                  apply_threshold: bool) -> VideoOutputs:
    """The outputs of a :class:`~sa2va.video.VideoPrediction` of ``total`` frames: its masks moved to ``device`` and,
    with ``apply_threshold``, made binary in place (1 where the probability is at least ``mask_threshold``); boxes at
    the threshold in use (the binary masks' 1s, or the soft masks' pixels at or above ``mask_threshold``)."""
    tracks = prediction.masks.to(device)
    if apply_threshold:
        with torch.inference_mode():  # the library's masks are inference tensors
            tracks.ge_(mask_threshold)
    count, height, width = int(tracks.shape[0]), int(tracks.shape[2]), int(tracks.shape[3])
    masks = tracks.reshape(count * total, height, width) if count else torch.zeros(total, height, width, device=device)
    merged = tracks.amax(0) if count else torch.zeros(total, height, width, device=device)
    return VideoOutputs(tracks, masks, merged, phrase_lines(prediction.phrases, total),
                        score_lines(prediction.scores, prediction.iou_scores, prediction.object_scores),
                        frame_boxes(tracks, prediction.scores, prediction.phrases,
                                    0.5 if apply_threshold else mask_threshold))
