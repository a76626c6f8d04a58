"""Sa2VA Video Segmentation: the frames of one clip -> one mask track per object, merged masks, overlay, text, each
object's score and the boxes of every frame.

The IMAGE batch is one clip; frames are converted to uint8 one at a time as the library asks for them, so the
node holds no second copy of the clip. Threshold semantics as the Segmentation node: with ``apply_mask_threshold``
a pixel is 1 when its probability is at least ``mask_threshold`` and 0 otherwise; without it masks stay soft.

Scores: an object's predicted IoU and object probability from the grounding head on the key frames, those of its
best key frame (where their product is highest, :class:`sa2va.video.KeyFrameScores`); ``min_score`` drops whole
tracks whose score is below it. Boxes: per frame, one box per object whose mask covers a pixel in that frame.
"""
from __future__ import annotations

import logging

import torch

from ..sa2va.errors import InputError
from ..sa2va.hub import catalog
from ..sa2va.inputs import check_prompt
from ..sa2va.outputs.masks import draw_labels, overlay
from ..sa2va.outputs.objects import keep_confident
from ..sa2va.requests import DEFAULT_MAX_NEW_TOKENS, DEFAULT_PROMPT, MAX_NEW_TOKENS
from ..sa2va.tasks import DEFAULT_TASK, task_request
from ..sa2va.video import KEY_FRAME_SPACINGS, VIDEO_MODES, VideoOptions
from . import comfy, groups
from .common import (CATEGORY, DEFAULT_MASK_THRESHOLD, MODEL_TOOLTIP, advanced, boxes_socket, check_image,
                     model_socket, sanitize, task_input, to_uint8)
from .loader import Sa2VAHandle, model_choices
from .rows import check_min_score, video_outputs
from .standalone import engine_run, handle_for, load_inputs, release

logger = logging.getLogger(__name__)

#: extra words the node search finds this node by (ComfyUI versions with search aliases)
SEARCH_ALIASES = ["video mask", "track object", "sam2 video", "text to video mask"]

DEFAULT_VIDEO_PROMPT = DEFAULT_PROMPT


class ClipFrames:
    """The frames of a ComfyUI IMAGE ``[T, H, W, C]`` as uint8 ``[H, W, 3]`` arrays, each made when indexed."""

    def __init__(self, image: torch.Tensor) -> None:
        self.image = image

    def __len__(self) -> int:
        return int(self.image.shape[0])

    def __getitem__(self, index: int):
        return to_uint8(sanitize(self.image[index:index + 1])[0])


def overlay_frames(frames: torch.Tensor, masks: torch.Tensor, phrases: list[str], device: torch.device) -> torch.Tensor:
    """The overlay IMAGE ``[T, H, W, 3]`` of a clip ``frames`` (ComfyUI IMAGE ``[T, H, W, C]``) and its masks
    ``[N, T, H, W]``, drawn frame by frame into one output allocated up front on ``device``: the clip is never
    held twice (no list of frames stacked at the end). Cancel is checked before each frame."""
    total, height, width = int(frames.shape[0]), int(frames.shape[1]), int(frames.shape[2])
    out = torch.empty(total, height, width, 3, dtype=torch.float32, device=device)
    for t in range(total):
        comfy.throw_if_interrupted()
        rgb = sanitize(frames[t:t + 1])[0]
        out[t] = draw_labels(overlay(rgb, masks[:, t], threshold=0.5), masks[:, t], phrases)
    return out


