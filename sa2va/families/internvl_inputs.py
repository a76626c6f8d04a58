"""The inputs of an InternVL-style Sa2VA release: images cut into 448-px tiles as the reference's
``dynamic_preprocess`` does, region masks on a tile's token grid, the prompt (:class:`InternVLInputProcessor`) and the
prompt embeddings of a region prompt (:func:`region_embeddings`)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..compat import internvl_image_features
from ..errors import InputError
from .base import place_images
from .internvl_release import IMG_CONTEXT, IMG_END, IMG_START, TEMPLATES, VP_END, VP_START, ChatTemplate

TILE_SIZE = 448
MIN_TILES = 1
MAX_TILES = 12
#: ImageNet statistics of the reference's torchvision ``Normalize`` (applied in float32)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------------------------- tiling
def tile_grid(width: int, height: int, min_tiles: int = MIN_TILES, max_tiles: int = MAX_TILES,
              tile_size: int = TILE_SIZE) -> tuple[int, int]:
    """(columns, rows) of the tile grid for a ``width`` x ``height`` image (the reference's rule).

    Candidates are every grid with ``min_tiles <= columns * rows <= max_tiles``, by increasing tile count; the one
    whose columns/rows ratio is closest to width/height wins; on an exact tie a later (larger) grid wins only while
    the image has more than half the pixels of that grid (``width * height > 0.5 * tile_size^2 * columns * rows``).
    Ties between grids of equal tile count never decide the result (a smaller grid is always strictly closer), so
    their order here (by columns) does not matter."""
    aspect = width / height
    grids = sorted(((c, r) for c in range(1, max_tiles + 1) for r in range(1, max_tiles + 1)
                    if min_tiles <= c * r <= max_tiles), key=lambda g: (g[0] * g[1], g[0]))
    best, best_diff = (1, 1), float("inf")
    for cols, rows in grids:
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and width * height > 0.5 * tile_size * tile_size * cols * rows:
            best = (cols, rows)
    return best


def tile_image(image: Image.Image, min_tiles: int = MIN_TILES, max_tiles: int = MAX_TILES,
               tile_size: int = TILE_SIZE, thumbnail: bool = True) -> list[Image.Image]:
    """Cut an RGB image into ``tile_size`` squares as the reference does.

    The image is resized (PIL bicubic) to the grid of :func:`tile_grid` and cut row-major, left to right and top to
    bottom; with more than one tile a thumbnail (the whole image resized to one tile) is appended last."""
    cols, rows = tile_grid(image.width, image.height, min_tiles, max_tiles, tile_size)
    resized = image.resize((tile_size * cols, tile_size * rows), Image.Resampling.BICUBIC)
    tiles = [resized.crop((c * tile_size, r * tile_size, (c + 1) * tile_size, (r + 1) * tile_size))
             for r in range(rows) for c in range(cols)]
    if thumbnail and len(tiles) > 1:
        tiles.append(image.resize((tile_size, tile_size), Image.Resampling.BICUBIC))
    return tiles


def tile_pixels(tiles: list[Image.Image]) -> torch.Tensor:
    """Normalised float32 pixels ``[n, 3, S, S]`` of n RGB tiles: /255, then ImageNet mean/std in float32 (the
    reference's ``ToTensor`` + ``Normalize``)."""
    x = torch.from_numpy(np.stack([np.asarray(t.convert("RGB"), dtype=np.uint8) for t in tiles]))
    x = x.permute(0, 3, 1, 2).contiguous().to(torch.float32).div(255)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32)[:, None, None]
    return x.sub(mean).div(std)


def region_cells(regions: list, height: int, width: int, grid: int) -> torch.Tensor:
    """Region masks -> bool ``[R, grid, grid]`` cells of a tile's token grid.

    Each mask is an ``height`` x ``width`` array (bool, integer or float; non-zero means inside), resized with
    nearest-neighbour sampling like the reference's ``F.interpolate(mode="nearest")``."""
    masks = []
    for i, region in enumerate(regions):
        array = np.asarray(region.detach().cpu() if torch.is_tensor(region) else region)
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.shape != (height, width):
            raise InputError(f"Each region mask must be a 2-D array of the image's size ({height} x {width}), "
                             f"non-zero inside the region; region {i + 1} has shape {list(array.shape)}.")
        masks.append(torch.from_numpy((array != 0).astype(np.float32)))
    stacked = torch.stack(masks).unsqueeze(0)  # [1, R, H, W]
    cells = torch.nn.functional.interpolate(stacked, size=(grid, grid), mode="nearest")[0]
    return cells.bool()


# -------------------------------------------------------------------------------------------- processor
@dataclass
class InternVLInputProcessor:
    """Tokenizer + tiling settings of an InternVL-style Sa2VA release (the releases ship no image-processor file).

    tokens_per_tile: image tokens per tile (256); grid: side of a tile's token grid (16)."""

    tokenizer: object
    tokens_per_tile: int = 256
    template: ChatTemplate = TEMPLATES["qwen_chat"]
    tile_size: int = TILE_SIZE
    min_tiles: int = MIN_TILES
    max_tiles: int = MAX_TILES

    @property
    def grid(self) -> int:
        return math.isqrt(self.tokens_per_tile)

    def image_text(self, num_tiles: int) -> str:
        """``<img>`` + ``<IMG_CONTEXT>`` x (tokens_per_tile * num_tiles) + ``</img>``."""
        return IMG_START + IMG_CONTEXT * (self.tokens_per_tile * num_tiles) + IMG_END

    @staticmethod
    def region_text(counts: list[int]) -> str:
        """The reference's region block: ``"\\nThere are N part regions in the picture: region1<vp>...</vp>, ...
        .\\n"`` with ``counts[i]`` ``<IMG_CONTEXT>`` tokens inside region i+1's ``<vp>...</vp>``."""
        parts = [f"region{i + 1}{VP_START}{IMG_CONTEXT * n}{VP_END}" for i, n in enumerate(counts)]
        return f"\nThere are {len(counts)} part regions in the picture: " + ", ".join(parts) + ".\n"

    def prompt(self, text: str, image_texts: list[str]) -> str:
        """The chat prompt: the images' token strings (joined by newlines, as the reference joins video frames) in
        place of a ``<image>`` written in ``text`` (the release's ``predict_forward``), else right before ``text``,
        in the template's user turn."""
        return self.template.instruction.format(input=place_images(text, "\n".join(image_texts), ""))


def region_embeddings(vlm: torch.nn.Module | None, input_ids: torch.Tensor, pixel_values: torch.Tensor,
                      cells: torch.Tensor, image_token_id: int) -> torch.Tensor:
    """Prompt embeddings ``[1, P, H]`` with every ``<IMG_CONTEXT>`` filled in order: all tiles' features
    (``[n, 256, H]`` flattened), then for each region the last tile's features at its cells (row-major)."""
    if vlm is None:
        raise RuntimeError("Region prompts need the loaded model: call InternVLAdapter.load_vlm before "
                           "build_inputs (sa2va.load_model does).")
    device = vlm.get_input_embeddings().weight.device
    with torch.no_grad():
        features = internvl_image_features(vlm.model, pixel_values.to(device))  # [n, T, H]
        last = features[-1]
        rows = [features.reshape(-1, features.shape[-1])] + [last[c.flatten().to(device)] for c in cells]
        values = torch.cat(rows)
        ids = input_ids.to(device)
        embeds = vlm.get_input_embeddings()(ids)
        embeds[ids == image_token_id] = values.to(embeds.dtype)
    return embeds
