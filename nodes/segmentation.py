"""Sa2VA Segmentation: every image of a batch -> masks, merged masks, previews, text, phrases, scores, boxes.

The probabilities go through the refinement stack of :mod:`sa2va.outputs.refine` (black/white points, detail method,
erode/dilate, threshold). Threshold semantics: with ``apply_mask_threshold`` a pixel is 1 when its refined value
is at least ``mask_threshold`` and 0 otherwise; without it the masks stay soft (0..1).

Optional inputs: ``regions`` (region prompts, InternVL3 models; :func:`.objects.regions_per_image`),
``prompt_per_line`` (each non-empty line is its own request on every image; outputs grouped by image, then line) and
``min_score`` (objects whose score, SAM2's predicted IoU x object probability, is below it are dropped) and ``task``
(:mod:`sa2va.tasks`: segment, describe with masks, describe, ask; the describe tasks do not use the prompt).
"""
from __future__ import annotations

import logging

import torch

from ..sa2va.engine import concurrent_rows
from ..sa2va.hub import catalog
from ..sa2va.outputs.objects import keep_confident
from ..sa2va.requests import DEFAULT_MAX_NEW_TOKENS, DEFAULT_PROMPT, MAX_NEW_TOKENS
from ..sa2va.tasks import DEFAULT_TASK
from . import comfy, groups
from .common import (CATEGORY, DEFAULT_MASK_THRESHOLD, MODEL_TOOLTIP, boxes_socket, check_image, model_socket,
                     refine_inputs, refine_settings, sanitize, task_input, to_uint8)
from .loader import Sa2VAHandle, model_choices
from .refine import MATTER_SLOT, refine_batch
from .rows import check_min_score, regions_per_image, request_lines, segmentation_outputs
from .standalone import engine_run, handle_for, load_inputs, release

logger = logging.getLogger(__name__)

#: extra words the node search finds this node by (ComfyUI versions with search aliases)
SEARCH_ALIASES = ["segment by text", "referring segmentation", "text to mask", "sam2", "vlm mask"]


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
            inputs=groups.schema_inputs(io, groups.SEGMENTATION, [
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
                task_input(io),
            ]),
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
    def execute(cls, **inputs):
        """Either layout's inputs (:mod:`.groups`: grouped where ComfyUI has DynamicCombo) as flat arguments."""
        return cls.segment(**groups.flatten(groups.SEGMENTATION, inputs))

    @classmethod
    def segment(cls, *, image: torch.Tensor, segmentation_prompt: str, model_name: str,
                max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, mask_threshold: float = DEFAULT_MASK_THRESHOLD,
                apply_mask_threshold: bool = True, clean_vram_after: bool = False,
                model: Sa2VAHandle | None = None, dtype: str = "auto", quantization: str = "none",
                regions: torch.Tensor | None = None, prompt_per_line: bool = False, min_score: float = 0.0,
                task: str = DEFAULT_TASK, **refinement):
        check_image(image, "IMAGE [B, H, W, 3]")
        settings = refine_settings(**refinement, mask_threshold=mask_threshold,
                                   apply_mask_threshold=apply_mask_threshold)
        check_min_score(min_score)
        lines = request_lines(segmentation_prompt, prompt_per_line, task)
        batch, height, width = image.shape[0], image.shape[1], image.shape[2]
        image_regions = regions_per_image(regions, batch, height, width)
        handle = handle_for(model, model_name, dtype=dtype, quantization=quantization,
                            node_id=comfy.hidden(cls, "unique_id"), prompt=comfy.hidden(cls, "prompt"))
        rgb = sanitize(image)
        activations = concurrent_rows(batch, len(lines)) * handle.activation_bytes(height, width, max_new_tokens)
        try:
            with engine_run(handle, activations, "Sa2VA") as monitor:
                found = handle.model.segment([to_uint8(rgb[i]) for i in range(batch)], [lines] * batch,
                                             regions=image_regions, max_new_tokens=max_new_tokens, monitor=monitor,
                                             task=task)
                predictions = [[keep_confident(p, min_score) for p in per_image] for per_image in found]
                refined = refine_batch(rgb, [torch.cat([p.masks for p in per_image]) for per_image in predictions],
                                       settings)
        finally:
            if clean_vram_after:
                MATTER_SLOT.release()
                release(model, handle)
        outputs = segmentation_outputs(rgb, predictions, refined, lines, settings, prompt_per_line,
                                       check=comfy.throw_if_interrupted)
        out = comfy.output_device()
        return comfy.node_output(outputs.masks.to(out), outputs.merged.to(out), outputs.mask_images.to(out),
                                 outputs.overlays.to(out), outputs.text, outputs.phrases, outputs.scores,
                                 comfy.boxes_output(outputs.boxes))
