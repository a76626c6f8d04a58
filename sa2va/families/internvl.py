"""Sa2VA-InternVL3 releases (2B / 8B / 14B) and Sa2VA-1B / 4B / 8B / 26B (InternVL2.5) on transformers' own
``InternVLForConditionalGeneration``.

Facts this adapter encodes (docs/formats.md, "InternVL releases"):

* the release stores InternVL's original layout (``vision_model.*`` with a fused ``attn.qkv``, ``mlp1.*``,
  ``language_model.model.*``, ``language_model.lm_head.weight``); every tensor maps onto a native one, the fused qkv
  split into equal q, k, v row blocks; Sa2VA-8B / 26B carry InternLM2 instead of Qwen2, which runs as transformers'
  Llama with renamed tensors and a grouped ``attention.wqkv`` split (:mod:`sa2va.families.internlm2`);
* the native config needs InternViT's switches spelled out (``norm_type``, ``attention_bias``, ``use_qk_norm``: the
  upstream and native defaults differ), ``use_mean_pooling=True`` (no final ViT norm, as upstream) and
  **``tie_word_embeddings=False``** (at its default True the model is built with ``lm_head`` tied to the
  embeddings, and loading a state dict writes the head over them: docs/formats.md, "InternVL releases");
* the tokenizer is read without remote code (the folder's ``auto_map`` would otherwise ask about it): transformers'
  own for ``tokenizer.json``, :class:`~sa2va.families.internlm2_tokenizer.InternLM2Tokenizer` for the
  SentencePiece ``tokenizer.model`` of the InternLM2 releases;
* images are cut into 448-px tiles as the reference's ``dynamic_preprocess`` does (1 to 12 tiles, grid by closest
  aspect ratio, PIL bicubic, a thumbnail appended when there is more than one tile), 256 tokens per tile;
* the prompt is the chat template that ``config["template"]`` names, without a system turn: ``qwen_chat``
  (InternVL3 releases, Sa2VA-1B), ``phi3_chat`` (Sa2VA-4B) or ``internlm2_chat`` (Sa2VA-8B / 26B: qwen_chat's text,
  BOS prepended by the tokenizer), as upstream's ``templates.py`` spells them; any other template is refused at load
  time. Generation stops at the tokenizer's eos token (``</s>`` for InternLM2) or when the decoded answer ends with
  one of the template's stop words (``<|im_end|>`` / ``<|endoftext|>``; the text ``<|end|>``, which the 4B's Qwen2
  tokenizer spells with several tokens); [SEG] reads the final norm's output.

Region prompts (the reference's ``mask_prompts``): each region mask is resized (nearest) to the 16x16 token grid
of a tile; the prompt gets ``"\\nThere are N part regions in the picture: region1<vp>" + <IMG_CONTEXT> x
popcount + "</vp>, ... .\\n"`` right after the image, and those tokens carry the last tile's features (the
thumbnail, or the only tile) at the mask's cells.
"""
from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..cache import EncoderCache
from ..hub.checkpoint import ShardIndex, check_keys, check_shapes
from ..compat import internvl_image_features, vision_cache_supported
from ..errors import InputError, ModelFolderError
from ..hub.keymap import PROJECTION_PREFIX, SAM2_PREFIX
from ..quantization import quantization_config
from . import internlm2
from .base import LoadOptions, cache_projected_features, quiet_transformers, require_complete_load, untied_in_dtype
from .internlm2_tokenizer import InternLM2Tokenizer

logger = logging.getLogger(__name__)

TILE_SIZE = 448
MIN_TILES = 1
MAX_TILES = 12
#: ImageNet statistics of the reference's torchvision ``Normalize`` (applied in float32)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"
VP_START, VP_END = "<vp>", "</vp>"


@dataclass(frozen=True)
class ChatTemplate:
    """One chat template of upstream's ``templates.py`` as ``predict_forward`` uses it: the user turn
    (``INSTRUCTION``, no system turn) and the ``STOP_WORDS``, which stop generation when the decoded answer ends
    with them. required_tokens: tokens the release's tokenizer must have as single tokens for this template."""

    name: str
    instruction: str
    stop_words: tuple[str, ...]
    required_tokens: tuple[str, ...] = ()


