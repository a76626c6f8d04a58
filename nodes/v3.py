"""ComfyUI V3 node classes: schemas (inputs, outputs, tooltips) and forwarding to the plain logic functions."""
from __future__ import annotations

import logging

from comfy_api.latest import ComfyExtension, io

from ..sa2va import catalog
from ..sa2va.compat import transformers_problem
from . import comfy
from .loader import DTYPES, QUANTIZATIONS, attention_choices, device_choices, load_handle, model_choices
from ..sa2va.matting import DEFAULT_MAX_MEGAPIXELS
from ..sa2va.refine import DEFAULT_GUIDED_EPS, DEFAULT_GUIDED_RADIUS, DETAIL_METHODS, RefineSettings
from .refine import refine_mask
from .segmentation import DEFAULT_MASK_THRESHOLD, DEFAULT_MAX_NEW_TOKENS, DEFAULT_PROMPT, segment
from ..sa2va.video import DEFAULT_KEY_FRAMES, KEY_FRAME_SPACINGS, VIDEO_MODES
from .video import DEFAULT_VIDEO_PROMPT, segment_video

logger = logging.getLogger(__name__)

CATEGORY = "Sa2VA"
Sa2VAModelType = io.Custom("SA2VA_MODEL")
MODEL_TOOLTIP = ("Official models are downloaded into models/sa2va/<name>/ on first use (progress on the node, "
                 "Cancel stops it, the next run resumes). Folders you place there yourself are listed too.")


def refine_inputs() -> list:
    """The refinement controls shared by Sa2VA Segmentation and Sa2VA Refine Mask (advanced ones optional)."""
    return [
        io.Boolean.Input("process_details", default=True,
                         tooltip="Run the refinement stack (black/white points, detail method, erode/dilate). "
                                 "Off: the model's probabilities go straight to the threshold."),
        io.Float.Input("black_point", default=0.05, min=0.0, max=0.99, step=0.01,
                       tooltip="Probabilities at or below this become 0 (and are sure background for VITMatte)."),
        io.Float.Input("white_point", default=0.95, min=0.01, max=1.0, step=0.01,
                       tooltip="Probabilities at or above this become 1 (and are sure foreground for VITMatte)."),
        io.Combo.Input("detail_method", options=list(DETAIL_METHODS), default="FastMatte",
                       tooltip="FastMatte: guided filter that snaps soft edges to the image's edges (fast, no "
                               "weights). VITMatte: ViTMatte matting for hair and fur (downloads ~100 MB once). "
                               "none: no edge refinement."),
        io.Int.Input("detail_erode", default=0, min=0, max=10,
                     tooltip="Shrink the masks by this many pixels (round kernel). With VITMatte: widen the "
                             "uncertain band inward instead."),
        io.Int.Input("detail_dilate", default=0, min=0, max=10,
                     tooltip="Grow the masks by this many pixels (round kernel), after eroding. With VITMatte: "
                             "widen the uncertain band outward instead."),
        io.Int.Input("guided_radius", default=DEFAULT_GUIDED_RADIUS, min=1, max=64, optional=True,
                     tooltip="FastMatte window radius in pixels (larger follows edges from farther away)."),
        io.Float.Input("guided_eps", default=DEFAULT_GUIDED_EPS, min=0.00001, max=1.0, step=0.001, optional=True,
                       tooltip="FastMatte smoothing: image variation below this (variance, 0..1 units) counts as "
                               "flat; smaller follows finer edges."),
        io.Float.Input("vitmatte_max_megapixels", default=DEFAULT_MAX_MEGAPIXELS, min=0.1, max=16.0, step=0.1,
                       optional=True, tooltip="VITMatte works at most at this size; its alpha is upscaled back."),
    ]


def refine_settings(process_details: bool, black_point: float, white_point: float, detail_method: str,
                    detail_erode: int, detail_dilate: int, guided_radius: int = DEFAULT_GUIDED_RADIUS,
                    guided_eps: float = DEFAULT_GUIDED_EPS, vitmatte_max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
                    mask_threshold: float = DEFAULT_MASK_THRESHOLD, apply_mask_threshold: bool = True,
                    ) -> RefineSettings:
    return RefineSettings(process_details, black_point, white_point, detail_method, detail_erode, detail_dilate,
                          guided_radius, guided_eps, vitmatte_max_megapixels, mask_threshold, apply_mask_threshold)


