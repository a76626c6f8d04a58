"""Shared fixtures: tiny release-format checkpoints, built once per test session, and loaded models."""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
# the suite never talks to the model hub
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
torch.set_num_threads(min(2, os.cpu_count() or 1))

from sa2va import testing as synthetic  # noqa: E402

FAMILIES = ["qwen3_vl", "qwen2_5_vl", "llava"]


def _is_large(options: dict) -> bool:
    """Whether checkpoint options (values as given or as their ``str``) ask for a full-size grounding encoder."""
    if options.get("grounding") == "sam3":
        return str(options.get("sam3_layers", 2)) == "None" and str(options.get("sam3_width", 256)) == "1024"
    return options.get("sam2") == "full"


@pytest.fixture(scope="session")
def checkpoint_factory(tmp_path_factory):
    """checkpoint_factory(family, **options) -> folder; equal requests share one folder."""
    cache: dict = {}

    def make(family: str = "qwen3_vl", **options) -> Path:
        key = (family, tuple(sorted((k, str(v)) for k, v in options.items())))
        if key not in cache:
            if _is_large(options):
                # a full-size SAM2 checkpoint is 0.45-0.9 GB, a full-size SAM3 one ~1.9 GB: keep one at a time (CI's
                # disk holds two venvs too)
                for other in [k for k in cache if _is_large(dict(k[1]))]:
                    shutil.rmtree(cache.pop(other))
            folder = tmp_path_factory.mktemp(f"ckpt_{family}")
            cache[key] = synthetic.write_checkpoint(folder, family, **options)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def model_factory(checkpoint_factory):
    """model_factory(family, **load_options) -> loaded Sa2VAModel (fp32 CPU by default), cached per session."""
    import sa2va

    cache: dict = {}

    def make(family: str = "qwen3_vl", **load_options):
        load_options.setdefault("dtype", torch.float32)
        key = (family, tuple(sorted((k, str(v)) for k, v in load_options.items())))
        if key not in cache:
            cache[key] = sa2va.load_model(checkpoint_factory(family), **load_options)
        return cache[key]

    return make


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The raw bytes of a tensor of any dtype, in row-major order."""
    return memoryview(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())


class SharedEncodings:
    """Image-encoder outputs shared between loaded models whose grounding weights are equal.

    :meth:`attach` wraps a model's ``grounding.encode`` (the one call the image and the video paths make to the
    SAM2/SAM3 image encoder) so that a second call with the same pixels, on a model whose grounding weights hash to
    the same bytes, returns a copy of the first call's features instead of running the encoder again. The encoder is
    deterministic on a given machine (same weights, same input, same kernels: the same bits), so a model fed shared
    features computes what it would have computed itself; the parity checkpoints of several families hold the very
    same full-size SAM2 (its weights depend on the seed only) and are fed the same pictures, and one full-size
    Hiera-L pass costs about 20 s on 2 cores. The weights are hashed when the model is attached: attach only models
    whose weights no test changes afterwards. ``encodes`` counts the passes actually run."""

    def __init__(self) -> None:
        self.features: dict = {}
        self.encodes = 0

    @staticmethod
    def weights_digest(module: torch.nn.Module) -> str:
        """sha256 over every tensor of ``module``'s state dict: name, dtype, shape and bytes."""
        digest = hashlib.sha256()
        for name, tensor in module.state_dict().items():
            digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
            digest.update(_tensor_bytes(tensor))
        return digest.hexdigest()

    def attach(self, model) -> None:
        head = model.grounding
        weights = self.weights_digest(head.model)
        encode = head.encode

        def shared_encode(pixel_values: torch.Tensor):
            pixels = hashlib.sha256(_tensor_bytes(pixel_values)).hexdigest()
            key = (weights, head.dtype, str(head.device), head.fast_encoder, head.cpu_kernels, head.compiled,
                   pixel_values.dtype, tuple(pixel_values.shape), pixels)
            if key not in self.features:
                self.features[key] = encode(pixel_values)
                self.encodes += 1
            return self.features[key].clone()  # the caller may keep or change its copy; clone keeps the strides

        head.encode = shared_encode


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def image() -> np.ndarray:
    """A deterministic 480x640 RGB test picture: gradients plus a few filled shapes."""
    rng = np.random.RandomState(0)
    y, x = np.mgrid[0:480, 0:640]
    img = np.stack([x / 640 * 255, y / 480 * 255, (x + y) / 1120 * 255], -1)
    img[100:300, 150:350] = [220, 40, 40]
    img[((y - 300) ** 2 + (x - 480) ** 2) < 80 ** 2] = [40, 200, 60]
    img += rng.randn(*img.shape) * 4
    return img.clip(0, 255).astype(np.uint8)