#: the templates Sa2VA releases with an InternVL-style config use: ``qwen_chat`` (InternVL3 releases, Sa2VA-1B),
#: ``phi3_chat`` (Sa2VA-4B, whose Qwen2 tokenizer has no ``<|end|>`` token: the stop word is text) and
#: ``internlm2_chat`` (Sa2VA-8B / 26B: qwen_chat's text; the tokenizer prepends BOS, the eos is ``</s>``)
TEMPLATES = {
    "qwen_chat": ChatTemplate("qwen_chat", "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n",
                              ("<|im_end|>", "<|endoftext|>"), ("<|im_start|>", "<|im_end|>", "<|endoftext|>")),
    "phi3_chat": ChatTemplate("phi3_chat", "<|user|>\n{input}<|end|>\n<|assistant|>\n", ("<|end|>",)),
    "internlm2_chat": ChatTemplate("internlm2_chat", "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n",
                                   ("<|im_end|>",), ("<|im_start|>", "<|im_end|>")),
}
#: language models an InternVL-style release may carry: llm_config.architectures[0] -> decoder name
DECODERS = {"Qwen2ForCausalLM": "qwen2", internlm2.ARCHITECTURE: "internlm2"}
_REQUIRED_TOKENS = ("[SEG]", IMG_START, IMG_END, IMG_CONTEXT, VP_START, VP_END)
#: config.json keys the adapter reads without a default
_VISION_KEYS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers", "patch_size")
_LLM_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")

#: llm_config keys that are not Qwen2Config arguments (InternVL3's config and the 4.57 export carry them)
_LLM_DROP = {"_name_or_path", "auto_map", "architectures", "use_bfloat16", "moe_config", "bias", "layer_types",
             "_attn_implementation_autoset", "attn_implementation", "torch_dtype", "dtype", "transformers_version",
             "model_type", "use_flash_attn", "_commit_hash"}

# (release name, runtime name) pairs. "{i}" is a layer number; a name ending in "." is a prefix, any other name
# is a whole tensor name. Both directions of the key map are generated from this one table.
_KEY_PAIRS = [
    ("vision_model.embeddings.class_embedding", "model.vision_tower.embeddings.cls_token"),
    ("vision_model.embeddings.position_embedding", "model.vision_tower.embeddings.position_embeddings"),
    ("vision_model.embeddings.patch_embedding.", "model.vision_tower.embeddings.patch_embeddings.projection."),
    ("vision_model.encoder.layers.{i}.ls1", "model.vision_tower.encoder.layer.{i}.lambda_1"),
    ("vision_model.encoder.layers.{i}.ls2", "model.vision_tower.encoder.layer.{i}.lambda_2"),
    ("vision_model.encoder.layers.{i}.norm1.", "model.vision_tower.encoder.layer.{i}.layernorm_before."),
    ("vision_model.encoder.layers.{i}.norm2.", "model.vision_tower.encoder.layer.{i}.layernorm_after."),
    ("vision_model.encoder.layers.{i}.attn.proj.", "model.vision_tower.encoder.layer.{i}.attention.projection_layer."),
    ("vision_model.encoder.layers.{i}.attn.q_norm.", "model.vision_tower.encoder.layer.{i}.attention.q_norm."),
    ("vision_model.encoder.layers.{i}.attn.k_norm.", "model.vision_tower.encoder.layer.{i}.attention.k_norm."),
    ("vision_model.encoder.layers.{i}.mlp.", "model.vision_tower.encoder.layer.{i}.mlp."),
    ("mlp1.0.", "model.multi_modal_projector.layer_norm."),
    ("mlp1.1.", "model.multi_modal_projector.linear_1."),
    ("mlp1.3.", "model.multi_modal_projector.linear_2."),
    *internlm2.KEY_PAIRS,
    ("language_model.model.", "model.language_model."),
    ("language_model.lm_head.", "lm_head."),
]
#: the pairs of each decoder (the InternLM2 ones only for InternLM2; the generic prefix then maps what is left)
_DECODER_PAIRS = {"qwen2": [p for p in _KEY_PAIRS if p not in internlm2.KEY_PAIRS], "internlm2": _KEY_PAIRS}
#: the fused attention input projection of InternViT: rows are [q; k; v]
QKV_RELEASE = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.attn\.qkv\.(weight|bias)$")
_QKV_NATIVE = re.compile(r"^model\.vision_tower\.encoder\.layer\.(\d+)\.attention\.([qkv])_proj\.(weight|bias)$")
_WQKV_RELEASE = re.compile(internlm2.WQKV_RELEASE)
_WQKV_NATIVE = re.compile(internlm2.WQKV_NATIVE)
#: the fused wqkv as transformers may report it (renamed by the generic ``language_model.model.`` prefix)
_WQKV_RENAMED = re.compile(r"^model\.language_model\.layers\.(\d+)\.attention\.wqkv\.weight$")


