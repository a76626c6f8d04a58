"""Key maps between the Sa2VA release layout and transformers' native modules.

A Sa2VA release stores one state dict with three parts (docs/formats.md, "Weights"):

* ``model.*``: the vision-language model (Qwen*VLForConditionalGeneration or InternVL),
* ``grounding_encoder.sam2_model.*``: SAM2 in the original facebookresearch naming, with ``.gamma``
  renamed to ``.g_weight``,
* ``text_hidden_fcs.{0,2}.*``: the [SEG] projection.

This module only renames keys; it never touches tensor values except where the release splits what
transformers stores as one tensor (the prompt encoder's point embeddings).
"""
from __future__ import annotations

import re
from collections.abc import Iterable

SAM2_PREFIX = "grounding_encoder.sam2_model."
PROJECTION_PREFIX = "text_hidden_fcs."
VLM_PREFIX = "model."

_NUM_POINT_EMBEDDINGS = 4
_POINT_EMBED_NATIVE = "prompt_encoder.point_embed.weight"
_POINT_EMBED_RELEASE = "sam_prompt_encoder.point_embeddings.{}.weight"
_GAUSSIAN_NATIVE = "prompt_encoder.shared_embedding.positional_embedding"
_GAUSSIAN_NATIVE_COPY = "shared_image_embedding.positional_embedding"

