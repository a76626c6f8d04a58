"""Mask refinement on hand-made tensors with exact expectations, and ViTMatte on a tiny real-format model."""
import math

import pytest
import torch

from sa2va.outputs import masks as M
from sa2va.outputs.refine import RefineSettings, refine


def disk(size, radius, center=None):
    cy, cx = center or (size // 2, size // 2)
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return (((y - cy) ** 2 + (x - cx) ** 2) <= radius ** 2).float()


def test_remap_endpoints_and_linear_middle():
    p = torch.tensor([[[0.0, 0.05, 0.5, 0.95, 1.0, 0.275]]])
    out = M.remap_levels(p, 0.05, 0.95)
    assert torch.allclose(out, torch.tensor([[[0.0, 0.0, 0.5, 1.0, 1.0, 0.25]]]), atol=1e-6)


@pytest.mark.parametrize("n", [1, 3, 6])
def test_dilate_and_erode_a_disk_by_the_expected_ring(n):
    radius = 20
    d = disk(101, radius)[None]
    grown = M.dilate(d, n)
    shrunk = M.erode(d, n)
    area = float(d.sum())
    expected_grow = math.pi * ((radius + n) ** 2 - radius ** 2)
    expected_shrink = math.pi * (radius ** 2 - (radius - n) ** 2)
    assert abs((float(grown.sum()) - area) - expected_grow) / expected_grow < 0.12
    assert abs((area - float(shrunk.sum())) - expected_shrink) / expected_shrink < 0.12
    assert torch.all(grown >= d) and torch.all(shrunk <= d)
    # round, not square: the grown disk reaches radius+n along the axes and not beyond
    c = 50
    assert grown[0, c, c + radius + n] == 1 and grown[0, c, c + radius + n + 1] == 0


def test_zero_iterations_is_identity():
    x = torch.rand(2, 9, 9)
    assert torch.equal(M.erode(x, 0), x) and torch.equal(M.dilate(x, 0), x)


def test_guided_filter_keeps_aligned_edges_and_smooths_others():
    size = 64
    image = torch.zeros(size, size, 3)
    image[:, 32:] = 1.0  # a vertical image edge at x = 32
    aligned = torch.zeros(1, size, size)
    aligned[:, :, 32:] = 1.0
    misaligned = torch.zeros(1, size, size)
    misaligned[:, 32:, :] = 1.0  # a horizontal mask edge where the image is flat
    out_aligned = M.guided_filter(image, aligned, radius=4, eps=1e-4)
    out_mis = M.guided_filter(image, misaligned, radius=4, eps=1e-4)
    assert torch.allclose(out_aligned, aligned, atol=0.02), "an edge the image confirms stays a step"
    assert float(out_aligned[0, 10, 31]) < 0.02 and float(out_aligned[0, 10, 32]) > 0.98
    column = out_mis[0, :, 10]
    assert 0.05 < float(column[31]) < 0.95 and 0.05 < float(column[32]) < 0.95, "an unsupported edge is smoothed"
    assert float(column[0]) < 1e-3 and float(column[-1]) > 1 - 1e-3


def test_guided_filter_agrees_with_opencv_contrib():
    cv2 = pytest.importorskip("cv2")
    if not hasattr(cv2, "ximgproc"):
        pytest.skip("opencv-contrib (cv2.ximgproc) not installed")
    import numpy as np

    rng = np.random.RandomState(0)
    image = rng.rand(48, 40, 3).astype(np.float32)
    mask = (rng.rand(48, 40) > 0.5).astype(np.float32)
    expected = cv2.ximgproc.guidedFilter(image, mask, 3, 1e-2)
    ours = M.guided_filter(torch.from_numpy(image), torch.from_numpy(mask)[None], 3, 1e-2)[0].numpy()
    # identical away from the borders (opencv reflects at borders; we clip the windows, as He et al. do)
    inner = slice(7, -7)
    assert np.abs(np.clip(expected, 0, 1)[inner, inner] - ours[inner, inner]).max() < 1e-5


def test_threshold_is_inclusive():
    p = torch.tensor([[[0.3, 0.29, 0.31, 1.0, 0.0]]])
    assert M.threshold(p, 0.3).tolist() == [[[1.0, 0.0, 1.0, 1.0, 0.0]]]


def test_trimap_construction():
    p = torch.zeros(1, 11, 11)
    p[0, :, 6:] = 0.99
    p[0, :, 5] = 0.5
    tri = M.trimap(p, 0.05, 0.95)
    assert tri[0, 0, :].tolist() == [0, 0, 0, 0, 0, 0.5, 1, 1, 1, 1, 1]
    widened = M.trimap(p, 0.05, 0.95, erode_px=2, dilate_px=1)
    assert widened[0, 5, :].tolist() == [0, 0, 0, 0, 0.5, 0.5, 0.5, 0.5, 1, 1, 1]


def test_every_control_changes_the_output_and_soft_alpha_survives():
    torch.manual_seed(0)
    image = torch.rand(40, 40, 3)
    image[:, 20:] += 0.5
    image = image.clamp(0, 1)
    p = (disk(40, 12) * 0.8 + torch.rand(40, 40) * 0.2)[None]
    base = RefineSettings(apply_mask_threshold=False)
    out = refine(image, p, base)
    assert ((out > 0.01) & (out < 0.99)).any(), "soft alpha survives without the threshold"
    variants = {
        "process_details": dict(process_details=False), "black_point": dict(black_point=0.3),
        "white_point": dict(white_point=0.6), "detail_method": dict(detail_method="none"),
        "detail_erode": dict(detail_erode=2), "detail_dilate": dict(detail_dilate=2),
        "guided_radius": dict(guided_radius=2), "guided_eps": dict(guided_eps=0.5),
        "apply_mask_threshold": dict(apply_mask_threshold=True), }
    for name, change in variants.items():
        settings = RefineSettings(**{**base.__dict__, **change})
        assert not torch.equal(refine(image, p, settings), out), name
    hard = refine(image, p, RefineSettings(**{**base.__dict__, "apply_mask_threshold": True, "mask_threshold": 0.5}))
    assert torch.equal(hard, (out >= 0.5).float())
    assert torch.equal(refine(image, p, RefineSettings(process_details=False, apply_mask_threshold=False)), p)


def test_bad_settings_are_clear_errors():
    from sa2va.errors import InputError

    with pytest.raises(InputError, match="black_point must be below white_point"):
        RefineSettings(black_point=0.9, white_point=0.5).validate()
    with pytest.raises(InputError, match="detail_erode must be an integer from 0 to 10"):
        RefineSettings(detail_erode=11).validate()
    with pytest.raises(InputError, match="detail_method must be one of"):
        RefineSettings(detail_method="magic").validate()


def test_vitmatte_end_to_end_keeps_soft_alpha_and_known_regions(tiny_vitmatte):
    from sa2va.outputs.matting import load_matter, matte

    assert {p.name for p in tiny_vitmatte.iterdir()} >= {"config.json", "model.safetensors",
                                                          "preprocessor_config.json"}
    matter = load_matter(tiny_vitmatte)
    image = torch.rand(70, 90, 3)
    p = disk(90, 25)[:70][None] * 0.97 + 0.01
    p[0, 30:40, 40:50] = 0.5
    tri = M.trimap(p, 0.05, 0.95, 2, 2)
    seen = []
    handle = matter.model.register_forward_hook(
        lambda m, args, kwargs, out: seen.append(tuple(kwargs["pixel_values"].shape)), with_kwargs=True)
    alpha = matte(matter, image, tri, max_megapixels=0.002)
    handle.remove()
    assert alpha.shape == (1, 70, 90)
    assert torch.all(alpha[tri == 1] == 1) and torch.all(alpha[tri == 0] == 0)
    unknown = alpha[tri == 0.5]
    assert ((unknown > 0) & (unknown < 1)).any(), "the matte is soft in the unknown band"
    assert seen[0][2] * seen[0][3] <= 64 * 64, "large inputs are matted at a bounded size"
    settings = RefineSettings(detail_method="VITMatte", apply_mask_threshold=False, max_megapixels=0.002)
    out = refine(image, p, settings, matter)
    assert out.shape == (1, 70, 90) and ((out > 0) & (out < 1)).any()


def test_fast_guided_filter_on_large_images_stays_close_to_full_resolution():
    torch.manual_seed(1)
    image = torch.zeros(1100, 1000, 3)
    image[:, 500:] = 1.0
    image += 0.05 * torch.rand_like(image)
    mask = torch.zeros(2, 1100, 1000)
    mask[:, :, 480:] = 1.0  # a coarse mask 20 px off the image edge
    full = M.guided_filter(image, mask, radius=24, eps=1e-3, subsample=1)
    fast = M.guided_filter(image, mask, radius=24, eps=1e-3)  # auto: subsampled by 2
    assert (full - fast).abs().mean() < 0.01
    # both put a jump where the image has its edge (x = 500), which the input mask did not have
    for out in (full, fast):
        row = out[0, 550]
        assert float(row[502] - row[497]) > 0.2 and float(row[505]) > 0.95
    assert float(mask[0, 550, 502] - mask[0, 550, 497]) == 0.0


def test_draw_labels_writes_at_each_masks_corner_only():
    image = torch.zeros(120, 160, 3)
    masks = torch.zeros(2, 120, 160)
    masks[0, 10:40, 20:60] = 1.0
    masks[1, 70:110, 90:150] = 1.0
    out = M.draw_labels(image, masks, ["cat", ""])
    changed = (out != image).any(-1)
    assert changed[8:30, 18:60].any(), "the first label is drawn at its mask's top-left"
    assert not changed[60:, :].any(), "an empty label draws nothing"
    assert torch.equal(M.draw_labels(image, masks[:0], []), image)