def forced(model, image, prompt: str, answer_ids: list[int], **kwargs):
    """Run predict with decoding forced to ``answer_ids``."""
    from sa2va.families.qwen_vl import fetch_resize  # noqa: F401  (import check of the adapter)
    from sa2va.inputs import to_pil

    inputs = model.prompt_inputs([image], prompt)
    processor = synthetic.ForceTokens(inputs["input_ids"].shape[1], answer_ids)
    return model.predict(image, prompt, logits_processor=[processor], **kwargs)


#: the answer the synthetic models give by themselves (their [SEG] chain), by family
NATURAL_ANSWER = {"llava": "Sure, it is [SEG].</s>"}
NATURAL_ANSWER_DEFAULT = "Sure, it is[SEG].<|im_end|>"


def natural_answer(model) -> str:
    """The raw text of the synthetic model's own answer: Qwen and InternVL end in ``<|im_end|>``, LLaVA in ``</s>``
    (its Llama tokenizer also puts a space before an added token)."""
    return NATURAL_ANSWER.get(model.family, NATURAL_ANSWER_DEFAULT)


def end_token(model) -> int:
    """The id that ends an answer of the synthetic models: ``<|im_end|>`` (Qwen, InternVL) or ``</s>`` (LLaVA)."""
    return model.tokenizer.convert_tokens_to_ids("</s>" if model.family == "llava" else "<|im_end|>")


def ids(model, text: str) -> list[int]:
    """Token ids of ``text`` with [SEG] and other added tokens recognised."""
    return model.tokenizer.encode(text, add_special_tokens=False)


@pytest.fixture(scope="session")
def tiny_vitmatte(tmp_path_factory):
    """A tiny random ViTMatte saved in its real on-disk format (config.json, model.safetensors, preprocessor)."""
    from transformers import VitDetConfig, VitMatteConfig, VitMatteForImageMatting, VitMatteImageProcessor

    torch.manual_seed(0)
    config = VitMatteConfig(backbone_config=VitDetConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                         num_channels=4, image_size=64, patch_size=16,
                                                         out_features=["stage2"], mlp_ratio=2),
                            hidden_size=32, convstream_hidden_sizes=[8, 16, 16], fusion_hidden_sizes=[16, 8, 8, 8])
    folder = tmp_path_factory.mktemp("vitmatte")
    VitMatteForImageMatting(config).save_pretrained(folder)
    VitMatteImageProcessor().save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_models_dir(tmp_path, monkeypatch, checkpoint_factory) -> Path:
    """A models folder (``$SA2VA_MODELS_DIR``) holding the tiny Qwen3-VL checkpoint as ``tiny-qwen3``."""
    base = tmp_path / "models" / "sa2va"
    base.mkdir(parents=True)
    shutil.copytree(checkpoint_factory("qwen3_vl"), base / "tiny-qwen3")
    monkeypatch.setenv("SA2VA_MODELS_DIR", str(base))
    return base


@pytest.fixture
def qwen3_handle(tiny_models_dir):
    """The Sa2VA Loader's handle of ``tiny-qwen3`` (fp32, CPU), as the nodes get it."""
    from pack import pack_module

    return pack_module("nodes.loader").load_handle(model="tiny-qwen3", dtype="fp32", device="cpu")
