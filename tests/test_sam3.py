"""Sa2VA-Qwen3-VL-4B-SAM3: SAM 3's tracker as the grounding encoder (key map, loading, image decoding).

The checkpoints are the release's format with a 2-layer, 256-wide SAM3 ViT (the release's window, patch and head
size; the last layer global), :func:`sa2va.testing.write_checkpoint` with ``grounding="sam3"``.
"""
import re

import numpy as np
import pytest
import torch

import sa2va
from sa2va.hub import keymap
from sa2va.errors import CheckpointKeyError, DependencyError

import transformers

HAS_SAM3 = getattr(transformers, "Sam3TrackerVideoModel", None) is not None
#: transformers 4.57 (the oldest supported) has no SAM 3: only the error test runs there
needs_sam3 = pytest.mark.skipif(not HAS_SAM3, reason="this transformers has no Sam3TrackerVideoModel (5.x has)")
PREFIX = keymap.SAM2_PREFIX


def test_sam3_release_without_sam3_in_transformers_raises_a_dependency_error(checkpoint_factory, tmp_path,
                                                                             monkeypatch):
    """Under transformers 4.57 (no SAM 3) a SAM3 release is recognised from its weights and refused clearly."""
    import json

    from safetensors.torch import save_file

    source = checkpoint_factory("qwen3_vl")
    folder = tmp_path / "sam3_release"
    folder.mkdir()
    for p in source.iterdir():
        if p.name != "model.safetensors.index.json":
            (folder / p.name).symlink_to(p)
    index = json.loads((source / "model.safetensors.index.json").read_text())
    marker = PREFIX + "backbone.vision_backbone.trunk.pos_embed"
    save_file({marker: torch.zeros(1, 577, 8)}, str(folder / "extra.safetensors"), metadata={"format": "pt"})
    index["weight_map"][marker] = "extra.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    if HAS_SAM3:  # simulate 4.57 on the module object imported now (transformers may have replaced its module)
        import sys

        monkeypatch.setattr(sys.modules["transformers"], "Sam3TrackerVideoModel", None)
    with pytest.raises(DependencyError, match=r"Sa2VA-Qwen3-VL-4B-SAM3 .* needs transformers 5\.x"):
        sa2va.load_model(folder, dtype=torch.float32)


@pytest.fixture(scope="module")
def sam3_folder(checkpoint_factory):
    return checkpoint_factory("qwen3_vl", grounding="sam3")


@pytest.fixture(scope="module")
def sam3_model(sam3_folder):
    return sa2va.load_model(sam3_folder, dtype=torch.float32)


@needs_sam3
def test_release_geometry_has_the_741_release_tensors():
    from transformers import Sam3TrackerVideoConfig, Sam3TrackerVideoModel

    with torch.device("meta"):
        model = Sam3TrackerVideoModel(Sam3TrackerVideoConfig())
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    release = keymap.sam3_release_shapes(shapes)
    assert len(shapes) == 845 and len(release) == 741
    assert release["backbone.vision_backbone.trunk.pos_embed"] == (1, 577, 1024)
    assert release["backbone.vision_backbone.trunk.blocks.31.attn.qkv.weight"] == (3072, 1024)
    assert release["backbone.vision_backbone.trunk.patch_embed.proj.weight"] == (1024, 3, 14, 14)
    assert "backbone.vision_backbone.trunk.patch_embed.proj.bias" not in release
    assert len([k for k in release if k.startswith(keymap.SAM3_DETECTOR_NECK)]) == 22
    for name in ("maskmem_backbone.fuser.layers.1.g_weight",
                 "transformer.encoder.layers.3.cross_attn_image.out_proj.weight",
                 "transformer.encoder.norm.weight", "sam_mask_decoder.transformer.layers.1.mlp.lin2.weight",
                 "obj_ptr_tpos_proj.weight", "no_obj_embed_spatial", "maskmem_tpos_enc", "mask_downsample.weight",
                 "backbone.vision_backbone.sam2_convs.0.dconv_2x2_1.weight",
                 "backbone.vision_backbone.sam2_convs.1.dconv_2x2.weight",
                 "sam_prompt_encoder.point_embeddings.3.weight", "obj_ptr_proj.layers.2.bias"):
        assert name in release, name
    # every native tensor is filled exactly once from the release names (the gaussian matrix twice, by design)
    filled = {}
    for name, shape in release.items():
        for native, row, value in keymap.sam3_tensor_to_native(name, torch.empty(shape, device="meta")):
            filled.setdefault(native, []).append(row)
            if row is None:
                assert tuple(value.shape) == shapes[native], name
    assert set(filled) == set(shapes)
    assert sorted(filled["prompt_encoder.point_embed.weight"]) == [0, 1, 2, 3]


