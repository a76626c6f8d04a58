"""ComfyUI-Sa2VA: ComfyUI entry point (V3 nodes: Sa2VA Loader, Segmentation, Refine Mask, Video Segmentation).

Importing this package must never break ComfyUI's start-up: with a ComfyUI older than the V3 node API (0.3.48)
the pack logs one line and registers nothing; heavy dependencies (transformers, bitsandbytes) are imported only
when a node runs, so a missing or old one shows up as an error on that node, not at start-up.
"""
import importlib.util
import logging

logger = logging.getLogger(__name__)

#: the page's part (web/sa2va.js: workflows saved with the flat inputs open in the grouped layout)
WEB_DIRECTORY = "./web"


def _has_versioned_api() -> bool:
    """True when ComfyUI's comfy_api has a versioned V3 module (``comfy_api.v0_0_2`` since 0.3.48); the pack never
    imports ``comfy_api.latest``."""
    from .nodes import comfy

    return comfy.HAS_V3


if importlib.util.find_spec("comfy_api") is not None and _has_versioned_api():
    from .nodes.extension import comfy_entrypoint  # noqa: F401

    __all__ = ["comfy_entrypoint"]
elif importlib.util.find_spec("comfy") is not None:
    logger.warning("ComfyUI-Sa2VA needs ComfyUI 0.3.48 or newer (V3 node API); its nodes are disabled. "
                   "Update ComfyUI to use them.")
