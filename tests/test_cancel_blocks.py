"""Cancel inside an encoder pass: :meth:`sa2va.monitor.Monitor.watching` stops SAM2's image encoder (fast and stock
path), SAM 3's tracker encoder, each family's vision tower and the language model before their next block, and
changes no number."""
import pytest
import torch
from PIL import Image

import sa2va
from sa2va.grounding.sam2 import GroundingHead, sam2_pixels
from sa2va.grounding.sam3 import sam3_model_class
from sa2va.monitor import Monitor, block_lists
from sa2va.testing import FAMILIES


class CancelAfter:
    """A ``cancelled`` callback that turns True once ``after`` blocks have been counted (by :meth:`count`)."""

    def __init__(self, after: int) -> None:
        self.after, self.blocks = after, 0

    def count(self, *args) -> None:
        self.blocks += 1

    def __call__(self) -> bool:
        return self.blocks >= self.after


def _count_block_starts(blocks, counter: CancelAfter) -> list:
    """Count the Hiera blocks that start, on the fast path too: it runs a block's arithmetic without calling the block
    as a module, but calls its ``layer_norm1`` first, once per block."""
    return [block.layer_norm1.register_forward_hook(counter.count) for block in blocks]


@pytest.mark.parametrize("fast", [True, False], ids=["fast_path", "stock_path"])
def test_cancel_stops_the_sam2_encoder_before_its_next_block(model_factory, image, fast):
    model = model_factory("qwen3_vl")
    head = model.grounding if fast else GroundingHead(model.grounding.model)
    head.fast_encoder = fast
    blocks = head.model.vision_encoder.backbone.blocks
    assert len(blocks) >= 4
    counter = CancelAfter(2)
    handles = _count_block_starts(blocks, counter)
    try:
        with torch.inference_mode(), pytest.raises(sa2va.Cancelled, match="cancelled inside"), \
                Monitor(cancelled=counter).watching(head.model):
            head.encode(sam2_pixels([Image.fromarray(image)], head.image_size))
    finally:
        for handle in handles:
            handle.remove()
    assert counter.blocks == 2  # the third block never started


def test_watching_changes_no_number_and_leaves_no_hook(model_factory, image):
    """The encoder's output under a watching monitor that never cancels is bit-identical; afterwards, a monitor that
    says "cancelled" is no longer consulted by the blocks."""
    head = model_factory("qwen3_vl").grounding
    pixels = sam2_pixels([Image.fromarray(image)], head.image_size)
    with torch.inference_mode():
        plain = head.encode(pixels)
        with Monitor(cancelled=lambda: False).watching(head.model):
            watched = head.encode(pixels)
        cancelled = Monitor(cancelled=lambda: True)
        with pytest.raises(sa2va.Cancelled), cancelled.watching(head.model):
            head.encode(pixels)
        again = head.encode(pixels)
    assert torch.equal(plain.top, watched.top) and all(torch.equal(a, b) for a, b in zip(plain.high_res,
                                                                                         watched.high_res))
    assert torch.equal(plain.top, again.top)


def _tower_blocks(vlm: torch.nn.Module) -> torch.nn.ModuleList:
    names = {id(module): name for name, module in vlm.named_modules()}
    towers = [blocks for blocks in block_lists(vlm) if any(part in names[id(blocks)] for part in ("visual", "vision"))]
    return towers[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_cancel_stops_the_vision_tower_before_its_next_block(model_factory, image, family):
    """Through the engine: Cancel pressed while the first block of the vision tower runs stops the tower before its
    second block, and the next call (no monitor) runs normally."""
    model = model_factory(family)
    model.encoder_cache.clear()
    blocks = _tower_blocks(model.vlm)
    counter = CancelAfter(1)
    handles = [block.register_forward_hook(counter.count) for block in blocks]  # counts finished blocks
    try:
        with pytest.raises(sa2va.Cancelled, match="cancelled inside"):
            model.segment([image], "Please segment the person.", max_new_tokens=4,
                          monitor=Monitor(cancelled=counter))
    finally:
        for handle in handles:
            handle.remove()
    assert counter.blocks == 1
    assert model.segment([image], "Please segment the person.", max_new_tokens=4)[0][0].text is not None


def test_cancel_stops_the_language_model_before_its_next_layer(model_factory, image):
    model = model_factory("qwen3_vl")
    layers = model.vlm.model.language_model.layers
    counter = CancelAfter(1)
    handles = [layer.register_forward_hook(counter.count) for layer in layers]
    try:
        with pytest.raises(sa2va.Cancelled):
            model.segment([image], "Please segment the person.", max_new_tokens=4,
                          monitor=Monitor(cancelled=counter))
    finally:
        for handle in handles:
            handle.remove()
    assert counter.blocks == 1


def _has_sam3() -> bool:
    try:
        sam3_model_class()
    except sa2va.DependencyError:
        return False
    return True


@pytest.mark.skipif(not _has_sam3(), reason="this transformers has no Sam3TrackerVideoModel (5.x has)")
def test_cancel_stops_the_sam3_tracker_encoder_before_its_next_block(checkpoint_factory, image):
    head = sa2va.load_model(checkpoint_factory("qwen3_vl", grounding="sam3"), dtype=torch.float32).grounding
    blocks = head.model.vision_encoder.backbone.layers
    counter = CancelAfter(1)
    handles = [block.register_forward_hook(counter.count) for block in blocks]
    try:
        with torch.inference_mode(), pytest.raises(sa2va.Cancelled, match="cancelled inside"), \
                Monitor(cancelled=counter).watching(head.model):
            head.encode(sam2_pixels([Image.fromarray(image)], head.image_size))
    finally:
        for handle in handles:
            handle.remove()
    assert counter.blocks == 1 < len(blocks)