class Sa2VAVideoSegmentation(comfy.NodeBase):
    """Outputs: masks ``[N*T, H, W]`` (object-major: object 0's T frames, then object 1's; T empty masks when
    N = 0), merged ``[T, H, W]``, overlay ``[T, H, W, 3]`` (float32 0..1), the answer, one line per object, one
    ``index: score (iou, object)`` line per object, and per frame the box records of the objects present in it
    (:func:`.rows.frame_boxes`)."""

    @classmethod
    def define_schema(cls):
        io = comfy.schema_api()
        return io.Schema(
            node_id="Sa2VAVideoSegmentation",
            display_name="Sa2VA Video Segmentation",
            **comfy.supported(io.Schema, search_aliases=SEARCH_ALIASES),
            category=CATEGORY,
            description="Segment what the prompt describes through every frame of a clip: the model reads a few key "
                        "frames, then SAM2 follows each object with its memory. One mask track per object.",
            inputs=groups.schema_inputs(io, groups.VIDEO, [
                io.Image.Input("frames", tooltip="The frames of one clip, in order (an IMAGE batch, e.g. from "
                                                 "Get Video Components)."),
                io.String.Input("prompt", multiline=True, default=DEFAULT_VIDEO_PROMPT,
                                tooltip="What to segment, e.g. 'the dog running on the beach'. A bare noun ('dog') "
                                        "becomes 'Please segment the dog.'."),
                io.Combo.Input("model_name", options=model_choices(), default=catalog.DEFAULT_MODEL,
                               tooltip="Used when no Sa2VA Loader is connected. " + MODEL_TOOLTIP),
                io.Int.Input("key_frames", default=VideoOptions.key_frames, min=1, max=32,
                             tooltip="How many frames the language model sees; SAM2 is prompted on each of them. "
                                     "The reference uses 5. More costs more language-model tokens."),
                io.Combo.Input("key_frame_spacing", options=list(KEY_FRAME_SPACINGS), default=VideoOptions.key_frame_spacing,
                               tooltip="first: frames 0..K-1 (the reference). even: K frames spread over the whole "
                                       "clip (first and last included), better when the object changes or "
                                       "appears late."),
                io.Combo.Input("mode", options=list(VIDEO_MODES), default=VideoOptions.mode,
                               tooltip="memory: SAM2 tracks each object from the key frames with its memory (the "
                                       "reference). consistent: every frame is segmented from the prompt alone, "
                                       "with no memory (Sa2VA-i); no drift, but less temporal smoothing."),
                io.Boolean.Input("offload_frames", default=True,
                                 tooltip="On (default): each frame's masks go to ComfyUI's intermediate device (the "
                                         "CPU) as soon as the frame is done. Off: they stay on the GPU until the clip "
                                         "ends (4 bytes per pixel per object per frame)."),
                io.Boolean.Input("offload_state", default=False, **advanced(io.Boolean.Input),
                                 tooltip="Keep SAM2's memory of past frames (about 6 MB per object at full size, "
                                         "bounded) on the CPU; it moves to the GPU while a frame uses it."),
                io.Int.Input("max_new_tokens", default=DEFAULT_MAX_NEW_TOKENS, min=1, max=MAX_NEW_TOKENS,
                             tooltip="Longest answer in tokens. Each mask needs only a few."),
                io.Float.Input("mask_threshold", default=DEFAULT_MASK_THRESHOLD, min=0.0, max=1.0, step=0.01,
                               tooltip="With apply_mask_threshold on, pixels whose probability is at least this "
                                       "become 1, the rest 0."),
                io.Boolean.Input("apply_mask_threshold", default=True,
                                 tooltip="Off: output the model's soft probabilities (0..1) instead of binary masks."),
                io.Boolean.Input("clean_vram_after", default=False,
                                 tooltip="Release the model's memory after this run (the next run loads it again)."),
                *load_inputs(io),
                model_socket(io).Input("model", optional=True,
                                       tooltip="A Sa2VA Loader's model; when connected, model_name is ignored."),
                io.Float.Input("min_score", default=0.0, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip="Drop objects whose score (the grounding head's predicted IoU x object "
                                       "probability on its best key frame) is below this. 0 keeps every object."),
                task_input(io),
            ]),
            outputs=[
                io.Mask.Output(display_name="masks", tooltip="One mask per object per frame, object by object: "
                                                             "masks 0..T-1 are object 0's track, T..2T-1 object 1's "
                                                             "(see phrases). T empty masks when nothing was found."),
                io.Mask.Output(display_name="merged_mask", tooltip="Union of all objects, one mask per frame."),
                io.Image.Output(display_name="overlay", tooltip="The masks coloured over each frame."),
                io.String.Output(display_name="text", tooltip="The model's answer."),
                io.String.Output(display_name="phrases", tooltip="One line per object: 'index: phrase (masks "
                                                                 "first-last)'."),
                io.String.Output(display_name="scores", tooltip="One line per object: 'index: score (iou, object)', "
                                                                "the grounding head's probabilities on the object's "
                                                                "best key frame; an absent object scores near 0."),
                boxes_socket(io).Output(display_name="boxes",
                                        tooltip="Per frame, one pixel box {x, y, width, height, score, label, "
                                                "object, mask_index} per object present in that frame (at the "
                                                "threshold in use); JSON text where ComfyUI has no BOUNDING_BOX "
                                                "type."),
            ],
            hidden=[io.Hidden.unique_id, io.Hidden.prompt],
        )

    @classmethod
    def execute(cls, **inputs):
        """Either layout's inputs (:mod:`.groups`: grouped where ComfyUI has DynamicCombo) as flat arguments."""
        return cls.segment(**groups.flatten(groups.VIDEO, inputs))

    @classmethod
    def segment(cls, *, frames: torch.Tensor, prompt: str, model_name: str,
                key_frames: int = VideoOptions.key_frames, key_frame_spacing: str = VideoOptions.key_frame_spacing,
                mode: str = VideoOptions.mode, offload_frames: bool = True, offload_state: bool = False,
                max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, mask_threshold: float = DEFAULT_MASK_THRESHOLD,
                apply_mask_threshold: bool = True, clean_vram_after: bool = False, model: Sa2VAHandle | None = None,
                dtype: str = "auto", quantization: str = "none", min_score: float = 0.0, task: str = DEFAULT_TASK):
        check_image(frames, "IMAGE batch [T, H, W, 3] holding the frames of one clip")
        if not 0.0 <= mask_threshold <= 1.0:
            raise InputError(f"mask_threshold must be between 0 and 1, got {mask_threshold}.")
        check_min_score(min_score)
        options = VideoOptions(key_frames=key_frames, key_frame_spacing=key_frame_spacing, mode=mode,
                               offload_frames=offload_frames, offload_state=offload_state,
                               mask_device=comfy.output_device() if offload_frames else None)
        options.validate()
        check_prompt(task_request(task, prompt or "", video=True))
        handle = handle_for(model, model_name, dtype=dtype, quantization=quantization,
                            node_id=comfy.hidden(cls, "unique_id"), prompt=comfy.hidden(cls, "prompt"))
        height, width = int(frames.shape[1]), int(frames.shape[2])
        activations = handle.activation_bytes(height, width, max_new_tokens, images=min(key_frames, len(frames)))
        try:
            with engine_run(handle, activations, "Sa2VA video") as monitor:
                found = handle.model.predict_video(ClipFrames(frames), prompt or "", max_new_tokens=max_new_tokens,
                                                   options=options, monitor=monitor, task=task)
            prediction = keep_confident(found, min_score)
        finally:
            if clean_vram_after:
                release(model, handle)
        outputs = video_outputs(prediction, int(frames.shape[0]), comfy.output_device(), mask_threshold,
                                apply_mask_threshold)
        overlays = overlay_frames(frames, outputs.tracks, prediction.phrases, comfy.output_device())
        return comfy.node_output(outputs.masks, outputs.merged, overlays, prediction.text, outputs.phrases,
                                 outputs.scores, comfy.boxes_output(outputs.boxes))
