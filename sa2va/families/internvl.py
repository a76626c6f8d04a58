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
import os

import numpy as np
import torch
from PIL import Image

from ..cache import EncoderCache
from ..compat import vision_cache_supported
from ..errors import InputError, ModelFolderError
from ..hub.checkpoint import ShardIndex, check_keys, check_shapes
from ..hub.keymap import PROJECTION_PREFIX, SAM2_PREFIX
from ..quantization import quantization_config
from . import internlm2
from .base import LoadOptions, cache_projected_features, quiet_transformers, require_complete_load
from .internlm2_tokenizer import InternLM2Tokenizer
from .internvl_inputs import InternVLInputProcessor, region_cells, region_embeddings, tile_grid, tile_image, tile_pixels
from .internvl_release import (IMG_CONTEXT, KEY_MAPPING, QKV_NATIVE, QKV_RELEASE, REQUIRED_TOKENS, TEMPLATES,
                               WQKV_NATIVE, WQKV_RELEASE, WQKV_RENAMED, ChatTemplate, chat_template, check_config,
                               decoder_of, load_fused_qkv, native_config, native_to_release, release_to_native,
                               split_qkv, tokens_per_tile)
from .tokenizer_files import load_file_tokenizer

logger = logging.getLogger(__name__)


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
            if QKV_NATIVE.match(name):
                shape = (3 * shape[0], *shape[1:])
            elif decoder == "internlm2" and WQKV_NATIVE.match(name):
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
            [n for n in index.names("language_model.") if WQKV_RELEASE.match(n)]
        split = {name for release in fused for name in release_to_native(release)}
        missing = sorted(set(info.get("missing_keys", [])) - split)
        unexpected = [k for k in info.get("unexpected_keys", [])
                      if not QKV_RELEASE.match(k) and not WQKV_RELEASE.match(k) and not WQKV_RENAMED.match(k)]
        require_complete_load(folder, missing, unexpected)
        load_fused_qkv(model, index, fused, config)
        model.eval()
        model.generation_config.do_sample = False
        self.vlm = model
        return model

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
        for token in REQUIRED_TOKENS + template.required_tokens:
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
        """The fast tokenizer of a folder with ``tokenizer.json`` (Qwen2 releases), as the file is written."""
        return load_file_tokenizer(folder, "tokenizer.json, tokenizer_config.json, vocab.json, merges.txt, "
                                           "added_tokens.json and special_tokens_map.json")

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
        inputs["inputs_embeds"] = region_embeddings(self.vlm, input_ids, pixel_values, cells,
                                                     tokenizer.convert_tokens_to_ids(IMG_CONTEXT))
        return inputs

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
