"""ComfyUI-Sa2VA: ComfyUI entry point.

The nodes (Sa2VA Loader, Sa2VA Segmentation) are built on the ``sa2va`` library in this folder and registered
through ComfyUI's V3 schema once they are in (see nodes/). Importing this package must never break ComfyUI's
start-up, so it imports nothing heavy at module level.
"""
import logging

logger = logging.getLogger(__name__)

# ComfyUI reads these (V1 loader); the pack exposes no nodes yet: the library and CLI come first.
NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