class Sa2VALoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Sa2VALoader",
            display_name="Sa2VA Loader",
            category=CATEGORY,
            description="Load a Sa2VA model (downloading it first when needed) for one or more Sa2VA "
                        "Segmentation nodes. The model is loaded once and shared by every connected node.",
            inputs=[
                io.Combo.Input("model", options=model_choices(), default=catalog.DEFAULT_MODEL, tooltip=MODEL_TOOLTIP),
                io.Combo.Input("dtype", options=list(DTYPES), default="auto",
                               tooltip="Compute precision. auto: bf16 on GPUs that support it, fp16 on older GPUs, "
                                       "fp32 on the CPU."),
                io.Combo.Input("quantization", options=list(QUANTIZATIONS), default="none",
                               tooltip="8bit / 4bit (bitsandbytes) shrink the language model about 2x / 4x; the "
                                       "vision tower and SAM2 stay in the compute dtype. Quantised models stay on "
                                       "the GPU until the workflow stops using them."),
                io.Combo.Input("attention", options=attention_choices(), default="sdpa",
                               tooltip="Attention kernel: sdpa (default), eager (exact reference numerics), "
                                       "flash_attention_2 (listed when flash-attn is installed)."),
                io.Combo.Input("device", options=device_choices(), default="auto",
                               tooltip="auto uses ComfyUI's device (the CPU when ComfyUI runs with --cpu)."),
            ],
            outputs=[Sa2VAModelType.Output(display_name="model", tooltip="A loaded Sa2VA model")],
        )

    @classmethod
    def execute(cls, model: str, dtype: str, quantization: str, attention: str, device: str) -> io.NodeOutput:
        return io.NodeOutput(load_handle(model, dtype, quantization, attention, device))


class Sa2VASegmentation(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Sa2VASegmentation",
            display_name="Sa2VA Segmentation",
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
                io.Int.Input("max_new_tokens", default=DEFAULT_MAX_NEW_TOKENS, min=1, max=2048,
                             tooltip="Longest answer in tokens. Each mask needs only a few; long descriptions "
                                     "need more."),
                io.Float.Input("mask_threshold", default=DEFAULT_MASK_THRESHOLD, min=0.0, max=1.0, step=0.01,
                               tooltip="With apply_mask_threshold on, pixels whose refined value is at least this "
                                       "become 1, the rest 0. Applied last."),
                io.Boolean.Input("apply_mask_threshold", default=True,
                                 tooltip="Off: output the model's soft probabilities (0..1) instead of binary masks."),
                io.Boolean.Input("clean_vram_after", default=False,
                                 tooltip="Release the model's memory after this run (the next run loads it again)."),
                *refine_inputs(),
                Sa2VAModelType.Input("model", optional=True,
                                     tooltip="A Sa2VA Loader's model; when connected, model_name is ignored."),
            ],
            outputs=[
                io.Mask.Output(display_name="masks", tooltip="One mask per object per image, in image order; an "
                                                             "empty mask for an image with none."),
                io.Mask.Output(display_name="merged_mask", tooltip="Union of each image's masks, one per image."),
                io.Image.Output(display_name="mask_images", tooltip="The masks as grey images."),
                io.Image.Output(display_name="overlay", tooltip="The masks coloured over each image."),
                io.String.Output(display_name="text", tooltip="The model's answer (per image, blank-line "
                                                              "separated)."),
                io.String.Output(display_name="phrases", tooltip="One line per mask: 'image_index: phrase'."),
            ],
        )

    @classmethod
    def execute(cls, image, segmentation_prompt: str, model_name: str, max_new_tokens: int,
                mask_threshold: float, apply_mask_threshold: bool, clean_vram_after: bool, model=None,
                **refinement) -> io.NodeOutput:
        settings = refine_settings(**refinement, mask_threshold=mask_threshold,
                                   apply_mask_threshold=apply_mask_threshold)
        result = segment(image, segmentation_prompt, model, model_name, max_new_tokens, mask_threshold,
                         apply_mask_threshold, clean_vram_after, settings)
        return io.NodeOutput(result.masks, result.merged, result.mask_images, result.overlay, result.text,
                             result.phrases)


class Sa2VARefineMask(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Sa2VARefineMask",
            display_name="Sa2VA Refine Mask",
            category=CATEGORY,
            description="Refine any mask on its image with the Sa2VA refinement stack: black/white points, "
                        "FastMatte (guided filter) or VITMatte, erode/dilate, optional threshold.",
            inputs=[
                io.Image.Input("image", tooltip="The image the mask belongs to (guides the edge refinement)."),
                io.Mask.Input("mask", tooltip="Any mask; resized to the image if its size differs."),
                io.Float.Input("mask_threshold", default=DEFAULT_MASK_THRESHOLD, min=0.0, max=1.0, step=0.01,
                               tooltip="With apply_mask_threshold on, values at least this become 1, the rest 0."),
                io.Boolean.Input("apply_mask_threshold", default=False,
                                 tooltip="Off (default): keep the refined soft alpha."),
                io.Boolean.Input("clean_vram_after", default=False,
                                 tooltip="Release the ViTMatte model after this run."),
                *refine_inputs(),
            ],
            outputs=[io.Mask.Output(display_name="mask", tooltip="The refined mask(s), one per image."),
                     io.Image.Output(display_name="mask_image", tooltip="The refined mask(s) as grey images.")],
        )

    @classmethod
    def execute(cls, image, mask, mask_threshold: float, apply_mask_threshold: bool, clean_vram_after: bool,
                **refinement) -> io.NodeOutput:
        settings = refine_settings(**refinement, mask_threshold=mask_threshold,
                                   apply_mask_threshold=apply_mask_threshold)
        out = refine_mask(image, mask, settings, clean_vram_after)
        return io.NodeOutput(out, out.unsqueeze(-1).expand(-1, -1, -1, 3).contiguous())


