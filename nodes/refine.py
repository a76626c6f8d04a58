"""Sa2VA Refine Mask: the refinement stack on any IMAGE + MASK pair; and the ViTMatte model the refinement shares.

The ViTMatte model is loaded on the first VITMatte use into :data:`MATTER_SLOT`, freed by ``clean_vram_after``; it is
small (~100 MB) and shared by every node that needs it. Inside ComfyUI it is registered with the memory manager like
an unquantised Sa2VA model: it waits on the offload device, moves to the GPU right before use (after ComfyUI made room
for it and its activations), and "Unload Models" moves it off the GPU.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..sa2va.hub.download import DownloadCancelled, download, is_complete
from ..sa2va.errors import InputError
from ..sa2va.outputs.matting import DEFAULT_MAX_MEGAPIXELS, VITMATTE_NAME, VITMATTE_REPO, Matter, load_matter
from ..sa2va.outputs.refine import RefineSettings, refine
from . import comfy
from .common import CATEGORY, ModelSlot, refine_inputs, refine_settings, sanitize

logger = logging.getLogger(__name__)

#: extra words the node search finds this node by (ComfyUI versions with search aliases)
SEARCH_ALIASES = ["matte", "vitmatte", "guided filter", "mask edges", "refine mask"]

VITMATTE_FILES = ("config.json", "preprocessor_config.json")
#: the shared ViTMatte model
MATTER_SLOT = ModelSlot("ViTMatte")


def vitmatte_folder() -> Path:
    """A complete ViTMatte folder: found under a registered vitmatte folder, else downloaded."""
    for base in comfy.model_dirs(comfy.MATTING_FOLDER_NAME):
        if is_complete(base / VITMATTE_NAME, VITMATTE_FILES):
            return base / VITMATTE_NAME
    target = comfy.model_dirs(comfy.MATTING_FOLDER_NAME)[0] / VITMATTE_NAME
    bar = comfy.Progress(1, "download ViTMatte")
    try:
        download(VITMATTE_REPO, target, progress=lambda done, total: bar.set(done, total),
                 cancelled=comfy.interrupted, required=VITMATTE_FILES)
    except DownloadCancelled:
        comfy.throw_if_interrupted()
        raise
    finally:
        bar.close()
    return target


#: ViTMatte activations per megapixel matted (fp32; docs/performance.md)
MATTING_BYTES_PER_MEGAPIXEL = 2**30


@dataclass
class ManagedMatter:
    """The shared ViTMatte model and its ModelPatcher (None outside ComfyUI)."""

    matter: Matter
    patcher: object | None

    def release_vram(self) -> None:
        comfy.unload_patcher(self.patcher)


def load_managed_matter() -> ManagedMatter:
    """Load ViTMatte on the offload device and register it with ComfyUI's memory manager."""
    run = comfy.torch_device()
    offload = comfy.offload_device() if comfy.IN_COMFY else run
    loaded = load_matter(vitmatte_folder(), device=offload)
    return ManagedMatter(loaded, comfy.make_patcher({"vitmatte": loaded.model}, run, offload))


