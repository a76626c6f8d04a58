"""Per-object results of the SAM2 decoder: masks with their scores, and selection by score.

Scores are probabilities: ``iou_scores`` is SAM2's predicted IoU of the chosen mask (its IoU head ends in a
sigmoid), ``object_scores`` the sigmoid of SAM2's object-score logit ("is the object in the image"). The score of
an object is their product, so an object the image does not contain scores near 0 even when its predicted mask
looks confident.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..errors import InputError


@dataclass
class ObjectMasks:
    """Decoded objects of one request on one image.

    masks: float32 ``[N, H, W]`` sigmoid probabilities; iou_scores, object_scores: float32 ``[N]`` probabilities."""

    masks: torch.Tensor
    iou_scores: torch.Tensor
    object_scores: torch.Tensor


def object_score(iou_scores: torch.Tensor, object_scores: torch.Tensor) -> torch.Tensor:
    """The score of each object, ``[N]``: predicted IoU times object probability."""
    return iou_scores * object_scores


def keep_confident(prediction, min_score: float):
    """A copy of a :class:`~sa2va.results.Prediction` without the objects whose score is below ``min_score`` (masks,
    phrases and scores stay aligned; text and token ids are unchanged). ``min_score`` 0 keeps every object."""
    if not 0.0 <= min_score <= 1.0:
        raise InputError(f"min_score must be between 0 and 1, got {min_score}.")
    keep = prediction.scores >= min_score
    if bool(keep.all()):
        return prediction
    index = torch.nonzero(keep).flatten()
    return dataclasses.replace(prediction, masks=prediction.masks[index],
                               phrases=[prediction.phrases[i] for i in index.tolist()],
                               iou_scores=prediction.iou_scores[index],
                               object_scores=prediction.object_scores[index])
