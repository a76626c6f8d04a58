"""The SAM2 key map between the release (original SAM2 names) and transformers' Sam2VideoModel."""
import pytest
import torch
from transformers import Sam2VideoModel

from sa2va import keymap
from sa2va.sam2 import sam2_config
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
