"""The template browser's cards: ``python docs/make_thumbnails.py`` writes example_workflows/<name>.jpg for every example
workflow (ComfyUI's page asks custom nodes' templates for ``<name>.jpg``).

Each card shows what its workflow produces (the overlay on the input, the masks), drawn with the pack's own overlay
and label code on scikit-image's CC0 coffee photo. The masks are drawn by hand (docs/make_figures.py,
``coffee_masks``): no Sa2VA weights are needed to build the docs, so every card says "Illustration" on an amber band.
Needs scikit-image (``pip install scikit-image``); nothing is downloaded.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "docs"))

from make_figures import coffee_masks, stamp

from sa2va.outputs.masks import overlay, palette, to_uint8

SIZE = 512
TITLE_BAND = 64
OUT = ROOT / "example_workflows"
NOTE = "Illustration: hand-drawn masks, not a model run"


def font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def photo() -> torch.Tensor:
    from skimage import data

    return torch.from_numpy(data.coffee()).float() / 255.0  # CC0, Rachel Michetti


def result(image: torch.Tensor, masks: dict[str, torch.Tensor], names: list[str],
           labels: list[str] | None = None) -> Image.Image:
    """The Segmentation node's overlay (the pack's own colours and outlines) of the hand-drawn ``names`` masks, each
    labelled at its top-left corner in a font large enough to read on a card."""
    stack = torch.stack([masks[n] for n in names])
    picture = Image.fromarray(to_uint8(overlay(image, stack)))
    draw = ImageDraw.Draw(picture)
    colours = (palette(len(names)) * 255).round().int().tolist()
    for mask, label, colour in zip(stack, labels or names, colours):
        ys, xs = torch.nonzero(mask > 0.5, as_tuple=True)
        left, top = int(xs.min()), max(int(ys.min()) - 40, 0)
        box = draw.textbbox((left, top), label, font=font(36))
        draw.rectangle((box[0] - 4, box[1] - 4, box[2] + 4, box[3] + 4), fill=tuple(colour))
        draw.text((left, top), label, fill="black", font=font(36))
    return picture


def mask_image(masks: dict[str, torch.Tensor], names: list[str]) -> Image.Image:
    merged = torch.stack([masks[n] for n in names]).amax(0)
    return Image.fromarray(to_uint8(merged), "L").convert("RGB")


def fit(picture: Image.Image, width: int, height: int) -> Image.Image:
    scale = min(width / picture.width, height / picture.height)
    return picture.resize((round(picture.width * scale), round(picture.height * scale)), Image.LANCZOS)


def caption(picture: Image.Image, text: str, size: int = 22) -> Image.Image:
    """``text`` on a dark strip at the top-left corner of ``picture``."""
    draw = ImageDraw.Draw(picture)
    box = draw.textbbox((6, 4), text, font=font(size))
    draw.rectangle((0, 0, box[2] + 6, box[3] + 6), fill=(24, 24, 28))
    draw.text((6, 4), text, fill="white", font=font(size))
    return picture


def card(title: str, main: Image.Image, inset: Image.Image | None = None, footer: str = "") -> Image.Image:
    """A square card: ``title`` on a dark band, ``main`` as large as it fits, ``inset`` (the mask, a second result)
    over its lower right corner, ``footer`` under it, and the illustration band."""
    canvas = Image.new("RGB", (SIZE, SIZE), (24, 24, 28))
    draw = ImageDraw.Draw(canvas)
    draw.text((14, 16), title, fill="white", font=font(30))
    bottom = SIZE - 34 - (36 if footer else 0)
    fitted = fit(main, SIZE - 12, bottom - TITLE_BAND)
    canvas.paste(fitted, ((SIZE - fitted.width) // 2, TITLE_BAND))
    if inset is not None:
        small = fit(inset, SIZE * 0.46, SIZE * 0.46)
        x, y = SIZE - small.width - 10, TITLE_BAND + fitted.height - small.height + 40
        y = min(y, bottom - small.height - 4)
        draw.rectangle((x - 3, y - 3, x + small.width + 2, y + small.height + 2), fill="white")
        canvas.paste(small, (x, y))
    if footer:
        draw.text((14, bottom + 4), footer, fill=(255, 230, 150), font=font(22))
    return stamp(canvas, NOTE, size=20)


def region_painting(image: torch.Tensor, region: torch.Tensor) -> Image.Image:
    """The image with a painted region1 (a brush stroke inside the cup, as painted in the mask editor)."""
    painted = image.clone()
    painted[region > 0] = painted[region > 0] * 0.3 + torch.tensor([0.1, 0.9, 1.0]) * 0.7
    picture = Image.fromarray(to_uint8(painted))
    ys, xs = torch.nonzero(region, as_tuple=True)
    ImageDraw.Draw(picture).text((int(xs.min()), int(ys.min()) - 30), "region1", fill="white", font=font(26))
    return picture


def cards() -> dict[str, Image.Image]:
    image = photo()
    height, width = image.shape[:2]
    masks = coffee_masks(height, width)
    y, x = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    stroke = ((((y - 150) / 30) ** 2 + ((x - 290) / 80) ** 2) <= 1).float() * masks["cup"]
    mirrored = {k: v.flip(-1) for k, v in masks.items()}
    frames = []
    for shift in (0, 150):  # a clip panning across the photo; the tracked cup moves with it
        crop = slice(shift, shift + 420)
        frames.append((result(image[:, crop], {"cup": masks["cup"][:, crop]}, ["cup"]), f"frame {shift // 30}"))
    return {
        "sa2va_basic_segmentation": card('"the cup" -> mask, overlay', caption(result(image, masks, ["cup"]), "overlay"),
                                         caption(mask_image(masks, ["cup"]), "mask", 40)),
        "sa2va_shared_loader_two_prompts": card("one loader, two prompts", result(image, masks, ["cup"]),
                                                result(image, masks, ["saucer"])),
        "sa2va_image_batch": card("a batch: masks per image", caption(result(image, masks, ["cup"]), "image 0", 36),
                                  caption(result(image.flip(1), mirrored, ["cup"]), "image 1", 40)),
        "sa2va_video": card("video -> one track per object", caption(frames[0][0], frames[0][1], 36),
                            caption(frames[1][0], frames[1][1], 44), footer="the cup followed frame by frame"),
        "sa2va_region_prompt": card("painted region1 -> its object", caption(result(image, masks, ["cup"]), "result"),
                                    caption(region_painting(image, stroke), "region1 painted", 40)),
        "sa2va_several_prompts": card("one request per line", result(
            image, masks, ["cup", "saucer", "spoon"], ["1: the cup", "2: the saucer", "3: the spoon"])),
        "sa2va_describe_with_masks": card("describe with masks", result(
            image, masks, ["cup", "saucer", "spoon"], ["a cup", "a saucer", "a spoon"]),
            footer='"A cup of coffee on a saucer, a spoon..."'),
    }


def main() -> None:
    names = {p.stem for p in OUT.glob("*.json")}
    made = cards()
    missing = names - set(made)
    if missing:
        raise SystemExit(f"no card for {sorted(missing)}: add one to cards()")
    for name in sorted(names):
        path = OUT / f"{name}.jpg"
        made[name].save(path, quality=88, optimize=True)
        print(path)


if __name__ == "__main__":
    main()
