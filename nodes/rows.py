"""Instance-level outputs of Sa2VA Segmentation: region masks per image, and the per-object rows (phrases, scores,
boxes) of a batch. Plain functions (no ComfyUI import).

A *group* is the objects one request found on one image: one group per image, or one per image and prompt line in
"one prompt per line" mode. A group without objects is shown as one empty mask (in the single-prompt mode only when
the whole image has none), so every group keeps a place in the outputs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..sa2va.outputs.boxes import box_record, mask_boxes
from ..sa2va.errors import InputError


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
