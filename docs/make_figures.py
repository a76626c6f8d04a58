"""Re-create the pictures in docs/ from the project's own code: ``python docs/make_figures.py``.

Needs scikit-image for its bundled CC0 sample photo (``pip install scikit-image``); nothing is downloaded.
Writes docs/images/refinement_methods.png: a real photo with a hand-made coarse mask (a blocky ellipse, like an
upsampled low-resolution SAM2 mask) and what each weight-free refinement control makes of it; and
docs/images/overlay_labelled.png: the Segmentation node's overlay for three hand-made object masks, labelled by the
pack's own labeller (sa2va/outputs/labels.py) from three requests and the model's usual answer "Sure, it is [SEG]." (the
masks are drawn by hand because no Sa2VA weights are needed to build the docs; the picture says so on an amber band).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sa2va.outputs.masks import overlay, to_uint8  # noqa: E402
from sa2va.outputs.refine import RefineSettings, refine  # noqa: E402

OUT = ROOT / "docs" / "images"
PANEL_WIDTH = 300


def coarse_mask(height: int, width: int) -> torch.Tensor:
    """A hand-made coarse mask of the cup and saucer: an ellipse drawn at 1/12 resolution, upsampled bilinearly."""
    h, w = height // 12, width // 12
    y, x = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    saucer = (((y - 232 / 12) / (158 / 12)) ** 2 + ((x - 278 / 12) / (203 / 12)) ** 2) <= 1.0
    cup = (((y - 110 / 12) / (95 / 12)) ** 2 + ((x - 290 / 12) / (120 / 12)) ** 2) <= 1.0
    small = (saucer | cup).float()
    return F.interpolate(small[None, None], size=(height, width), mode="bilinear", align_corners=False)[0]


def panel(image: torch.Tensor, mask: torch.Tensor, title: str) -> Image.Image:
    top = Image.fromarray(to_uint8(overlay(image, mask, alpha=0.55)))
    bottom = Image.fromarray(to_uint8(mask[0]), "L").convert("RGB")
    scale = PANEL_WIDTH / top.width
    size = (PANEL_WIDTH, round(top.height * scale))
    canvas = Image.new("RGB", (PANEL_WIDTH, 2 * size[1] + 24), "white")
    canvas.paste(top.resize(size), (0, 24))
    canvas.paste(bottom.resize(size), (0, 24 + size[1]))
    ImageDraw.Draw(canvas).text((6, 6), title, fill="black")
    return canvas


def refinement_methods() -> Path:
    from skimage import data

    photo = torch.from_numpy(data.coffee()).float() / 255.0  # CC0, Rachel Michetti
    height, width = photo.shape[:2]
    probabilities = coarse_mask(height, width)
    soft = dict(apply_mask_threshold=False)
    cases = [
        ("coarse input (probabilities)", RefineSettings(process_details=False, **soft)),
        ("black/white points 0.2 / 0.8", RefineSettings(black_point=0.2, white_point=0.8, detail_method="none",
                                                       **soft)),
        ("FastMatte (guided filter, r=8)", RefineSettings(**soft)),
        ("FastMatte r=16 (wider window)", RefineSettings(guided_radius=16, **soft)),
        ("FastMatte + erode 6", RefineSettings(detail_erode=6, **soft)),
        ("FastMatte + dilate 6", RefineSettings(detail_dilate=6, **soft)),
        ("FastMatte + threshold 0.5", RefineSettings(mask_threshold=0.5)),
    ]
    panels = [panel(photo, refine(photo, probabilities, settings), title) for title, settings in cases]
    columns = 4
    rows = (len(panels) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * (PANEL_WIDTH + 8), rows * (panels[0].height + 8)), "white")
    for i, p in enumerate(panels):
        sheet.paste(p, ((i % columns) * (PANEL_WIDTH + 8), (i // columns) * (panels[0].height + 8)))
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "refinement_methods.png"
    stamp(sheet, "Illustration: a hand-drawn coarse mask (no model run) through the pack's refinement code").save(
        path, optimize=True)
    return path


def coffee_masks(height: int, width: int) -> dict[str, torch.Tensor]:
    """Hand-drawn masks of the cup, the saucer and the spoon in scikit-image's coffee photo (ellipses and bands placed
    by eye; no model made them)."""
    y, x = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    half_width = 118 - (y - 110) * (118 - 70) / 160  # the cup narrows from the rim (y=110) to its foot (y=270)
    cup = (((y - 110) / 95) ** 2 + ((x - 292) / 118) ** 2 <= 1) | ((y > 110) & (y < 270) & ((x - 290).abs() < half_width))
    saucer = (((y - 232) / 158) ** 2 + ((x - 278) / 203) ** 2 <= 1) & ~cup
    handle_x = 410 - (y - 70) * (410 - 380) / 180  # the handle runs from (410, 70) to (380, 250)
    spoon = (((y - 285) / 42) ** 2 + ((x - 366) / 40) ** 2 <= 1) | ((y > 70) & (y < 250) & ((x - handle_x).abs() < 9))
    return {"cup": cup.float(), "saucer": (saucer & ~spoon).float(), "spoon": spoon.float()}


ILLUSTRATION = "Illustration: hand-drawn masks and a forced answer, not a model run"


def stamp(picture: Image.Image, text: str = ILLUSTRATION, size: int | None = None) -> Image.Image:
    """``picture`` with ``text`` on an amber band along its bottom edge (every figure not made by a model run)."""
    from PIL import ImageFont

    font = ImageFont.load_default(size=size or max(12, picture.width // 40))
    draw = ImageDraw.Draw(picture)
    _, top, _, bottom = draw.textbbox((0, 0), text, font=font)
    band = bottom - top + 12
    draw.rectangle((0, picture.height - band, picture.width, picture.height), fill=(255, 196, 0))
    draw.text((8, picture.height - band + 6 - top), text, fill="black", font=font)
    return picture


def labelled_overlay() -> Path:
    """The Segmentation node's overlay output: each object in its own colour, outlined and labelled (hand-drawn masks
    and the model's usual answer forced: an illustration, stamped as one)."""
    from skimage import data

    from sa2va.outputs.labels import object_labels
    from sa2va.outputs.masks import draw_labels

    photo = torch.from_numpy(data.coffee()).float() / 255.0
    height, width = photo.shape[:2]
    masks = torch.stack(list(coffee_masks(height, width).values()))
    refined = refine(photo, masks, RefineSettings(mask_threshold=0.5))
    requests = ["Please segment the espresso cup.", "the saucer", "Could you segment the spoon in this image?"]
    labels = [object_labels("Sure, it is [SEG].<|im_end|>", 1, request)[0] for request in requests]
    picture = draw_labels(overlay(photo, refined), refined, labels)
    path = OUT / "overlay_labelled.png"
    stamp(Image.fromarray(to_uint8(picture))).save(path, optimize=True)
    return path


if __name__ == "__main__":
    print(refinement_methods())
    print(labelled_overlay())