def matter(max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> Matter:
    """The shared ViTMatte model (loaded on first use), on its run device with room for ``max_megapixels``."""
    managed = MATTER_SLOT.get(VITMATTE_NAME, load_managed_matter)
    comfy.load_patcher(managed.patcher, int(max_megapixels * MATTING_BYTES_PER_MEGAPIXEL))
    return managed.matter


def refine_batch(image: torch.Tensor, probabilities: list[torch.Tensor],
                 settings: RefineSettings) -> list[torch.Tensor]:
    """Refine per-image probability stacks (``[N_i, H, W]``) of a sanitised IMAGE batch ``[B, H, W, 3]``."""
    settings.validate()
    shared = matter(settings.max_megapixels) if settings.needs_matter and any(p.shape[0] for p in probabilities) else None
    refined = []
    for i, p in enumerate(probabilities):
        comfy.throw_if_interrupted()  # Cancel: no image's refinement starts after it
        refined.append(refine(image[i], p, settings, shared))
    return refined


class Sa2VARefineMask(comfy.NodeBase):
    """Refine any MASK ``[B or 1, h, w]`` on an IMAGE ``[B or 1, H, W, 3]``: a mask of another size is resized
    (bilinear) to the image; a single mask or image is repeated over the other's batch. Outputs MASK
    ``[max(B), H, W]`` and the same as grey images."""

    @classmethod
    def define_schema(cls):
        io = comfy.schema_api()
        return io.Schema(
            node_id="Sa2VARefineMask",
            display_name="Sa2VA Refine Mask",
            **comfy.supported(io.Schema, search_aliases=SEARCH_ALIASES),
            category=CATEGORY,
            description="Refine any mask on its image with the Sa2VA refinement stack: black/white points, "
                        "FastMatte (guided filter) or VITMatte, erode/dilate, optional threshold.",
            inputs=[
                io.Image.Input("image", tooltip="The image the mask belongs to (guides the edge refinement)."),
                io.Mask.Input("mask", tooltip="Any mask; resized to the image if its size differs."),
                io.Float.Input("mask_threshold", default=RefineSettings.mask_threshold, min=0.0, max=1.0,
                               step=0.01,
                               tooltip="With apply_mask_threshold on, values at least this become 1, the rest 0."),
                io.Boolean.Input("apply_mask_threshold", default=False,
                                 tooltip="Off (default): keep the refined soft alpha."),
                io.Boolean.Input("clean_vram_after", default=False,
                                 tooltip="Release the ViTMatte model after this run."),
                *refine_inputs(io),
            ],
            outputs=[io.Mask.Output(display_name="mask", tooltip="The refined mask(s), one per image."),
                     io.Image.Output(display_name="mask_image", tooltip="The refined mask(s) as grey images.")],
        )

    @classmethod
    def execute(cls, *, image: torch.Tensor, mask: torch.Tensor, mask_threshold: float, apply_mask_threshold: bool,
                clean_vram_after: bool, **refinement):
        settings = refine_settings(**refinement, mask_threshold=mask_threshold,
                                   apply_mask_threshold=apply_mask_threshold)
        if not isinstance(image, torch.Tensor) or image.ndim != 4:
            raise InputError(f"Expected a ComfyUI IMAGE [B, H, W, 3], got {getattr(image, 'shape', type(image))}.")
        if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3):
            raise InputError(f"Expected a ComfyUI MASK [B, H, W], got {getattr(mask, 'shape', type(mask))}.")
        mask = mask.unsqueeze(0) if mask.ndim == 2 else mask
        batch = max(image.shape[0], mask.shape[0])
        if image.shape[0] not in (1, batch) or mask.shape[0] not in (1, batch):
            raise InputError(f"IMAGE batch {image.shape[0]} and MASK batch {mask.shape[0]} do not match; use equal "
                             f"batches or a single image/mask.")
        height, width = image.shape[1], image.shape[2]
        mask = torch.nan_to_num(mask.float(), nan=0.0).clamp(0, 1)
        if mask.shape[1:] != (height, width):
            mask = F.interpolate(mask.unsqueeze(1), size=(height, width), mode="bilinear", align_corners=False)[:, 0]
        image = sanitize(image)
        image = image.expand(batch, -1, -1, -1) if image.shape[0] == 1 else image
        mask = mask.expand(batch, -1, -1) if mask.shape[0] == 1 else mask
        try:
            out = torch.cat(refine_batch(image, [mask[i:i + 1] for i in range(batch)], settings))
        finally:
            if clean_vram_after:
                MATTER_SLOT.release()
        out = out.to(comfy.output_device())
        return comfy.node_output(out, out.unsqueeze(-1).expand(-1, -1, -1, 3).contiguous())
