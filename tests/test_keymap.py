"""The SAM2 key map between the release (original SAM2 names) and transformers' Sam2VideoModel."""
import pytest
import torch
from transformers import Sam2VideoModel

from sa2va.hub import keymap
from sa2va.grounding.sam2 import sam2_config
from sa2va.testing import TINY_SAM2


def _native_shapes(overrides=None):
    with torch.device("meta"):
        model = Sam2VideoModel(sam2_config(overrides))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("overrides", [None, TINY_SAM2], ids=["hiera_l", "tiny"])
def test_round_trip_native_release_native(overrides):
    shapes = _native_shapes(overrides)
    native = {k: torch.zeros(s) for k, s in shapes.items()}
    release = keymap.sam2_state_to_release(native)
    back = keymap.sam2_state_to_native(release)
    assert set(back) == set(native)
    for k in native:
        assert back[k].shape == native[k].shape, k


@pytest.mark.parametrize("overrides", [None, TINY_SAM2], ids=["hiera_l", "tiny"])
def test_full_state_dict_round_trips_with_every_tensor_in_its_place(overrides):
    """Every key of a full Sam2VideoModel state dict, each with its own value, through release and back."""
    names = sorted(_native_shapes(overrides))
    native = {k: torch.full((1,), float(i)) for i, k in enumerate(names)}
    native["prompt_encoder.point_embed.weight"] = torch.arange(8.0).reshape(4, 2)
    release = keymap.sam2_state_to_release(native)
    assert len(release) == len(native) + 2  # 4 point embeddings for 1, the gaussian copy dropped
    back = keymap.sam2_state_to_native(release)
    assert set(back) == set(native)
    gaussian, copy = "prompt_encoder.shared_embedding.positional_embedding", "shared_image_embedding.positional_embedding"
    assert back[copy] is back[gaussian]
    assert all(torch.equal(back[k], native[k]) for k in names if k != copy)


@pytest.mark.parametrize("overrides", [None, TINY_SAM2], ids=["hiera_l", "tiny"])
def test_every_name_maps_back_to_itself_in_both_directions(overrides):
    """The release -> native rules and their derived inverse agree key by key (one table, two directions)."""
    shapes = _native_shapes(overrides)
    for native in shapes:
        release = keymap.sam2_key_to_release(native)
        assert release is not None or native in ("prompt_encoder.point_embed.weight",
                                                 "shared_image_embedding.positional_embedding")
        if release is not None:
            assert keymap.sam2_key_to_native(release) == native, (native, release)
    releases = keymap.sam2_release_names(shapes)
    assert len(releases) == len(shapes) + 2
    for release in releases:
        native = keymap.sam2_key_to_native(release)
        if native is not None:
            assert keymap.sam2_key_to_release(native) == release, (release, native)


def test_sam2_1_names_and_the_gamma_alias():
    for release, native in [("obj_ptr_tpos_proj.weight", "temporal_positional_encoding_projection_layer.weight"),
                            ("no_obj_embed_spatial", "occlusion_spatial_embedding_parameter")]:
        assert keymap.sam2_key_to_native(release) == native
        assert keymap.sam2_key_to_release(native) == release
    # gamma is read (facebookresearch's name) but written as the releases' g_weight
    assert keymap.sam2_key_to_release(keymap.sam2_key_to_native("memory_encoder.fuser.layers.0.gamma")) == \
        "memory_encoder.fuser.layers.0.g_weight"


def test_hiera_l_release_has_900_tensors_and_native_898():
    shapes = _native_shapes()
    assert len(shapes) == 898
    assert len(keymap.sam2_release_names(shapes)) == 900


@pytest.mark.parametrize("release, native", [
    ("image_encoder.trunk.blocks.3.mlp.layers.1.weight", "vision_encoder.backbone.blocks.3.mlp.proj_out.weight"),
    ("image_encoder.neck.convs.2.conv.bias", "vision_encoder.neck.convs.2.bias"),
    ("sam_mask_decoder.iou_prediction_head.layers.1.weight", "mask_decoder.iou_prediction_head.layers.0.weight"),
    ("sam_mask_decoder.transformer.layers.0.cross_attn_token_to_image.out_proj.weight",
     "mask_decoder.transformer.layers.0.cross_attn_token_to_image.o_proj.weight"),
    ("memory_encoder.fuser.layers.1.g_weight", "memory_encoder.memory_fuser.layers.1.scale"),
    ("memory_encoder.fuser.layers.1.gamma", "memory_encoder.memory_fuser.layers.1.scale"),
    ("memory_encoder.mask_downsampler.encoder.4.weight", "memory_encoder.mask_downsampler.layers.1.layer_norm.weight"),
    ("memory_encoder.mask_downsampler.encoder.12.bias", "memory_encoder.mask_downsampler.final_conv.bias"),
    ("obj_ptr_proj.layers.2.bias", "object_pointer_proj.proj_out.bias"),
    ("no_mem_embed", "no_memory_embedding"),
    ("sam_prompt_encoder.mask_downscaling.4.weight", "prompt_encoder.mask_embed.layer_norm2.weight"),
])
def test_known_names(release, native):
    assert keymap.sam2_key_to_native(release) == native


def test_point_embeddings_are_concatenated_and_gaussian_duplicated():
    release = {f"sam_prompt_encoder.point_embeddings.{i}.weight": torch.full((1, 256), float(i)) for i in range(4)}
    release["sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"] = torch.ones(2, 128)
    native = keymap.sam2_state_to_native(release)
    assert native["prompt_encoder.point_embed.weight"][:, 0].tolist() == [0, 1, 2, 3]
    assert native["shared_image_embedding.positional_embedding"] is \
        native["prompt_encoder.shared_embedding.positional_embedding"]