@needs_sam3
def test_sam3_weights_are_detected_and_loaded_with_every_tensor_in_place(sam3_folder, sam3_model):
    from sa2va.hub.checkpoint import read_index

    index = read_index(sam3_folder)
    assert keymap.is_sam3_release(index.names())
    assert not keymap.is_sam3_release([n.replace("backbone.vision_backbone.trunk", "image_encoder.trunk")
                                       for n in index.names()])
    head = sam3_model.grounding
    assert head.rules.name == "sam3" and head.rules.clamp_absent and head.image_size == 1008
    assert type(head.model).__name__ == "Sam3TrackerVideoModel"
    state = head.model.state_dict()
    release = {name[len(PREFIX):]: tensor for name, tensor in index.iter_tensors(PREFIX)}
    qkv = release["backbone.vision_backbone.trunk.blocks.1.attn.qkv.weight"]
    layer = "vision_encoder.backbone.layers.1.attention."
    assert torch.equal(torch.cat([state[layer + p + "_proj.weight"] for p in "qkv"]), qkv)
    pos = release["backbone.vision_backbone.trunk.pos_embed"]
    assert torch.equal(state["vision_encoder.backbone.embeddings.position_embeddings"], pos[:, 1:])
    pairs = {"memory_encoder.memory_fuser.layers.0.scale": "maskmem_backbone.fuser.layers.0.g_weight",
             "vision_encoder.neck.fpn_layers.0.scale_layers.2.weight":
                 "backbone.vision_backbone.sam2_convs.0.dconv_2x2_1.weight",
             "vision_encoder.neck.fpn_layers.1.scale_layers.0.weight":
                 "backbone.vision_backbone.sam2_convs.1.dconv_2x2.weight",
             "mask_decoder.transformer.layers.0.mlp.proj_in.weight":
                 "sam_mask_decoder.transformer.layers.0.mlp.lin1.weight",
             "memory_attention.layers.2.cross_attn_image.o_proj.weight":
                 "transformer.encoder.layers.2.cross_attn_image.out_proj.weight",
             "temporal_positional_encoding_projection_layer.weight": "obj_ptr_tpos_proj.weight",
             "occlusion_spatial_embedding_parameter": "no_obj_embed_spatial"}
    for native, name in pairs.items():
        assert torch.equal(state[native], release[name]), name
    # the detector neck is in the file but not in the model
    assert not torch.equal(release["backbone.vision_backbone.convs.2.conv_1x1.weight"],
                           state["vision_encoder.neck.fpn_layers.2.proj1.weight"])


@needs_sam3
def test_missing_sam3_tensor_is_named(sam3_folder, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "broken"
    folder.mkdir()
    for p in sam3_folder.iterdir():
        (folder / p.name).symlink_to(p)
    index_path = folder / "model.safetensors.index.json"
    import json

    index = json.loads(index_path.read_text())
    victim = PREFIX + "maskmem_backbone.fuser.layers.1.g_weight"
    shard = index["weight_map"].pop(victim)
    tensors = load_file(str(sam3_folder / shard))
    del tensors[victim]
    (folder / shard).unlink()
    save_file(tensors, str(folder / shard), metadata={"format": "pt"})
    (folder / "model.safetensors.index.json").unlink()
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointKeyError, match=re.escape("maskmem_backbone.fuser.layers.1.g_weight")):
        sa2va.load_model(folder, dtype=torch.float32)


@needs_sam3
def test_image_masks_are_probabilities_at_the_input_size(sam3_model, image):
    pred = sam3_model.predict(image, "Please segment the person.", max_new_tokens=12)
    assert pred.raw_text == "Sure, it is[SEG].<|im_end|>"
    assert pred.masks.shape == (1, 480, 640) and pred.masks.dtype == torch.float32
    assert 0 <= pred.masks.min() and pred.masks.max() <= 1
    assert 0.0 < (pred.masks > 0.5).float().mean() < 1.0  # the random tracker's object score is positive here
    assert pred.object_scores[0] > 0.5


@needs_sam3
def test_object_score_clamp_empties_the_mask_of_an_absent_object(sam3_model, image):
    """SAM 3 keeps SAM's clamp (Sa2VA's SAM2 releases turned it off): object score <= 0 -> logits -1024."""
    answer = sam3_model.answer([image], "Please segment the person.", 12)
    head = sam3_model.grounding
    bias = head.model.mask_decoder.pred_obj_score_head.proj_out.bias
    original = bias.detach().clone()
    try:
        with torch.no_grad():
            bias.fill_(-50.0)
        absent = sam3_model.objects_for(image, answer.seg_states)
        with torch.no_grad():
            bias.fill_(50.0)
        present = sam3_model.objects_for(image, answer.seg_states)
    finally:
        with torch.no_grad():
            bias.copy_(original)
    assert absent.object_scores[0] < 1e-6 and torch.count_nonzero(absent.masks) == 0
    assert present.object_scores[0] > 1 - 1e-6 and (present.masks > 0.5).any()