# The one table of SAM2 renames: (original SAM2 name, transformers name), both as templates. A template ending in "."
# renames a prefix, any other renames a whole key, and one starting with "." renames the first occurrence anywhere;
# "{i}" and "{j}" stand for a number and are carried over. Release -> native applies the rules in this order, each at
# most once, so later rules may refine what earlier ones produced (a prefix first, then names inside it); native ->
# release applies the swapped rules in the reverse order. That is an exact inverse as long as no key that a rule
# leaves alone already looks like that rule's output, which the round-trip tests in tests/test_keymap.py check over
# every Sam2VideoModel key.
SAM2_RENAMES: tuple[tuple[str, str], ...] = (
    ("image_encoder.trunk.", "vision_encoder.backbone."),
    ("image_encoder.neck.convs.{i}.conv.", "vision_encoder.neck.convs.{i}."),
    ("vision_encoder.backbone.patch_embed.proj.", "vision_encoder.backbone.patch_embed.projection."),
    ("vision_encoder.backbone.blocks.{i}.norm{j}.", "vision_encoder.backbone.blocks.{i}.layer_norm{j}."),
    ("vision_encoder.backbone.blocks.{i}.mlp.layers.0.", "vision_encoder.backbone.blocks.{i}.mlp.proj_in."),
    ("vision_encoder.backbone.blocks.{i}.mlp.layers.1.", "vision_encoder.backbone.blocks.{i}.mlp.proj_out."),
    ("sam_prompt_encoder.", "prompt_encoder."),
    ("prompt_encoder.pe_layer.positional_encoding_gaussian_matrix", _GAUSSIAN_NATIVE),
    ("prompt_encoder.mask_downscaling.0.", "prompt_encoder.mask_embed.conv1."),
    ("prompt_encoder.mask_downscaling.1.", "prompt_encoder.mask_embed.layer_norm1."),
    ("prompt_encoder.mask_downscaling.3.", "prompt_encoder.mask_embed.conv2."),
    ("prompt_encoder.mask_downscaling.4.", "prompt_encoder.mask_embed.layer_norm2."),
    ("prompt_encoder.mask_downscaling.6.", "prompt_encoder.mask_embed.conv3."),
    ("sam_mask_decoder.", "mask_decoder."),
    ("mask_decoder.transformer.layers.{i}.norm{j}.", "mask_decoder.transformer.layers.{i}.layer_norm{j}."),
    ("mask_decoder.transformer.layers.{i}.mlp.layers.0.", "mask_decoder.transformer.layers.{i}.mlp.proj_in."),
    ("mask_decoder.transformer.layers.{i}.mlp.layers.1.", "mask_decoder.transformer.layers.{i}.mlp.proj_out."),
    ("mask_decoder.transformer.norm_final_attn.", "mask_decoder.transformer.layer_norm_final_attn."),
    ("mask_decoder.output_upscaling.0.", "mask_decoder.upscale_conv1."),
    ("mask_decoder.output_upscaling.1.", "mask_decoder.upscale_layer_norm."),
    ("mask_decoder.output_upscaling.3.", "mask_decoder.upscale_conv2."),
    ("memory_attention.layers.{i}.norm{j}.", "memory_attention.layers.{i}.layer_norm{j}."),
    ("memory_attention.norm.", "memory_attention.layer_norm."),
    ("memory_encoder.mask_downsampler.encoder.12.", "memory_encoder.mask_downsampler.final_conv."),
    ("memory_encoder.pix_feat_proj.", "memory_encoder.feature_projection."),
    ("memory_encoder.out_proj.", "memory_encoder.projection."),
    ("memory_encoder.fuser.layers.{i}.", "memory_encoder.memory_fuser.layers.{i}."),
    ("memory_encoder.memory_fuser.layers.{i}.dwconv.", "memory_encoder.memory_fuser.layers.{i}.depthwise_conv."),
    ("memory_encoder.memory_fuser.layers.{i}.pwconv{j}.", "memory_encoder.memory_fuser.layers.{i}.pointwise_conv{j}."),
    ("memory_encoder.memory_fuser.layers.{i}.norm.", "memory_encoder.memory_fuser.layers.{i}.layer_norm."),
    ("memory_encoder.memory_fuser.layers.{i}.g_weight", "memory_encoder.memory_fuser.layers.{i}.scale"),
    ("maskmem_tpos_enc", "memory_temporal_positional_encoding"),
    ("no_mem_embed", "no_memory_embedding"),
    ("no_mem_pos_enc", "no_memory_positional_encoding"),
    ("no_obj_ptr", "no_object_pointer"),
    ("obj_ptr_tpos_proj.", "temporal_positional_encoding_projection_layer."),  # SAM2.1 only
    ("no_obj_embed_spatial", "occlusion_spatial_embedding_parameter"),  # SAM2.1 only
    ("obj_ptr_proj.", "object_pointer_proj."),
    (".out_proj.", ".o_proj."),
)
# Other spellings of release names, rewritten before the renames (release -> native only): the facebookresearch
# checkpoints call the fuser's layer scale ``gamma``; the Sa2VA releases renamed it ``g_weight``.
RELEASE_ALIASES: tuple[tuple[str, str], ...] = (
    ("memory_encoder.fuser.layers.{i}.gamma", "memory_encoder.fuser.layers.{i}.g_weight"),
)


def _compile(source: str, target: str) -> tuple[re.Pattern, str]:
    """A template pair as (pattern, replacement) for ``re.sub`` (see :data:`SAM2_RENAMES`)."""
    pattern = re.escape(source)
    for name in ("i", "j"):
        pattern = pattern.replace(re.escape("{" + name + "}"), rf"(?P<{name}>\d+)", 1)
    if not source.startswith("."):
        pattern = "^" + pattern
    if not source.endswith("."):
        pattern += "$"
    return re.compile(pattern), target.replace("{i}", r"\g<i>").replace("{j}", r"\g<j>")


_ALIASES = [_compile(a, b) for a, b in RELEASE_ALIASES]
_TO_NATIVE = [_compile(release, native) for release, native in SAM2_RENAMES]
_TO_RELEASE = [_compile(native, release) for release, native in reversed(SAM2_RENAMES)]
_MLP3_HEADS = (r"((?:mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head|pred_obj_score_head))"
               r"|object_pointer_proj)")
