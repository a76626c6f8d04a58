"""ComfyUI node layer (V3 schema): one module per node class (schema + ``execute``), shared helpers in
:mod:`.common`, the one bridge to ComfyUI in :mod:`.comfy`, the node list in :mod:`.extension`. Thin by design:
validation and tensor conversion only, the logic lives in sa2va/.

This package never does ``import nodes`` (ComfyUI has its own top-level ``nodes`` module): relative imports only.
"""
