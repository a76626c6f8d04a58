"""Sa2VA Segmentation: every image of a batch -> masks, merged masks, previews, text, phrases, scores, boxes.

The probabilities go through the refinement stack of :mod:`sa2va.outputs.refine` (black/white points, detail method,
erode/dilate, threshold). Threshold semantics: with ``apply_mask_threshold`` a pixel is 1 when its refined value
is at least ``mask_threshold`` and 0 otherwise; without it the masks stay soft (0..1).

Optional inputs: ``regions`` (region prompts, InternVL3 models; :func:`.objects.regions_per_image`),
``prompt_per_line`` (each non-empty line is its own request on every image; outputs grouped by image, then line) and
``min_score`` (objects whose score, SAM2's predicted IoU x object probability, is below it are dropped).
"""
from __future__ import annotations

import logging

import torch

from ..sa2va.hub import catalog
from ..sa2va.errors import Cancelled, InputError
from ..sa2va.inputs import check_prompt
from ..sa2va.outputs.labels import request_phrase
from ..sa2va.outputs.masks import draw_labels, overlay
from ..sa2va.model import DEFAULT_GENERATE_BATCH, DTYPES
from ..sa2va.outputs.objects import keep_confident
from ..sa2va.requests import DEFAULT_MAX_NEW_TOKENS, DEFAULT_PROMPT, MAX_NEW_TOKENS, as_request, prompt_lines
from . import comfy
from .common import (CATEGORY, DEFAULT_MASK_THRESHOLD, MODEL_SLOT, MODEL_TOOLTIP, TokenProgress, advanced, boxes_socket,
                     model_socket, refine_inputs, refine_settings, sanitize, to_uint8)
from .loader import QUANTIZATIONS, Sa2VAHandle, load_handle, model_choices
from .rows import Group, object_rows, regions_per_image
from .refine import MATTER_SLOT, refine_batch

logger = logging.getLogger(__name__)

#: extra words the node search finds this node by (ComfyUI versions with search aliases)
SEARCH_ALIASES = ["segment by text", "referring segmentation", "text to mask", "sam2", "vlm mask"]


#: the nodes that can load their own model (their ``model`` input left unconnected)
STANDALONE_NODES = ("Sa2VASegmentation", "Sa2VAVideoSegmentation")


def standalone_users(prompt: dict) -> set[str]:
    """Ids of the queued workflow's Segmentation / Video nodes without a Sa2VA Loader (API-format ``prompt``: a
    connected input is a ``[node_id, output]`` link)."""
    return {str(node_id) for node_id, node in prompt.items()
            if isinstance(node, dict) and node.get("class_type") in STANDALONE_NODES
            and not isinstance(node.get("inputs", {}).get("model"), list)}


def handle_for(model: Sa2VAHandle | None, model_name: str, *, dtype: str = "auto", quantization: str = "none",
               node_id: str | None = None, prompt: dict | None = None) -> Sa2VAHandle:
    """The connected loader's model, else the node's own from :data:`~.common.MODEL_SLOT` (keyed by every load
    option; loaded on first use). Models no node of the queued workflow uses any more are released first."""
    if isinstance(prompt, dict):
        MODEL_SLOT.keep_only(standalone_users(prompt))
    if model is not None:
        MODEL_SLOT.forget(node_id)
        return model
    options = {"model": model_name, "dtype": dtype, "quantization": quantization, "attention": "sdpa",
               "device": "auto"}
    key = tuple(sorted(options.items()))
    return MODEL_SLOT.get(key, lambda: load_handle(**options), user=node_id)  # type: ignore[return-value]


def release(model: Sa2VAHandle | None, handle: Sa2VAHandle) -> None:
    """``clean_vram_after``: release the node's own model, or move a loader's model off the GPU (drop a quantised
    one; it is loaded again on the next use)."""
    if model is None:
        for key, value in list(MODEL_SLOT.values.items()):
            if value is handle:
                MODEL_SLOT.release(key)
    else:
        handle.release_vram()


def load_inputs(io) -> list:
    """dtype and quantization of the node's own model (used when no Sa2VA Loader is connected; advanced)."""
    return [
        io.Combo.Input("dtype", options=list(DTYPES), default="auto", optional=True, **advanced(io.Combo.Input),
                       tooltip="Without a Sa2VA Loader: the compute precision of the node's own model (auto: bf16 "
                               "on GPUs that support it, fp16 on older GPUs, fp32 on the CPU)."),
        io.Combo.Input("quantization", options=list(QUANTIZATIONS), default="none", optional=True,
                       **advanced(io.Combo.Input),
                       tooltip="Without a Sa2VA Loader: 8bit / 4bit (bitsandbytes) for the node's own model."),
    ]