_MLP3 = re.compile(rf"^{_MLP3_HEADS}\.layers\.(\d)\.(weight|bias)$")
_MLP3_NAMES = {"0": "proj_in", "1": "layers.0", "2": "proj_out"}
_MLP3_NATIVE = re.compile(rf"^{_MLP3_HEADS}\.(proj_in|layers\.0|proj_out)\.(weight|bias)$")
_MLP3_RELEASE = {v: k for k, v in _MLP3_NAMES.items()}
_DOWNSAMPLER = re.compile(r"^memory_encoder\.mask_downsampler\.encoder\.(\d+)\.(weight|bias)$")
_DOWNSAMPLER_NATIVE = re.compile(
    r"^memory_encoder\.mask_downsampler\.layers\.(\d+)\.(conv|layer_norm)\.(weight|bias)$")
_POINT_EMBEDDING = re.compile(r"^sam_prompt_encoder\.point_embeddings\.\d+\.weight$")


def sam2_key_to_native(key: str) -> str | None:
    """Original SAM2 name (release prefix stripped) -> transformers ``Sam2VideoModel`` name.

    Returns None for the point embeddings, which :func:`sam2_state_to_native` concatenates."""
    if _POINT_EMBEDDING.match(key):
        return None
    for pattern, repl in _ALIASES + _TO_NATIVE:
        key = pattern.sub(repl, key, count=1)
    m = _MLP3.match(key)
    if m:
        head, index, kind = m.groups()
        key = f"{head}.{_MLP3_NAMES[index]}.{kind}"
    m = _DOWNSAMPLER.match(key)
    if m:
        index, kind = int(m.group(1)), m.group(2)
        part = "conv" if index % 3 == 0 else "layer_norm"
        key = f"memory_encoder.mask_downsampler.layers.{index // 3}.{part}.{kind}"
    return key


def sam2_key_to_release(key: str) -> str | None:
    """transformers ``Sam2VideoModel`` name -> original SAM2 name (without the release prefix).

    Returns None for keys the release does not store separately (the duplicated gaussian matrix and the
    concatenated point embeddings, which :func:`sam2_state_to_release` splits)."""
    if key in (_GAUSSIAN_NATIVE_COPY, _POINT_EMBED_NATIVE):
        return None
    m = _DOWNSAMPLER_NATIVE.match(key)
    if m:
        layer, part, kind = int(m.group(1)), m.group(2), m.group(3)
        return f"memory_encoder.mask_downsampler.encoder.{3 * layer + (0 if part == 'conv' else 1)}.{kind}"
    m = _MLP3_NATIVE.match(key)
    if m:
        head, name, kind = m.groups()
        key = f"{head}.layers.{_MLP3_RELEASE[name]}.{kind}"
    for pattern, repl in _TO_RELEASE:
        key = pattern.sub(repl, key, count=1)
    return key


def sam2_tensor_to_native(key: str, tensor) -> list[tuple[str, int | None, object]]:
    """Where one release tensor goes in ``Sam2VideoModel``: ``[(native name, row or None, tensor), ...]``.

    A point embedding ``[1, 256]`` fills row i of ``point_embed.weight``; the gaussian matrix fills both of its
    native copies; every other tensor maps one to one. Used to stream a checkpoint into a model tensor by tensor."""
    m = _POINT_EMBEDDING.match(key)
    if m:
        return [(_POINT_EMBED_NATIVE, int(key.split(".")[2]), tensor)]
    native = sam2_key_to_native(key)
    if native == _GAUSSIAN_NATIVE:
        return [(_GAUSSIAN_NATIVE, None, tensor), (_GAUSSIAN_NATIVE_COPY, None, tensor)]
    return [(native, None, tensor)]


def sam2_state_to_native(release: dict, point_embeddings: list | None = None) -> dict:
    """Map SAM2 tensors (release names, prefix stripped) onto ``Sam2VideoModel`` names.

    The four ``point_embeddings.i.weight`` [1, 256] become ``point_embed.weight`` [4, 256]; the gaussian
    matrix is stored twice, as transformers does. Raises KeyError naming a missing point embedding."""
    import torch

    out = {}
    for key, value in release.items():
        native = sam2_key_to_native(key)
        if native is not None:
            out[native] = value
    points = [release[_POINT_EMBED_RELEASE.format(i)] for i in range(_NUM_POINT_EMBEDDINGS)]
    out[_POINT_EMBED_NATIVE] = torch.cat(points, dim=0)
    if _GAUSSIAN_NATIVE in out:
        out[_GAUSSIAN_NATIVE_COPY] = out[_GAUSSIAN_NATIVE]
    return out


