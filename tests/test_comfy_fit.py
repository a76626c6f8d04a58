"""Fitting the ComfyUI a user already has (issue 15): the versioned comfy_api import, newer schema features only
where present, ComfyUI's memory manager (with fakes of comfy.model_management / ModelPatcher), Cancel between
stages, and video outputs without a second copy of the clip."""
import sys
import types

import pytest
import torch

from nodetools import FAKE_IO, schema
from pack import pack_module

comfy = pack_module("nodes.comfy")


# ---------------------------------------------------------------------------------- versioned comfy_api import
def _fake_comfy_api(root, versions: dict[str, str]):
    """A comfy_api package on disk: ``versions`` maps a submodule name to its source; ``latest`` always fails."""
    package = root / "comfy_api"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "latest").mkdir()
    (package / "latest" / "__init__.py").write_text("raise AssertionError('the pack imported comfy_api.latest')\n")
    for name, source in versions.items():
        (package / name).mkdir()
        (package / name / "__init__.py").write_text(source)


GOOD = "io = 'io of {name}'\nclass ComfyExtension: pass\n"


@pytest.fixture
def fake_comfy_api(tmp_path, monkeypatch):
    def install(versions):
        _fake_comfy_api(tmp_path, versions)
        monkeypatch.syspath_prepend(str(tmp_path))
        for name in [n for n in sys.modules if n == "comfy_api" or n.startswith("comfy_api.")]:
            monkeypatch.delitem(sys.modules, name)
    yield install
    for name in [n for n in sys.modules if n == "comfy_api" or n.startswith("comfy_api.")]:
        del sys.modules[name]


def test_the_newest_versioned_comfy_api_is_used_never_latest(fake_comfy_api):
    fake_comfy_api({"v0_0_1": GOOD.format(name="v0_0_1"), "v0_0_2": GOOD.format(name="v0_0_2"),
                    "v0_0_10": GOOD.format(name="v0_0_10")})
    version, io, extension = comfy.v3_api()
    assert version == "v0_0_10" and io == "io of v0_0_10" and extension.__name__ == "ComfyExtension"


def test_a_versioned_module_that_fails_falls_back_to_an_older_one(fake_comfy_api):
    fake_comfy_api({"v0_0_2": GOOD.format(name="v0_0_2"), "v0_0_3": "import no_such_module_here\n",
                    "v0_0_4": "x = 1\n"})  # v0_0_4 imports but has no io: skipped too
    version, io, _ = comfy.v3_api()
    assert (version, io) == ("v0_0_2", "io of v0_0_2")


def test_without_a_versioned_module_there_is_no_v3_api(fake_comfy_api):
    fake_comfy_api({})
    assert comfy.v3_api() is None


def test_outside_comfyui_there_is_no_v3_api():
    assert comfy.v3_api() is None and not comfy.HAS_V3 and comfy.API_VERSION is None


def test_newer_schema_features_only_where_comfyui_has_them():
    def new_schema(node_id, display_name, search_aliases=None): ...

    def old_schema(node_id, display_name): ...

    assert comfy.supported(new_schema, search_aliases=["x"]) == {"search_aliases": ["x"]}
    assert comfy.supported(old_schema, search_aliases=["x"]) == {}


def test_search_aliases_and_advanced_inputs_reach_a_comfyui_that_has_them(monkeypatch):
    segmentation = pack_module("nodes.segmentation")

    class Input:
        def __init__(self, name, advanced=None, **kw):
            self.name, self.advanced, self.kw = name, advanced, kw

    def new_schema(node_id, display_name, category, description, inputs, outputs, hidden=None,
                   search_aliases=None):
        return {"inputs": inputs, "search_aliases": search_aliases}

    newer = types.SimpleNamespace(**vars(FAKE_IO))
    newer.Schema = new_schema
    for kind in ("Int", "Float", "Boolean", "Combo"):
        setattr(newer, kind, types.SimpleNamespace(Input=Input, Output=getattr(FAKE_IO, kind).Output))
    monkeypatch.setattr(comfy, "io", newer)
    declared = segmentation.Sa2VASegmentation.define_schema()
    assert declared["search_aliases"] == segmentation.SEARCH_ALIASES
    advanced = {i.name for i in declared["inputs"] if getattr(i, "advanced", None)}
    assert {"guided_radius", "guided_eps", "vitmatte_max_megapixels"} <= advanced
    plain = schema(segmentation.Sa2VASegmentation)  # the 0.3.48 shape: neither feature
    assert "search_aliases" not in plain
    assert not any("advanced" in s.kw for s in plain["inputs"])