class Sa2VASegmentation(comfy.NodeBase):
    """Outputs: masks ``[sum N, H, W]`` (one per object per image, an empty mask for an image with none), merged
    ``[B, H, W]``, mask images ``[sum N, H, W, 3]``, overlay ``[B, H, W, 3]`` (float32 0..1), the answers, one
    ``image_index: label`` and one ``image_index: score (iou, object)`` line per mask, and per image the box records
    of its non-empty masks (:func:`sa2va.outputs.boxes.box_record`, ``mask_index`` = the mask's index in masks)."""

    @classmethod
    def define_schema(cls):
        io = comfy.schema_api()
        return io.Schema(
            node_id="Sa2VASegmentation",
            display_name="Sa2VA Segmentation",
            **comfy.supported(io.Schema, search_aliases=SEARCH_ALIASES),
            category=CATEGORY,
            description="Describe what to segment in plain words; get one mask per object the model finds, for "
                        "every image of the batch, plus the model's answer.",
            inputs=[
                io.Image.Input("image", tooltip="One image or a batch; every image is segmented."),
                io.String.Input("segmentation_prompt", multiline=True, default=DEFAULT_PROMPT,
                                tooltip="What to segment, e.g. 'the woman holding the red umbrella'. A bare noun "
                                        "('hair') becomes 'Please segment the hair.'. Questions get text answers."),
                io.Combo.Input("model_name", options=model_choices(), default=catalog.DEFAULT_MODEL,
                               tooltip="Used when no Sa2VA Loader is connected. " + MODEL_TOOLTIP),
                io.Int.Input("max_new_tokens", default=DEFAULT_MAX_NEW_TOKENS, min=1, max=MAX_NEW_TOKENS,
                             tooltip="Longest answer in tokens. Each mask needs only a few; long descriptions "
                                     "need more."),
                io.Float.Input("mask_threshold", default=DEFAULT_MASK_THRESHOLD, min=0.0, max=1.0, step=0.01,
                               tooltip="With apply_mask_threshold on, pixels whose refined value is at least this "
                                       "become 1, the rest 0. Applied last."),
                io.Boolean.Input("apply_mask_threshold", default=True,
                                 tooltip="Off: output the model's soft probabilities (0..1) instead of binary masks."),
                io.Boolean.Input("clean_vram_after", default=False,
                                 tooltip="Release the model's memory after this run (the next run loads it again)."),
                *refine_inputs(io),
                *load_inputs(io),
                model_socket(io).Input("model", optional=True,
                                       tooltip="A Sa2VA Loader's model; when connected, model_name is ignored."),
                io.Mask.Input("regions", optional=True,
                              tooltip="Region prompts (Sa2VA-InternVL3 models): one mask per region, named region1, "
                                      "region2, ... in the prompt ('Please segment the object similar to region1.'). "
                                      "With an image batch, the same number of regions per image, in image order."),
                io.Boolean.Input("prompt_per_line", default=False, optional=True,
                                 tooltip="Each line of the prompt is its own request on the same image, the lines "
                                         "generated together as one batch; outputs are grouped by line and labelled "
                                         "by line (an empty mask for a line that finds nothing)."),
                io.Float.Input("min_score", default=0.0, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip="Drop objects whose score (SAM2's predicted IoU x object probability) is "
                                       "below this. 0 keeps every object, as the reference does."),
            ],
            outputs=[
                io.Mask.Output(display_name="masks", tooltip="One mask per object per image, in image order; an "
                                                             "empty mask for an image with none."),
                io.Mask.Output(display_name="merged_mask", tooltip="Union of each image's masks, one per image."),
                io.Image.Output(display_name="mask_images", tooltip="The masks as grey images."),
                io.Image.Output(display_name="overlay", tooltip="The masks coloured over each image."),
                io.String.Output(display_name="text", tooltip="The model's answer (per image, blank-line "
                                                              "separated)."),
                io.String.Output(display_name="phrases", tooltip="One line per mask: 'image_index: label' (the "
                                                                 "object the request names, or the model's <p> text)."),
                io.String.Output(display_name="scores", tooltip="One line per mask: 'image_index: score (iou, "
                                                                "object)', probabilities from SAM2; an absent object "
                                                                "scores near 0."),
                boxes_socket(io).Output(display_name="boxes",
                                        tooltip="Per image, one pixel box {x, y, width, height, score, label, "
                                                "mask_index} per non-empty mask (at the threshold in use); JSON text "
                                                "where ComfyUI has no BOUNDING_BOX type."),
            ],
            hidden=[io.Hidden.unique_id, io.Hidden.prompt],
        )

    @classmethod
    def execute(cls, *, image: torch.Tensor, segmentation_prompt: str, model_name: str, max_new_tokens: int,
                mask_threshold: float, apply_mask_threshold: bool, clean_vram_after: bool,
                model: Sa2VAHandle | None = None, dtype: str = "auto", quantization: str = "none",
                regions: torch.Tensor | None = None, prompt_per_line: bool = False, min_score: float = 0.0,
                **refinement):
        if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
            raise InputError(f"Expected a ComfyUI IMAGE [B, H, W, 3], got {getattr(image, 'shape', type(image))}.")
        settings = refine_settings(**refinement, mask_threshold=mask_threshold,
                                   apply_mask_threshold=apply_mask_threshold)
        if not 0.0 <= min_score <= 1.0:
            raise InputError(f"min_score must be between 0 and 1, got {min_score}.")
        lines = (prompt_lines(segmentation_prompt) or [""]) if prompt_per_line else [segmentation_prompt or ""]
        requests = [as_request(line) for line in lines]
        for request in requests:
            check_prompt(request)
        batch, height, width = image.shape[0], image.shape[1], image.shape[2]
        image_regions = regions_per_image(regions, batch, height, width)
        handle = handle_for(model, model_name, dtype=dtype, quantization=quantization,
                            node_id=comfy.hidden(cls, "unique_id"), prompt=comfy.hidden(cls, "prompt"))
        rgb = sanitize(image)
        # one request per image and no regions: the batch is generated together (sa2va.model.predict_batch);
        # otherwise image by image, each image's requests on one SAM2 encoding (predict_prompts)
        batched = len(requests) == 1 and all(r is None for r in image_regions)
        per_call = max_new_tokens if batched else -(-len(requests) // DEFAULT_GENERATE_BATCH) * max_new_tokens
        calls = -(-batch // DEFAULT_GENERATE_BATCH) if batched else batch
        bar = comfy.Progress(calls * per_call, "Sa2VA")
        predictions = []  # per image, one Prediction per request
        try:
            comfy.throw_if_interrupted()
            # requests generated together add up
            rows = min(batch if batched else len(requests), DEFAULT_GENERATE_BATCH)
            handle.prepare(rows * handle.activation_bytes(height, width, max_new_tokens))
            try:
                if batched:
                    found = handle.model.predict_batch(
                        [to_uint8(rgb[i]) for i in range(batch)], requests[0], max_new_tokens=max_new_tokens,
                        stopping_criteria=[TokenProgress(bar, 0)], generate_batch_size=DEFAULT_GENERATE_BATCH,
                        cancelled=comfy.interrupted)
                    predictions = [[keep_confident(p, min_score)] for p in found]
                for i in range(0 if batched else batch):
                    comfy.throw_if_interrupted()
                    extra = {} if image_regions[i] is None else {"regions": image_regions[i]}
                    progress = [TokenProgress(bar, i * per_call)]
                    if prompt_per_line:
                        found = handle.model.predict_prompts(to_uint8(rgb[i]), requests,
                                                             max_new_tokens=max_new_tokens,
                                                             stopping_criteria=progress,
                                                             generate_batch_size=DEFAULT_GENERATE_BATCH,
                                                             cancelled=comfy.interrupted, **extra)
                    else:
                        found = [handle.model.predict(to_uint8(rgb[i]), requests[0], max_new_tokens=max_new_tokens,
                                                      stopping_criteria=progress, cancelled=comfy.interrupted,
                                                      **extra)]
                    predictions.append([keep_confident(p, min_score) for p in found])
                    bar.set((i + 1) * per_call)
            except Cancelled:
                comfy.throw_if_interrupted()
                raise
            comfy.throw_if_interrupted()
            bar.set(calls * per_call)
            refined = refine_batch(rgb, [torch.cat([p.masks for p in found]) for found in predictions], settings)
        finally:
            bar.close()
            if clean_vram_after:
                MATTER_SLOT.release()
                release(model, handle)
        groups = []
        for i, (found, chosen) in enumerate(zip(predictions, refined)):
            start = 0
            for pred, request in zip(found, requests):
                count = pred.masks.shape[0]
                groups.append(Group(i, chosen[start:start + count], pred.phrases, pred.scores, pred.iou_scores,
                                    pred.object_scores, request_phrase(request)))
                start += count
        # boxes at the threshold in use: the binary masks' 1s, or the soft masks' pixels at or above mask_threshold
        box_threshold = 0.5 if settings.apply_mask_threshold else settings.mask_threshold
        rows = object_rows(groups, batch, height, width, box_threshold, placeholder_per_group=prompt_per_line)
        overlays = []
        for i in range(batch):
            comfy.throw_if_interrupted()
            overlays.append(draw_labels(overlay(rgb[i], rows.image_masks[i], threshold=0.5), rows.image_masks[i],
                                        rows.image_labels[i]))
        merged = [m.amax(0) if m.shape[0] else torch.zeros(height, width) for m in rows.image_masks]
        texts = ["\n".join(p.text for p in found) for found in predictions]
        out = comfy.output_device()
        all_masks = rows.masks.to(out)
        return comfy.node_output(all_masks, torch.stack(merged).to(out),
                                 all_masks.unsqueeze(-1).expand(-1, -1, -1, 3).contiguous(),
                                 torch.stack(overlays).to(out), "\n\n".join(texts), rows.phrases, rows.scores,
                                 comfy.boxes_output(rows.boxes))