def sam2_state_to_release(native: dict) -> dict:
    """Inverse of :func:`sam2_state_to_native` (used to write release-format test checkpoints)."""
    out = {}
    for key, value in native.items():
        release = sam2_key_to_release(key)
        if release is not None:
            out[release] = value
    points = native[_POINT_EMBED_NATIVE]
    for i in range(points.shape[0]):
        out[_POINT_EMBED_RELEASE.format(i)] = points[i:i + 1].clone()
    return out


def sam2_release_names(native_names: Iterable[str]) -> set[str]:
    """The release key names that a ``Sam2VideoModel`` with these parameter names needs."""
    out = set()
    for key in native_names:
        if key == _POINT_EMBED_NATIVE:
            out.update(_POINT_EMBED_RELEASE.format(i) for i in range(_NUM_POINT_EMBEDDINGS))
        else:
            release = sam2_key_to_release(key)
            if release is not None:
                out.add(release)
    return out


# ------------------------------------------------------------------------------------------------------------- SAM3
# Sa2VA-Qwen3-VL-4B-SAM3 stores SAM 3's tracker under the same prefix, in the original facebookresearch/sam3 names
# (docs/formats.md, "SAM3 grounding"). Its prompt encoder, mask decoder, memory encoder and pointer heads are SAM2's
# modules under SAM2's names with three prefixes of their own, so they are first rewritten into SAM2's spelling and
# then go through SAM2_RENAMES; the ViT trunk and the tracker neck have their own table. Two release tensors change
# shape on the way: the fused ``attn.qkv`` is split into q/k/v rows, and the class-token row 0 of ``pos_embed``
# (unused by the tracker) is dropped. The detector neck ``convs.*`` (22 tensors) serves SAM 3's detector, which
# Sa2VA does not run, and is not loaded.

#: a release key under SAM2_PREFIX that only a SAM3 grounding encoder has
SAM3_MARKER = "backbone.vision_backbone.trunk."
SAM3_DETECTOR_NECK = "backbone.vision_backbone.convs."
_SAM3_TRUNK = "backbone.vision_backbone.trunk."
_SAM3_POS_EMBED_RELEASE = _SAM3_TRUNK + "pos_embed"
_SAM3_POS_EMBED_NATIVE = "vision_encoder.backbone.embeddings.position_embeddings"
#: (SAM3 release prefix, its SAM2 spelling), applied before SAM2_RENAMES
SAM3_TO_SAM2_PREFIXES: tuple[tuple[str, str], ...] = (
    ("transformer.encoder.layers.", "memory_attention.layers."),
    ("transformer.encoder.norm.", "memory_attention.norm."),
    ("maskmem_backbone.", "memory_encoder."),
)
_SAM3_DECODER_MLP = re.compile(r"^sam_mask_decoder\.transformer\.layers\.(\d+)\.mlp\.lin([12])\.(weight|bias)$")
_SAM3_DECODER_MLP_SAM2 = re.compile(
    r"^sam_mask_decoder\.transformer\.layers\.(\d+)\.mlp\.layers\.([01])\.(weight|bias)$")
