"""Short nodes: the Segmentation and Video nodes' rarely changed inputs folded under a few choices.

Where the running ComfyUI has ``io.DynamicCombo`` (an option that shows only its own inputs; ComfyUI 0.8 has it),
the two nodes declare a *grouped* layout: the refinement stack is one choice (each method alone with its defaults,
each method "custom" with only its own parameters, levels only, off), and the generation / output options and the
node's own model options are each a "defaults" / "custom" choice. Older ComfyUI keeps the *flat* inputs (the same
input names, in the order workflows were saved with).

ComfyUI passes a grouped input to ``execute`` as a dict (``{"refinement": "FastMatte (custom)", "black_point":
0.1, ...}``); :func:`flatten` turns those back into the flat keyword arguments the engine's options are made of, so
``execute`` is the same for both layouts. :func:`choose` and :func:`grouped_values` go the other way (a flat workflow's
values -> the grouped choice that keeps them); the page does the same when it opens a workflow saved with the flat
inputs (``web/sa2va.js``, from the table :func:`layout_table` puts into the node definition).
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..sa2va.errors import InputError
from ..sa2va.hub import catalog
from ..sa2va.outputs.matting import DEFAULT_MAX_MEGAPIXELS
from ..sa2va.outputs.refine import RefineSettings
from ..sa2va.requests import DEFAULT_MAX_NEW_TOKENS, DEFAULT_PROMPT
from ..sa2va.tasks import DEFAULT_TASK
from ..sa2va.video import VideoOptions
from . import comfy


@dataclass(frozen=True)
class Choice:
    """One option of a grouped input: the flat ``inputs`` it shows, the flat values it ``sets``, and the flat names
    it ``ignores`` (those that do not matter with it, e.g. the guided filter's radius with VITMatte)."""

    key: str
    inputs: tuple[str, ...] = ()
    sets: Mapping[str, object] = field(default_factory=dict)
    ignores: tuple[str, ...] = ()


@dataclass(frozen=True)
class Group:
    """A grouped input (a DynamicCombo): its name, tooltip and choices (the first is the default)."""

    name: str
    tooltip: str
    choices: tuple[Choice, ...]

    @property
    def names(self) -> list[str]:
        """Every flat input the group stands for, in first-mention order."""
        names: list[str] = []
        for choice in self.choices:
            for name in (*choice.sets, *choice.inputs, *choice.ignores):
                if name not in names:
                    names.append(name)
        return names

    def choice(self, key: str) -> Choice:
        for choice in self.choices:
            if choice.key == key:
                return choice
        raise InputError(f"{self.name} must be one of {', '.join(c.key for c in self.choices)}; got {key!r}.")


@dataclass(frozen=True)
class Layout:
    """A node's two layouts: ``flat`` (the widget order saved workflows have) and ``grouped`` (plain input names and
    groups, in widget order), with the flat inputs' ``defaults``."""

    node_id: str
    flat: tuple[str, ...]
    grouped: tuple[str | Group, ...]
    defaults: Mapping[str, object]

    @property
    def groups(self) -> list[Group]:
        return [g for g in self.grouped if isinstance(g, Group)]


# ------------------------------------------------------------------------------------------ the layouts
_R = RefineSettings()
LEVELS = ("black_point", "white_point", "detail_erode", "detail_dilate")
GUIDED = ("guided_radius", "guided_eps")
MATTING = ("vitmatte_max_megapixels",)

REFINEMENT = Group("refinement", (
    "How mask edges are refined. FastMatte: guided filter that snaps soft edges to the image's edges (fast, no "
    "weights). VITMatte: ViTMatte matting for hair and fur (downloads ~100 MB once). levels only: black/white points "
    "and erode/dilate, no edge method. off: the model's probabilities go straight to the threshold. A '(custom)' "
    "choice shows that method's own parameters."), (
    Choice("FastMatte", sets={"process_details": True, "detail_method": "FastMatte"}, ignores=MATTING),
    Choice("FastMatte (custom)", LEVELS + GUIDED, {"process_details": True, "detail_method": "FastMatte"}, MATTING),
    Choice("VITMatte", sets={"process_details": True, "detail_method": "VITMatte"}, ignores=GUIDED),
    Choice("VITMatte (custom)", LEVELS + MATTING, {"process_details": True, "detail_method": "VITMatte"}, GUIDED),
    Choice("levels only", LEVELS, {"process_details": True, "detail_method": "none"}, GUIDED + MATTING),
    Choice("off", sets={"process_details": False}, ignores=("detail_method",) + LEVELS + GUIDED + MATTING),
))

MODEL_OPTIONS = Group("model_options", (
    "defaults: the node's own model in the automatic precision, unquantised, kept loaded after the run. custom: "
    "dtype, quantization (used when no Sa2VA Loader is connected) and clean_vram_after."), (
    Choice("defaults"), Choice("custom", ("dtype", "quantization", "clean_vram_after"))))

SEGMENTATION_OPTIONS = Group("options", (
    "defaults: answers up to 512 tokens, binary masks at threshold 0.3, every object kept, the prompt as one "
    "request. custom: max_new_tokens, the mask threshold, min_score and prompt_per_line."), (
    Choice("defaults"),
    Choice("custom", ("max_new_tokens", "mask_threshold", "apply_mask_threshold", "min_score", "prompt_per_line"))))

VIDEO_OPTIONS = Group("options", (
    "defaults: key frames from the start, answers up to 512 tokens, binary masks at threshold 0.3, every object "
    "kept, finished masks moved off the GPU. custom: key_frame_spacing, max_new_tokens, the mask threshold, "
    "min_score, offload_frames and offload_state."), (
    Choice("defaults"),
    Choice("custom", ("key_frame_spacing", "max_new_tokens", "mask_threshold", "apply_mask_threshold", "min_score",
                      "offload_frames", "offload_state"))))

_COMMON_DEFAULTS = {"model_name": catalog.DEFAULT_MODEL, "max_new_tokens": DEFAULT_MAX_NEW_TOKENS, "mask_threshold": _R.mask_threshold,
                    "apply_mask_threshold": True, "clean_vram_after": False, "dtype": "auto", "quantization": "none",
                    "min_score": 0.0, "task": DEFAULT_TASK}

SEGMENTATION = Layout(
    "Sa2VASegmentation",
    flat=("segmentation_prompt", "model_name", "max_new_tokens", "mask_threshold", "apply_mask_threshold",
          "clean_vram_after", "process_details", *LEVELS[:2], "detail_method", *LEVELS[2:], *GUIDED, *MATTING,
          "dtype", "quantization", "prompt_per_line", "min_score", "task"),
    grouped=("segmentation_prompt", "model_name", "task", REFINEMENT, SEGMENTATION_OPTIONS, MODEL_OPTIONS),
    defaults={**_COMMON_DEFAULTS, "segmentation_prompt": DEFAULT_PROMPT, "process_details": _R.process_details,
              "black_point": _R.black_point, "white_point": _R.white_point, "detail_method": _R.detail_method,
              "detail_erode": _R.detail_erode, "detail_dilate": _R.detail_dilate, "guided_radius": _R.guided_radius,
              "guided_eps": _R.guided_eps, "vitmatte_max_megapixels": DEFAULT_MAX_MEGAPIXELS,
              "prompt_per_line": False})

VIDEO = Layout(
    "Sa2VAVideoSegmentation",
    flat=("prompt", "model_name", "key_frames", "key_frame_spacing", "mode", "offload_frames", "offload_state",
          "max_new_tokens", "mask_threshold", "apply_mask_threshold", "clean_vram_after", "dtype", "quantization",
          "min_score", "task"),
    grouped=("prompt", "model_name", "task", "key_frames", "mode", VIDEO_OPTIONS, MODEL_OPTIONS),
    defaults={**_COMMON_DEFAULTS, "prompt": DEFAULT_PROMPT, "key_frames": VideoOptions.key_frames,
              "key_frame_spacing": VideoOptions.key_frame_spacing, "mode": VideoOptions.mode,
              "offload_frames": True, "offload_state": False})

LAYOUTS = {layout.node_id: layout for layout in (SEGMENTATION, VIDEO)}
#: the key of the layout table in the node definition (the first group input's options)
LAYOUT_KEY = "sa2va_layout"


# ------------------------------------------------------------------------------------------------ schema
def grouped_schema() -> bool:
    """Whether the nodes declare the grouped layout (the running ComfyUI has ``io.DynamicCombo``)."""
    return comfy.dynamic_combo()


def schema_inputs(io, layout: Layout, declared: list) -> list:
    """The node's inputs: ``declared`` (its flat inputs, every one of them, in any order) as they are where ComfyUI
    has no DynamicCombo; else the layout's grouped widgets first (a DynamicCombo per group, its choices' inputs
    copied as required inputs so that they keep their order), then every declared input that is no widget of the
    layout (sockets such as ``model`` and ``regions``)."""
    if not comfy.dynamic_combo():
        return declared
    by_name = {spec.id: spec for spec in declared}
    grouped = []
    for entry in layout.grouped:
        if isinstance(entry, Group):
            options = [io.DynamicCombo.Option(c.key, [_required(by_name[n]) for n in c.inputs]) for c in entry.choices]
            # the first group carries the layout table the page migrates flat workflows with (web/sa2va.js)
            table = {LAYOUT_KEY: layout_table(layout)} if entry is layout.groups[0] else None
            grouped.append(io.DynamicCombo.Input(entry.name, options=options, tooltip=entry.tooltip,
                                                 extra_dict=table))
        else:
            grouped.append(_required(by_name[entry]))
    sockets = [spec for spec in declared if spec.id not in set(layout.flat)]
    return sockets[:1] + grouped + sockets[1:]


def _required(spec):
    """``spec`` as a required input (a DynamicCombo choice lists required inputs first, optional ones after)."""
    spec = copy.copy(spec)
    spec.optional = False
    return spec


# ------------------------------------------------------------------------------------------ values
def flatten(layout: Layout, values: Mapping[str, object]) -> dict[str, object]:
    """The flat keyword arguments of ``values`` (``execute``'s inputs in either layout): each group's dict replaced
    by the flat values its choice sets and shows. Flat names neither given nor set keep ``execute``'s defaults."""
    flat = dict(values)
    for group in layout.groups:
        given = flat.pop(group.name, None)
        if given is None:
            continue
        if not isinstance(given, Mapping):
            raise InputError(f"{group.name} must be a choice with its inputs, got {given!r}.")
        # a group given without its choice (newer ComfyUI passes {} for an unset dynamic input): the default choice
        choice = group.choice(str(given.get(group.name, group.choices[0].key)))
        flat.update(choice.sets)
        flat.update({name: given[name] for name in choice.inputs if name in given})
    return flat


def choose(group: Group, flat: Mapping[str, object], defaults: Mapping[str, object],
           shown: tuple[str, ...] = ()) -> Choice:
    """The first choice of ``group`` that keeps the flat values ``flat`` (missing names at their ``defaults``): it
    sets the same values, and every name it neither shows nor ignores is at its default. ``shown``: names that must
    be among the choice's inputs (a widget a saved workflow has connected)."""
    for choice in group.choices:
        if any(flat.get(k, defaults.get(k)) != v for k, v in choice.sets.items()):
            continue
        hidden = [n for n in group.names if n not in choice.inputs and n not in choice.ignores and n not in choice.sets]
        if any(flat.get(n, defaults.get(n)) != defaults.get(n) for n in hidden):
            continue
        if all(n in choice.inputs for n in shown if n in group.names):
            return choice
    raise InputError(f"No choice of {group.name} keeps the values {dict(flat)}.")


def grouped_values(layout: Layout, flat: Mapping[str, object]) -> list[object]:
    """The grouped layout's widget values of the flat values ``flat`` (what the page's migration writes into a
    workflow saved with the flat inputs)."""
    values: list[object] = []
    for entry in layout.grouped:
        if isinstance(entry, Group):
            choice = choose(entry, flat, layout.defaults)
            values.append(choice.key)
            values.extend(flat.get(n, layout.defaults[n]) for n in choice.inputs)
        else:
            values.append(flat.get(entry, layout.defaults[entry]))
    return values


def api_inputs(layout: Layout, flat: Mapping[str, object]) -> dict[str, object]:
    """The grouped layout's API-format inputs (``"refinement"``, ``"refinement.black_point"``, ...) of the flat
    values ``flat``; names outside the layout's widgets (links, sockets) are passed as they are."""
    inputs = {k: v for k, v in flat.items() if k not in layout.flat}
    for entry in layout.grouped:
        if isinstance(entry, Group):
            choice = choose(entry, flat, layout.defaults)
            inputs[entry.name] = choice.key
            inputs.update({f"{entry.name}.{n}": flat.get(n, layout.defaults[n]) for n in choice.inputs})
        elif entry in flat:
            inputs[entry] = flat[entry]
    return inputs


def flat_from_api(layout: Layout, inputs: Mapping[str, object]) -> dict[str, object]:
    """The flat values of the grouped layout's API-format ``inputs`` (the reverse of :func:`api_inputs`; inputs a
    choice does not show are left out, so they keep their defaults)."""
    nested = {k: v for k, v in inputs.items() if "." not in k}
    for group in layout.groups:
        if group.name in inputs:
            prefix = group.name + "."
            nested[group.name] = {group.name: inputs[group.name],
                                  **{k[len(prefix):]: v for k, v in inputs.items() if k.startswith(prefix)}}
    return flatten(layout, nested)


def layout_table(layout: Layout) -> dict:
    """``layout`` as JSON data: what the page needs to migrate a workflow saved with the flat inputs
    (``web/sa2va.js``; it is part of the node definition, on the first group's input as ``sa2va_layout``)."""
    def entry(item):
        if isinstance(item, Group):
            return {"group": item.name, "names": item.names,
                    "choices": [{"key": c.key, "inputs": list(c.inputs), "sets": dict(c.sets),
                                 "ignores": list(c.ignores)} for c in item.choices]}
        return item

    return {"flat": list(layout.flat), "grouped": [entry(e) for e in layout.grouped],
            "defaults": dict(layout.defaults)}