class Sa2VAVideoSegmentation(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Sa2VAVideoSegmentation",
            display_name="Sa2VA Video Segmentation",
            category=CATEGORY,
            description="Segment what the prompt describes through every frame of a clip: the model reads a few key "
                        "frames, then SAM2 follows each object with its memory. One mask track per object.",
            inputs=[
                io.Image.Input("frames", tooltip="The frames of one clip, in order (an IMAGE batch, e.g. from "
                                                 "Get Video Components)."),
                io.String.Input("prompt", multiline=True, default=DEFAULT_VIDEO_PROMPT,
                                tooltip="What to segment, e.g. 'the dog running on the beach'. A bare noun ('dog') "
                                        "becomes 'Please segment the dog.'."),
                io.Combo.Input("model_name", options=model_choices(), default=catalog.DEFAULT_MODEL,
                               tooltip="Used when no Sa2VA Loader is connected. " + MODEL_TOOLTIP),
                io.Int.Input("key_frames", default=DEFAULT_KEY_FRAMES, min=1, max=32,
                             tooltip="How many frames the language model sees; SAM2 is prompted on each of them. "
                                     "The reference uses 5. More costs more language-model tokens."),
                io.Combo.Input("key_frame_spacing", options=list(KEY_FRAME_SPACINGS), default="first",
                               tooltip="first: frames 0..K-1 (the reference). even: K frames spread over the whole "
                                       "clip (first and last included), better when the object changes or "
                                       "appears late."),
                io.Combo.Input("mode", options=list(VIDEO_MODES), default="memory",
                               tooltip="memory: SAM2 tracks each object from the key frames with its memory (the "
                                       "reference). consistent: every frame is segmented from the prompt alone, "
                                       "with no memory (Sa2VA-i); no drift, but less temporal smoothing."),
                io.Boolean.Input("offload_frames", default=False,
                                 tooltip="Move each frame's masks to the CPU as soon as it is done (else they stay on the "
                                         "GPU until the clip ends: 4 bytes per pixel per object per frame). On for "
                                         "long or high-resolution clips on a small GPU."),
                io.Boolean.Input("offload_state", default=False,
                                 tooltip="Keep SAM2's memory of past frames (about 6 MB per object at full size, "
                                         "bounded) on the CPU; it moves to the GPU while a frame uses it."),
                io.Int.Input("max_new_tokens", default=DEFAULT_MAX_NEW_TOKENS, min=1, max=2048,
                             tooltip="Longest answer in tokens. Each mask needs only a few."),
                io.Float.Input("mask_threshold", default=DEFAULT_MASK_THRESHOLD, min=0.0, max=1.0, step=0.01,
                               tooltip="With apply_mask_threshold on, pixels whose probability is at least this "
                                       "become 1, the rest 0."),
                io.Boolean.Input("apply_mask_threshold", default=True,
                                 tooltip="Off: output the model's soft probabilities (0..1) instead of binary masks."),
                io.Boolean.Input("clean_vram_after", default=False,
                                 tooltip="Release the model's memory after this run (the next run loads it again)."),
                Sa2VAModelType.Input("model", optional=True,
                                     tooltip="A Sa2VA Loader's model; when connected, model_name is ignored."),
            ],
            outputs=[
                io.Mask.Output(display_name="masks", tooltip="One mask per object per frame, object by object: "
                                                             "masks 0..T-1 are object 0's track, T..2T-1 object 1's "
                                                             "(see phrases). T empty masks when nothing was found."),
                io.Mask.Output(display_name="merged_mask", tooltip="Union of all objects, one mask per frame."),
                io.Image.Output(display_name="overlay", tooltip="The masks coloured over each frame."),
                io.String.Output(display_name="text", tooltip="The model's answer."),
                io.String.Output(display_name="phrases", tooltip="One line per object: 'index: phrase (masks "
                                                                 "first-last)'."),
            ],
        )

    @classmethod
    def execute(cls, frames, prompt: str, model_name: str, key_frames: int, key_frame_spacing: str, mode: str,
                offload_frames: bool, offload_state: bool, max_new_tokens: int, mask_threshold: float,
                apply_mask_threshold: bool, clean_vram_after: bool, model=None) -> io.NodeOutput:
        result = segment_video(frames, prompt, model, model_name, key_frames, key_frame_spacing, mode,
                               offload_frames, offload_state, max_new_tokens, mask_threshold, apply_mask_threshold,
                               clean_vram_after)
        return io.NodeOutput(result.masks, result.merged, result.overlay, result.text, result.phrases)


class Sa2VAExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [Sa2VALoader, Sa2VASegmentation, Sa2VARefineMask, Sa2VAVideoSegmentation]


async def comfy_entrypoint() -> Sa2VAExtension:
    comfy.register_model_folder()
    problem = transformers_problem()
    if problem:
        logger.warning("ComfyUI-Sa2VA: %s. The Sa2VA nodes will report this when they run.", problem)
    return Sa2VAExtension()