#: (release template, native template) for the ViT trunk and the tracker neck; ``{i}`` is a number carried over
SAM3_VISION_RENAMES: tuple[tuple[str, str], ...] = (
    (_SAM3_TRUNK + "patch_embed.proj.", "vision_encoder.backbone.embeddings.patch_embeddings.projection."),
    (_SAM3_TRUNK + "ln_pre.", "vision_encoder.backbone.layer_norm."),
    (_SAM3_TRUNK + "blocks.{i}.norm1.", "vision_encoder.backbone.layers.{i}.layer_norm1."),
    (_SAM3_TRUNK + "blocks.{i}.norm2.", "vision_encoder.backbone.layers.{i}.layer_norm2."),
    (_SAM3_TRUNK + "blocks.{i}.attn.proj.", "vision_encoder.backbone.layers.{i}.attention.o_proj."),
    (_SAM3_TRUNK + "blocks.{i}.mlp.fc1.", "vision_encoder.backbone.layers.{i}.mlp.fc1."),
    (_SAM3_TRUNK + "blocks.{i}.mlp.fc2.", "vision_encoder.backbone.layers.{i}.mlp.fc2."),
    ("backbone.vision_backbone.sam2_convs.{i}.dconv_2x2_0.", "vision_encoder.neck.fpn_layers.{i}.scale_layers.0."),
    ("backbone.vision_backbone.sam2_convs.{i}.dconv_2x2_1.", "vision_encoder.neck.fpn_layers.{i}.scale_layers.2."),
    ("backbone.vision_backbone.sam2_convs.{i}.dconv_2x2.", "vision_encoder.neck.fpn_layers.{i}.scale_layers.0."),
    ("backbone.vision_backbone.sam2_convs.{i}.conv_1x1.", "vision_encoder.neck.fpn_layers.{i}.proj1."),
    ("backbone.vision_backbone.sam2_convs.{i}.conv_3x3.", "vision_encoder.neck.fpn_layers.{i}.proj2."),
)
_SAM3_VISION = [_compile(release, native) for release, native in SAM3_VISION_RENAMES]
_SAM3_QKV = re.compile(rf"^{re.escape(_SAM3_TRUNK)}blocks\.(\d+)\.attn\.qkv\.(weight|bias)$")
_SAM3_QKV_NATIVE = re.compile(r"^vision_encoder\.backbone\.layers\.(\d+)\.attention\.([qkv])_proj\.(weight|bias)$")
_SAM3_PREFIXES = [_compile(release, sam2) for release, sam2 in SAM3_TO_SAM2_PREFIXES]
_SAM3_PREFIXES_BACK = [_compile(sam2, release) for release, sam2 in SAM3_TO_SAM2_PREFIXES]


def is_sam3_release(names: Iterable[str]) -> bool:
    """Whether release tensor names (with or without :data:`SAM2_PREFIX`) hold a SAM3 grounding encoder: the ViT
    trunk ``backbone.vision_backbone.trunk.*`` (SAM2 releases have ``image_encoder.trunk.*``)."""
    return any(n.startswith(SAM3_MARKER) or n.startswith(SAM2_PREFIX + SAM3_MARKER) for n in names)


def sam3_key_to_native(key: str) -> str | None:
    """SAM3 release name (prefix stripped) -> ``Sam3TrackerVideoModel`` name, for keys that map one to one.

    Returns None for the tensors that do not: the fused qkv, the point embeddings and the detector neck
    (see :func:`sam3_tensor_to_native`)."""
    if key.startswith(SAM3_DETECTOR_NECK) or _SAM3_QKV.match(key) or _POINT_EMBEDDING.match(key):
        return None
    if key == _SAM3_POS_EMBED_RELEASE:
        return _SAM3_POS_EMBED_NATIVE
    if key.startswith("backbone."):
        for pattern, repl in _SAM3_VISION:
            if pattern.match(key):
                return pattern.sub(repl, key, count=1)
        return key  # unknown trunk/neck name: reported as unexpected by the key check
    for pattern, repl in _SAM3_PREFIXES:
        key = pattern.sub(repl, key, count=1)
    m = _SAM3_DECODER_MLP.match(key)
    if m:
        key = f"sam_mask_decoder.transformer.layers.{m.group(1)}.mlp.layers.{int(m.group(2)) - 1}.{m.group(3)}"
    return sam2_key_to_native(key)


