"""What the pack needs of its environment: the transformers versions, the optional packages and dtype "auto"."""
import importlib.metadata as metadata
import sys

import pytest
import torch

import sa2va
from sa2va import compat
from sa2va.errors import DependencyError
from sa2va.loading import default_dtype
from sa2va.quantization import quantization_config


@pytest.mark.parametrize("version, ok", [("4.56.2", False), ("4.57.0", True), ("4.57.6", True), ("5.0.0rc1", True),
                                         ("5.24.0", True), ("5.24.0+cu124", True), ("4.9.0", False)])
def test_oldest_supported_transformers_is_4_57(monkeypatch, version, ok):
    monkeypatch.setattr(compat.metadata, "version", lambda name: version)
    problem = compat.transformers_problem()
    assert (problem is None) == ok
    if not ok:
        assert problem == (f"transformers {version} is too old for Sa2VA (needs 4.57 or newer for native Qwen3-VL, "
                           f"InternVL and SAM2): pip install -U 'transformers>=4.57'")
        with pytest.raises(DependencyError, match=r"^Transformers .* is too old for Sa2VA"):
            compat.require_transformers()


def test_missing_transformers_names_the_install_command(monkeypatch):
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(compat.metadata, "version", missing)
    assert compat.transformers_problem() == "transformers is not installed: pip install 'transformers>=4.57'"


def test_installed_transformers_is_supported():
    assert compat.transformers_problem() is None
    assert compat.installed_transformers() >= compat.MIN_TRANSFORMERS


# ---------------------------------------------------------------------------------------------- dtype "auto"
@pytest.fixture
def gpus(monkeypatch):
    """Two fake CUDA GPUs: cuda:0 a Turing (7.5, bf16 only emulated), cuda:1 an Ampere (8.6); current device 0.
    ``torch.cuda.is_bf16_supported`` answers True (as it does on Turing, counting emulation) and must not decide."""
    capability = {0: (7, 5), 1: (8, 6)}
    state = {"current": 0}
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability",
                        lambda device=None: capability[state["current"] if device is None else int(device)])
    monkeypatch.setattr(torch.cuda, "current_device", lambda: state["current"])
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    return state


def test_auto_dtype_asks_the_chosen_gpu_not_the_current_one(gpus):
    assert default_dtype(torch.device("cuda", 0)) == torch.float16
    assert default_dtype(torch.device("cuda", 1)) == torch.bfloat16
    assert default_dtype("cuda:1") == torch.bfloat16
    gpus["current"] = 1
    assert default_dtype("cuda:0") == torch.float16


def test_auto_dtype_without_an_index_uses_the_current_gpu(gpus):
    assert default_dtype("cuda") == torch.float16
    gpus["current"] = 1
    assert default_dtype("cuda") == torch.bfloat16


@pytest.mark.parametrize("capability, expected", [((6, 1), torch.float16), ((7, 0), torch.float16),
                                                  ((7, 5), torch.float16), ((8, 0), torch.bfloat16),
                                                  ((8, 9), torch.bfloat16), ((9, 0), torch.bfloat16),
                                                  ((12, 0), torch.bfloat16)])
def test_bf16_only_from_compute_capability_8_0(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert default_dtype("cuda:0") == expected


def test_auto_dtype_on_the_cpu_is_fp32():
    assert default_dtype("cpu") == torch.float32
    assert default_dtype(torch.device("cpu")) == torch.float32


# ------------------------------------------------------------------------------------------ optional packages
def test_quantization_without_bitsandbytes_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import bitsandbytes -> ImportError
    message = r"bitsandbytes is required for quantization='8bit' and is not installed .*pip install 'bitsandbytes>=0\.45'"
    with pytest.raises(DependencyError, match=message):
        quantization_config("8bit", torch.bfloat16)
    # load_model refuses before it looks at the folder (here: none), not after loading SAM2
    with pytest.raises(DependencyError, match=message.replace("8bit", "4bit")):
        sa2va.load_model(tmp_path / "no-such-model", dtype=torch.float32, quantization="4bit")


def test_unquantised_loading_needs_no_bitsandbytes(monkeypatch, checkpoint_factory):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    model = sa2va.load_model(checkpoint_factory("qwen3_vl"), dtype=torch.float32)
    assert model.options.quantization is None


def test_missing_accelerate_is_reported_when_transformers_needs_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "accelerate", None)
    with pytest.raises(DependencyError, match=r"accelerate is not installed; transformers needs it to quantise the "
                                              r"language model \(4bit\): pip install 'accelerate>=1\.0'"):
        compat.require_accelerate(torch.device("cpu"), "4bit")
    compat.require_accelerate(torch.device("cpu"), None)  # the CPU without quantization needs no accelerate
    monkeypatch.setattr(compat, "installed_transformers", lambda: (4, 57))
    monkeypatch.setattr(compat.metadata, "version", lambda name: "4.57.6")
    with pytest.raises(DependencyError, match=r"\(version 4\.57\.6\) to load a model onto cuda:1"):
        compat.require_accelerate(torch.device("cuda", 1), None)
    monkeypatch.setattr(compat, "installed_transformers", lambda: (5, 24))
    compat.require_accelerate(torch.device("cuda", 1), None)  # transformers 5.x places a model without it