def _pattern(name: str) -> str:
    regex = "^" + re.escape(name).replace(re.escape("{i}"), r"(\d+)")
    return regex if name.endswith(".") else regex + "$"


def _template(name: str) -> str:
    return name.replace("{i}", r"\1")


#: release name -> runtime name, as regexes for ``from_pretrained(key_mapping=...)`` (the first matching pattern
#: renames a key); the fused qkv tensors are not in it
KEY_MAPPING = {_pattern(release): _template(native) for release, native in _KEY_PAIRS}
_INVERSE = {decoder: [(re.compile(_pattern(native)), _template(release)) for release, native in pairs]
            for decoder, pairs in _DECODER_PAIRS.items()}
_FORWARD = [(re.compile(pattern), replacement) for pattern, replacement in KEY_MAPPING.items()]


def decoder_of(config: dict) -> str:
    """``"qwen2"`` or ``"internlm2"``: the language model of an InternVL-style config (``llm_config.architectures``);
    anything else is refused by :func:`check_config`."""
    arch = ((config.get("llm_config") or {}).get("architectures") or ["?"])[0]
    return DECODERS.get(arch, arch)


def release_to_native(key: str) -> list[str]:
    """Runtime names one release tensor fills: one name, three for a fused ``attn.qkv`` or InternLM2
    ``attention.wqkv`` (q, k, v in that order), none for tensors outside the vision-language model (SAM2, the [SEG]
    projection)."""
    m = QKV_RELEASE.match(key)
    if m:
        layer, kind = m.groups()
        return [f"model.vision_tower.encoder.layer.{layer}.attention.{p}_proj.{kind}" for p in "qkv"]
    m = _WQKV_RELEASE.match(key)
    if m:
        return [f"model.language_model.layers.{m.group(1)}.self_attn.{p}_proj.weight" for p in "qkv"]
    for pattern, replacement in _FORWARD:
        if pattern.match(key):
            return [pattern.sub(replacement, key, count=1)]
    return []


def native_to_release(key: str, decoder: str = "qwen2") -> str | None:
    """Runtime name -> the release tensor that holds it (the fused ``attn.qkv`` for the vision tower's q/k/v, the
    fused ``attention.wqkv`` for InternLM2's); None if unknown. decoder: ``"qwen2"`` or ``"internlm2"``."""
    m = _QKV_NATIVE.match(key)
    if m:
        layer, _, kind = m.groups()
        return f"vision_model.encoder.layers.{layer}.attn.qkv.{kind}"
    m = _WQKV_NATIVE.match(key)
    if m and decoder == "internlm2":
        return f"language_model.model.layers.{m.group(1)}.attention.wqkv.weight"
    for pattern, replacement in _INVERSE[decoder]:
        if pattern.match(key):
            return pattern.sub(replacement, key, count=1)
    return None