def sam3_tensor_to_native(key: str, tensor) -> list[tuple[str, int | None, object]]:
    """Where one SAM3 release tensor goes in ``Sam3TrackerVideoModel``: ``[(native name, row or None, tensor)]``.

    The fused ``qkv`` ``[3C, ...]`` gives three entries (its equal row chunks, q, k, v); ``pos_embed`` ``[1, 1+N, C]``
    loses its class-token row 0; the detector neck gives none; the rest as :func:`sam2_tensor_to_native`."""
    if key.startswith(SAM3_DETECTOR_NECK):
        return []
    m = _SAM3_QKV.match(key)
    if m:
        block, kind = m.groups()
        return [(f"vision_encoder.backbone.layers.{block}.attention.{name}_proj.{kind}", None, part)
                for name, part in zip("qkv", tensor.chunk(3, dim=0))]
    if key == _SAM3_POS_EMBED_RELEASE:
        return [(_SAM3_POS_EMBED_NATIVE, None, tensor[:, 1:])]
    if _POINT_EMBEDDING.match(key):
        return sam2_tensor_to_native(key, tensor)
    native = sam3_key_to_native(key)
    if native == _GAUSSIAN_NATIVE:
        return [(_GAUSSIAN_NATIVE, None, tensor), (_GAUSSIAN_NATIVE_COPY, None, tensor)]
    return [(native, None, tensor)]


def sam3_key_to_release(key: str) -> str | None:
    """``Sam3TrackerVideoModel`` name -> SAM3 release name (prefix stripped), for keys stored one to one; None for
    the duplicated gaussian matrix, the point embeddings and the q/k/v projections (fused in the release)."""
    if _SAM3_QKV_NATIVE.match(key):
        return None
    if key == _SAM3_POS_EMBED_NATIVE:
        return _SAM3_POS_EMBED_RELEASE
    if key.startswith("vision_encoder."):
        for release, native in SAM3_VISION_RENAMES:
            pattern, repl = _compile(native, release)
            if pattern.match(key):
                out = pattern.sub(repl, key, count=1)
                # fpn level 0 has two transposed convs (scale_layers.0 / .2), level 1 one (scale_layers.0 only)
                if "dconv_2x2_0." in out and not key.startswith("vision_encoder.neck.fpn_layers.0."):
                    out = out.replace("dconv_2x2_0.", "dconv_2x2.")
                return out
        return key
    key = sam2_key_to_release(key)
    if key is None:
        return None
    m = _SAM3_DECODER_MLP_SAM2.match(key)
    if m:
        key = f"sam_mask_decoder.transformer.layers.{m.group(1)}.mlp.lin{int(m.group(2)) + 1}.{m.group(3)}"
    for pattern, repl in _SAM3_PREFIXES_BACK:
        key = pattern.sub(repl, key, count=1)
    return key


def sam3_release_shapes(native_shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Release name -> shape of every SAM3 tensor a release holds for a ``Sam3TrackerVideoModel`` with these
    parameter shapes: the model's tensors in release form (fused qkv, ``pos_embed`` with its class-token row, four
    point embeddings) plus the detector neck, whose tensors have the tracker neck's shapes."""
    out: dict[str, tuple[int, ...]] = {}
    for key, shape in native_shapes.items():
        m = _SAM3_QKV_NATIVE.match(key)
        if m:
            block, name, kind = m.groups()
            if name == "q":
                out[f"{_SAM3_TRUNK}blocks.{block}.attn.qkv.{kind}"] = (3 * shape[0], *shape[1:])
            continue
        if key == _POINT_EMBED_NATIVE:
            out.update({_POINT_EMBED_RELEASE.format(i): (1, *shape[1:]) for i in range(shape[0])})
            continue
        release = sam3_key_to_release(key)
        if release is None:
            continue
        if release == _SAM3_POS_EMBED_RELEASE:
            shape = (shape[0], shape[1] + 1, *shape[2:])
        out[release] = tuple(shape)
        if release.startswith("backbone.vision_backbone.sam2_convs."):
            out[release.replace(".sam2_convs.", ".convs.", 1)] = tuple(shape)
    return out