@needs_sam3
def test_all_seg_embeddings_of_an_image_are_decoded_in_one_call_after_one_encoder_pass(sam3_model, image,
                                                                                         monkeypatch):
    head = sam3_model.grounding
    answer = sam3_model.answer([image], "Please segment the person.", 12)
    states = answer.seg_states * 3
    calls = {"encode": 0, "decode": 0}
    encode, decode = head.encode, head.decode

    def count_encode(*a, **k):
        calls["encode"] += 1
        return encode(*a, **k)

    def count_decode(*a, **k):
        calls["decode"] += 1
        return decode(*a, **k)

    monkeypatch.setattr(head, "encode", count_encode)
    monkeypatch.setattr(head, "decode", count_decode)
    flipped = np.ascontiguousarray(image[:, ::-1])  # not in the encoder cache yet
    masks = sam3_model.masks_for(flipped, states)
    assert calls == {"encode": 1, "decode": 1}
    assert masks.shape == (3, 480, 640)
    assert torch.equal(masks[0], masks[1]) and torch.equal(masks[0], masks[2])


@needs_sam3
def test_memory_of_an_absent_object_carries_the_occlusion_embedding_and_conditioning_memory_is_binarised(sam3_model):
    """SAM 3's memory rules on its own modules: the occlusion embedding is added exactly where the object score is
    <= 0, and binarised conditioning memory depends only on the sign of the logits."""
    from sa2va.grounding.memory import encode_memory

    sam = sam3_model.grounding.model
    generator = torch.Generator().manual_seed(0)
    top = torch.randn(72 * 72, 1, 256, generator=generator)
    logits = torch.randn(2, 1, 1008, 1008, generator=generator) * 4
    with torch.inference_mode():
        present, position = encode_memory(sam, top, (72, 72), logits, object_score=torch.tensor([[2.0], [2.0]]))
        mixed, _ = encode_memory(sam, top, (72, 72), logits, object_score=torch.tensor([[2.0], [-0.5]]))
        binary, _ = encode_memory(sam, top, (72, 72), logits, binarize=True, object_score=torch.tensor([[1.0], [1.0]]))
        sharper, _ = encode_memory(sam, top, (72, 72), logits * 100, binarize=True,
                                   object_score=torch.tensor([[1.0], [1.0]]))
        with pytest.raises(RuntimeError, match="object scores"):
            encode_memory(sam, top, (72, 72), logits)
    assert present.shape == (72 * 72, 2, 64) and present.dtype == torch.bfloat16
    assert position.shape == (72 * 72, 1, 64)
    assert torch.equal(mixed[:, 0], present[:, 0])
    occlusion = sam.occlusion_spatial_embedding_parameter[0].to(torch.bfloat16)
    added = (mixed[:, 1].float() - present[:, 1].float()).mean(0)
    assert torch.allclose(added, occlusion.float(), atol=0.05)
    assert torch.equal(binary, sharper)


@needs_sam3
def test_cli_info_names_the_sam3_grounding_encoder(sam3_folder, capsys):
    import json

    from sa2va.__main__ import main

    assert main(["info", "--model", str(sam3_folder)]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["family"] == "qwen3_vl" and described["sam2"] == "SAM 3 tracker, custom (sam3_config)"


@needs_sam3
def test_activation_estimate_counts_sam3s_larger_encoder(sam3_model, model_factory):
    from sa2va.activations import SAM2_ENCODER_BYTES_FP32, SAM3_ENCODER_BYTES_FP32

    sam3 = sam3_model.memory_profile()
    sam2 = model_factory("qwen3_vl").memory_profile()
    assert sam3.grounding_bytes_fp32 == SAM3_ENCODER_BYTES_FP32 > SAM2_ENCODER_BYTES_FP32 == sam2.grounding_bytes_fp32
    assert sam3.activation_bytes(480, 640, 16) - sam2.activation_bytes(480, 640, 16) == \
        SAM3_ENCODER_BYTES_FP32 - SAM2_ENCODER_BYTES_FP32


@needs_sam3
def test_video_tracks_from_memory_and_offload_gives_the_same_masks(sam3_model):
    """predict_video on SAM 3's tracker: 2 conditioning frames and 1 tracked frame of a still clip (the smallest
    clip that runs the memory attention at 72x72). The conditioning frames repeat frame 0's mask (same image, same
    prompt, no memory); the tracked frame's comes from the memory attention; keeping the masks and the memory bank on
    the CPU (the offload options) changes nothing."""
    from sa2va.testing import ForceTokens

    frame = np.full((48, 64, 3), 90, np.uint8)
    frame[12:32, 4:24] = [220, 30, 30]
    frames = [frame] * 3
    inputs = sam3_model.prompt_inputs(frames[:2], "Segment the box.")
    answer = sam3_model.tokenizer("Sure, it is [SEG].", add_special_tokens=False)["input_ids"]
    answer += [sam3_model.tokenizer.convert_tokens_to_ids("<|im_end|>")]

    def run(**options):
        processor = ForceTokens(inputs["input_ids"].shape[1], answer)
        return sam3_model.predict_video(frames, "<image>Segment the box.", max_new_tokens=16, key_frames=2,
                                        logits_processor=[processor], **options)

    plain = run()
    masks = plain.masks[0]
    assert plain.masks.shape == (1, 3, 48, 64) and plain.key_frames == [0, 1]
    assert torch.equal(masks[1], masks[0])
    assert (masks[2] - masks[0]).abs().max() > 1e-3
    offloaded = run(offload_frames=True, offload_state=True)
    assert torch.equal(offloaded.masks, plain.masks)
