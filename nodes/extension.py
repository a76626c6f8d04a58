"""The pack's node list and ComfyUI's entry point (``comfy_entrypoint``)."""
from __future__ import annotations

import logging

from ..sa2va.compat import transformers_problem
from . import comfy, queue_hook
from .common import MODEL_SLOT
from .loader import Sa2VALoader
from .refine import Sa2VARefineMask
from .segmentation import Sa2VASegmentation
from .video import Sa2VAVideoSegmentation

logger = logging.getLogger(__name__)

NODES: list[type] = [Sa2VALoader, Sa2VASegmentation, Sa2VARefineMask, Sa2VAVideoSegmentation]


async def comfy_entrypoint():
    """Called by ComfyUI (0.3.48 or newer) at start-up: register the model folders and the prompt hook that releases
    the models of deleted nodes (:mod:`.queue_hook`), return the extension."""
    comfy.register_model_folder()
    queue_hook.install(MODEL_SLOT)
    logger.info("ComfyUI-Sa2VA: V3 nodes through comfy_api.%s", comfy.API_VERSION)
    problem = transformers_problem()
    if problem:
        logger.warning("ComfyUI-Sa2VA: %s. The Sa2VA nodes will report this when they run.", problem)
    return comfy.extension(NODES)
