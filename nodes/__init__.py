"""ComfyUI node layer (V3 schema). Thin by design: validation and tensor conversion only, logic lives in sa2va/.

Planned nodes: Sa2VA Loader (SA2VA_MODEL handle, downloads with progress and cancel) and Sa2VA Segmentation.
This package never does ``import nodes`` (ComfyUI has its own top-level ``nodes`` module): relative imports only.
"""