def split_qkv(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split a fused InternViT ``attn.qkv`` weight ``[3C, C]`` or bias ``[3C]`` into q, k, v (``[C, C]`` / ``[C]``;
    the shape was checked against config.json before)."""
    q, k, v = tensor.chunk(3, dim=0)
    return q, k, v


# ------------------------------------------------------------------------------------------------- config
def check_config(config: dict, folder: str | os.PathLike = "") -> None:
    """Refuse what ``InternVLForConditionalGeneration`` cannot run exactly: another vision tower or language model,
    pixel-shuffle version 1, a chat template this adapter does not implement, or a config without the sizes the
    model is built from."""
    vision = config.get("vision_config") or {}
    llm = config.get("llm_config") or {}
    vision_arch = (vision.get("architectures") or ["InternVisionModel"])[0]
    llm_arch = (llm.get("architectures") or ["?"])[0]
    if vision_arch != "InternVisionModel" or llm_arch not in DECODERS:
        raise ModelFolderError(f"{folder}: this InternVL-style Sa2VA model uses {vision_arch} + {llm_arch}; only "
                               f"InternVisionModel + Qwen2ForCausalLM (Sa2VA-1B, Sa2VA-4B and the Sa2VA-InternVL3 "
                               f"releases) or + InternLM2ForCausalLM (Sa2VA-8B, Sa2VA-26B) is supported.")
    if config.get("ps_version", "v1") != "v2":
        raise ModelFolderError(f"{folder}: config.json has ps_version {config.get('ps_version', 'v1')!r}; only "
                               f"pixel-shuffle 'v2' (all Sa2VA-InternVL3 releases) is supported.")
    missing = [f"vision_config.{k}" for k in _VISION_KEYS if k not in vision] + \
        [f"llm_config.{k}" for k in _LLM_KEYS if k not in llm]
    if missing:
        raise ModelFolderError(f"{folder}: config.json lacks {', '.join(missing)}; it is not a complete Sa2VA release "
                               f"config. Copy config.json from the model repository again.")
    chat_template(config, folder)


def chat_template(config: dict, folder: str | os.PathLike = "") -> ChatTemplate:
    """The chat template ``config["template"]`` names (``-`` read as ``_``, as upstream does); any template
    other than :data:`TEMPLATES` is refused with an error naming it."""
    name = str(config.get("template")).replace("-", "_")
    if name not in TEMPLATES:
        raise ModelFolderError(f"{folder}: config.json asks for the chat template {config.get('template')!r}, which "
                               f"this pack does not implement (supported: {', '.join(TEMPLATES)}); this model "
                               f"cannot be run here.")
    return TEMPLATES[name]


def tokens_per_tile(config: dict) -> int:
    """Image tokens per 448-px tile: (image_size / patch_size)^2 * downsample_ratio^2 (256 for InternVL3)."""
    vision = config["vision_config"]
    size = config.get("force_image_size") or vision["image_size"]
    return int((size // vision["patch_size"]) ** 2 * config.get("downsample_ratio", 0.5) ** 2)


def native_config(config: dict, image_token_id: int, dtype: torch.dtype):
    """The transformers ``InternVLConfig`` of a release config.json (docs/formats.md, "InternVL releases").

    ``image_token_id``: the tokenizer's id of ``<IMG_CONTEXT>``. InternViT's switches are passed explicitly with
    the *upstream* defaults for absent keys; the lm_head is untied on the outer and the text config; ``dtype`` is set
    on every sub-config."""
    from transformers import InternVLConfig, InternVLVisionConfig, Qwen2Config

    check_config(config)
    v = config["vision_config"]
    image_size = config.get("force_image_size") or v["image_size"]
    with quiet_transformers():
        vision = InternVLVisionConfig(
            hidden_size=v["hidden_size"], intermediate_size=v["intermediate_size"],
            num_attention_heads=v["num_attention_heads"], num_hidden_layers=v["num_hidden_layers"],
            image_size=image_size, patch_size=v["patch_size"], num_channels=v.get("num_channels", 3),
            hidden_act=v.get("hidden_act", "gelu"), layer_norm_eps=v.get("layer_norm_eps", 1e-6),
            norm_type=v.get("norm_type", "rms_norm"), attention_bias=v.get("qkv_bias", False),
            use_qk_norm=v.get("qk_normalization", True), layer_scale_init_value=v.get("initializer_factor", 0.1),
            hidden_dropout_prob=v.get("dropout", 0.0), attention_dropout=v.get("attention_dropout", 0.0),
            projection_dropout=v.get("dropout", 0.0), use_absolute_position_embeddings=True,
            use_mean_pooling=True, use_mask_token=False)
        if decoder_of(config) == "internlm2":
            text = internlm2.text_config(config["llm_config"])
        else:
            llm = {k: val for k, val in config["llm_config"].items() if k not in _LLM_DROP}
            llm.update(tie_word_embeddings=False, use_cache=True)
            text = Qwen2Config(**llm)
        native = InternVLConfig(
            vision_config=vision, text_config=text, image_token_id=image_token_id,
            image_seq_length=tokens_per_tile(config), downsample_ratio=config.get("downsample_ratio", 0.5),
            projector_hidden_act="gelu", vision_feature_layer=config.get("select_layer", -1),
            vision_feature_select_strategy="default", tie_word_embeddings=False)
    return untied_in_dtype(native, dtype)


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
        """The chat prompt: the images' token strings (joined by newlines, as the reference joins video frames), then
        ``text``, in the template's user turn."""
        return self.template.instruction.format(input="\n".join(image_texts) + text)


# ---------------------------------------------------------------------------------------------- adapter
class InternVLAdapter:
    """Family adapter for ``internvl`` releases (Sa2VA-InternVL3-2B / 8B / 14B, Sa2VA-1B / 4B / 8B / 26B).

    It keeps a reference to the model it built: region prompts need the image features before generation."""

    name = "internvl"
    seg_state = "post_norm"

    def __init__(self) -> None:
        self.vlm: torch.nn.Module | None = None
        self._tokenizer = None

    def hidden_size(self, config: dict) -> int:
        return int(config["llm_config"]["hidden_size"])

    def expected_shapes(self, config: dict, image_token_id: int = 0) -> dict[str, tuple[int, ...]]:
        """Runtime names and shapes of every persistent tensor of the native model (built on the meta device)."""
        from transformers import InternVLForConditionalGeneration

        with torch.device("meta"):
            model = InternVLForConditionalGeneration(native_config(config, image_token_id, torch.float32))
        return {k: tuple(v.shape) for k, v in model.state_dict().items()}

    def expected_release_shapes(self, config: dict) -> dict[str, tuple[int, ...]]:
        """Release names and shapes the native model needs (q, k, v folded back into the fused qkv)."""
        out: dict[str, tuple[int, ...]] = {}
        decoder = decoder_of(config)
        for name, shape in self.expected_shapes(config).items():
            release = native_to_release(name, decoder)
            if release is None:
                raise ModelFolderError(f"transformers' InternVL model has a tensor {name} that no Sa2VA release "
                                       f"stores; this transformers version is not supported yet. Report the issue.")
            if _QKV_NATIVE.match(name):
                shape = (3 * shape[0], *shape[1:])
            elif decoder == "internlm2" and _WQKV_NATIVE.match(name):
                shape = (internlm2.wqkv_rows(config["llm_config"]), *shape[1:])
            out[release] = shape
        return out

    def check_checkpoint(self, folder, config: dict, index: ShardIndex) -> None:
        """Zero missing and zero unexpected vision/language tensors, and every shape right, or a clear error."""
        check_config(config, folder)
        expected = self.expected_release_shapes(config)
        present = {n for n in index.names() if not n.startswith((SAM2_PREFIX, PROJECTION_PREFIX))}
        check_keys(set(expected), present, folder, "language/vision model")
        check_shapes(expected, index, folder, "language/vision model")

    def _tokenizer_for(self, folder):
        if self._tokenizer is None:
            self._tokenizer = self.load_processor(folder, {}).tokenizer
        return self._tokenizer

    def load_vlm(self, folder, config: dict, index: ShardIndex, options: LoadOptions) -> torch.nn.Module:
        """Build ``InternVLForConditionalGeneration`` from the release: every tensor but the fused qkv is loaded by
        transformers through ``key_mapping`` (streamed from the shards, quantised when asked); the qkv tensors are
        split into the vision tower's q/k/v projections afterwards."""
        from transformers import InternVLForConditionalGeneration

        self.check_checkpoint(folder, config, index)
        tokenizer = self._tokenizer_for(folder)
        native = native_config(config, tokenizer.convert_tokens_to_ids(IMG_CONTEXT), options.dtype)
        kwargs: dict = {"config": native, "dtype": options.dtype, "attn_implementation": options.attn_implementation,
                        "key_mapping": KEY_MAPPING, "output_loading_info": True}
        if options.quantization:
            # InternLM2's q/k/v are filled from the fused wqkv after loading: they stay in the compute dtype
            extra = ["q_proj", "k_proj", "v_proj"] if decoder_of(config) == "internlm2" else []
            kwargs["quantization_config"] = quantization_config(options.quantization, options.dtype, extra)
        kwargs.update(options.placement())
        with quiet_transformers():
            model, info = InternVLForConditionalGeneration.from_pretrained(str(folder), **kwargs)
        fused = [n for n in index.names("vision_model.") if QKV_RELEASE.match(n)] + \
            [n for n in index.names("language_model.") if _WQKV_RELEASE.match(n)]
        split = {name for release in fused for name in release_to_native(release)}
        missing = sorted(set(info.get("missing_keys", [])) - split)
        unexpected = [k for k in info.get("unexpected_keys", [])
                      if not QKV_RELEASE.match(k) and not _WQKV_RELEASE.match(k) and not _WQKV_RENAMED.match(k)]
        require_complete_load(folder, missing, unexpected)
        self._load_fused_qkv(model, index, fused, config)
        model.eval()
        model.generation_config.do_sample = False
        self.vlm = model
        return model

    @staticmethod
    def _load_fused_qkv(model: torch.nn.Module, index: ShardIndex, fused: list[str], config: dict) -> None:
        """Split each fused release tensor into q/k/v projections (cast on copy), reading only those tensors from
        their shards: InternViT's ``attn.qkv`` in three equal row blocks, InternLM2's ``attention.wqkv`` by KV
        group (:func:`~sa2va.families.internlm2.split_wqkv`)."""
        llm = config["llm_config"]
        from safetensors import safe_open

        params = dict(model.named_parameters())
        by_shard: dict[str, list[str]] = {}
        for name in fused:
            by_shard.setdefault(index.tensors[name].shard, []).append(name)
        with torch.no_grad():
            for shard, names in by_shard.items():
                with safe_open(str(index.folder / shard), framework="pt", device="cpu") as handle:
                    for release in names:
                        tensor = handle.get_tensor(release)
                        if _WQKV_RELEASE.match(release):
                            parts = internlm2.split_wqkv(tensor, llm["num_attention_heads"],
                                                         llm.get("num_key_value_heads", llm["num_attention_heads"]))
                        else:
                            parts = split_qkv(tensor)
                        for name, part in zip(release_to_native(release), parts):
                            params[name].copy_(part)

    def load_processor(self, folder, config: dict) -> InternVLInputProcessor:
        """The tokenizer (no remote code, no interactive prompt) with the tiling settings of ``config``: the
        SentencePiece :class:`~sa2va.families.internlm2_tokenizer.InternLM2Tokenizer` for InternLM2 releases (or a
        folder with ``tokenizer.model`` and no ``tokenizer.json``), transformers' own tokenizer otherwise."""
        if config:
            check_config(config, folder)
        template = chat_template(config, folder) if config else TEMPLATES["qwen_chat"]
        sentencepiece_only = not os.path.isfile(os.path.join(folder, "tokenizer.json")) and \
            os.path.isfile(os.path.join(folder, "tokenizer.model"))
        if (config and decoder_of(config) == "internlm2") or sentencepiece_only:
            tokenizer = InternLM2Tokenizer(folder)
        else:
            tokenizer = self._auto_tokenizer(folder)
        for token in _REQUIRED_TOKENS + template.required_tokens:
            token_id = tokenizer.convert_tokens_to_ids(token)
            if token_id is None or token_id == tokenizer.unk_token_id or \
                    tokenizer.convert_ids_to_tokens(token_id) != token:
                raise ModelFolderError(f"{folder}: the tokenizer has no {token} token, so it is not the tokenizer of "
                                       f"a Sa2VA InternVL-style release. Copy the tokenizer files of the Sa2VA "
                                       f"release, not of the base InternVL model.")
        self._tokenizer = tokenizer
        per_tile = tokens_per_tile(config) if config else 256
        return InternVLInputProcessor(tokenizer, tokens_per_tile=per_tile, template=template)

    @staticmethod
    def _auto_tokenizer(folder):
        """transformers' tokenizer of a folder with ``tokenizer.json`` (Qwen2 releases)."""
        from transformers import AutoTokenizer

        try:
            with quiet_transformers():
                return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
        except (OSError, ValueError) as exc:
            raise ModelFolderError(f"{folder}: the tokenizer/processor files cannot be loaded ({exc}). Copy "
                                   f"tokenizer.json, tokenizer_config.json, vocab.json, merges.txt, added_tokens.json "
                                   f"and special_tokens_map.json from the model repository.") from exc

    def build_inputs(self, processor: InternVLInputProcessor, images: list[Image.Image], text: str,
                     regions: list | np.ndarray | torch.Tensor | None = None) -> dict:
        """Prompt ids and pixels for one user turn: the images, then ``text``.

        One image is tiled (1 to 12 tiles + thumbnail); several images are treated as video frames, as the reference
        does (one plain 448-px tile each). Returns ``input_ids`` / ``attention_mask`` ``[1, P]`` and
        ``pixel_values`` float32 ``[n_tiles, 3, 448, 448]``. With ``regions`` (one image only; masks of the image's
        size) it returns ``inputs_embeds`` ``[1, P, H]`` instead of ``pixel_values``: the image features are computed
        here, because the region tokens carry a selection of them that transformers cannot place by itself."""
        if not images:
            raise InputError("Sa2VA-InternVL3 prompts need an image.")
        if IMG_CONTEXT in text:
            raise InputError(f"The prompt contains the reserved token {IMG_CONTEXT}, which marks image features; "
                             f"remove it (the image is inserted by the model).")
        if len(images) == 1:
            tiles = tile_image(images[0], processor.min_tiles, processor.max_tiles, processor.tile_size)
            image_texts = [processor.image_text(len(tiles))]
        else:
            tiles = [im.convert("RGB").resize((processor.tile_size, processor.tile_size), Image.Resampling.BICUBIC)
                     for im in images]
            image_texts = [processor.image_text(1) for _ in tiles]
        pixel_values = tile_pixels(tiles)
        cells = None
        regions = list(regions) if regions is not None else []  # a list of masks, or an [R, H, W] array
        if regions:
            if len(images) != 1:
                raise InputError("Region prompts work on a single image, not on video frames.")
            cells = region_cells(regions, images[0].height, images[0].width, processor.grid)
            counts = [int(c.sum()) for c in cells]
            for i, count in enumerate(counts):
                if count == 0:
                    logger.warning("Region %d covers no cell of the %dx%d token grid (too small); the model sees it "
                                   "as empty.", i + 1, processor.grid, processor.grid)
            image_texts[0] += processor.region_text(counts)
        tokenizer = processor.tokenizer
        input_ids = torch.tensor([tokenizer.encode(processor.prompt(text, image_texts))], dtype=torch.long)
        inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
        if cells is None:
            inputs["pixel_values"] = pixel_values
            return inputs
        inputs["inputs_embeds"] = self._region_embeddings(input_ids, pixel_values, cells,
                                                          tokenizer.convert_tokens_to_ids(IMG_CONTEXT))
        return inputs

    def _region_embeddings(self, input_ids: torch.Tensor, pixel_values: torch.Tensor, cells: torch.Tensor,
                           image_token_id: int) -> torch.Tensor:
        """Prompt embeddings ``[1, P, H]`` with every ``<IMG_CONTEXT>`` filled in order: all tiles' features
        (``[n, 256, H]`` flattened), then for each region the last tile's features at its cells (row-major)."""
        vlm = self.vlm
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

    def final_norm(self, vlm: torch.nn.Module) -> torch.nn.Module:
        return vlm.model.language_model.norm

    def cache_image_features(self, vlm: torch.nn.Module, cache: EncoderCache) -> None:
        """Serve the vision tower's per-tile features ``[256, H]`` from ``cache``, keyed by each 448-px tile's pixels
        (tiles are encoded independently); the tower runs on the tiles it has not seen, alone when all are new (the
        uncached call, unchanged). transformers 5.x only (:func:`~sa2va.compat.vision_cache_supported`)."""
        if vision_cache_supported():
            cache_projected_features(vlm.model, cache, self.name, pack=torch.stack)

    def eos_token_ids(self, config: dict, tokenizer) -> list[int]:
        """The tokenizer's eos (the reference's ``eos_token_id``), then every stop word of the template that is one
        token of the tokenizer (``<|im_end|>``, ``<|endoftext|>`` for ``qwen_chat``): stopping on those ids is
        stopping where the reference's text check would."""
        ids = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
        for word in self.stop_words(config):
            token_id = tokenizer.convert_tokens_to_ids(word)
            if token_id is not None and token_id != tokenizer.unk_token_id and \
                    tokenizer.convert_ids_to_tokens(token_id) == word and token_id not in ids:
                ids.append(int(token_id))
        return ids

    def stop_words(self, config: dict) -> tuple[str, ...]:
        """The template's stop words: generation ends when the decoded answer (special tokens kept, carriage returns
        and newlines removed) ends with one of them, as upstream's ``StopWordStoppingCriteria`` decides."""
        return chat_template(config).stop_words


__all__ = [
    "KEY_MAPPING",
    "TEMPLATES",
    "ChatTemplate",
    "InternVLAdapter",
    "InternVLInputProcessor",
    "chat_template",
    "check_config",
    "native_config",
    "native_to_release",
    "region_cells",
    "release_to_native",
    "split_qkv",
    "tile_grid",
    "tile_image",
    "tile_pixels",
]
