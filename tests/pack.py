"""Import the node pack the way ComfyUI does: by path, as a package whose name is not a valid identifier."""
from __future__ import annotations

import importlib.util
import sys

from conftest import ROOT

PACK_NAME = "ComfyUI-Sa2VA"


def load_pack():
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    spec = importlib.util.spec_from_file_location(PACK_NAME, ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    spec.loader.exec_module(module)
    return module


def pack_module(name: str):
    """A submodule of the pack, e.g. pack_module("nodes.segmentation")."""
    load_pack()
    return importlib.import_module(f"{PACK_NAME}.{name}")
