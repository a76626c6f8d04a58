"""Sa2VA-Qwen3-VL-4B-SAM3's grounding encoder: SAM 3's tracker on transformers' ``Sam3TrackerVideoModel``.

The release stores SAM 3's tracker (ViT-L/14 at 1008 px, the tracker neck, SAM2's prompt encoder and mask decoder,
the memory modules) under ``grounding_encoder.sam2_model.`` in facebookresearch/sam3's names; config.json says
nothing about it, so the variant is told from the weights (:func:`sa2va.hub.keymap.is_sam3_release`). The tensors are
renamed onto ``Sam3TrackerVideoModel`` (:func:`sa2va.hub.keymap.sam3_tensor_to_native`) and the model is driven by the
same engine as SAM2 (:class:`~sa2va.grounding.sam2.GroundingHead`) with :data:`~sa2va.grounding.rules.SAM3_RULES`:

* input: PIL bicubic resize to 1008 x 1008 (aspect ratio not kept), ``/255``, ImageNet mean/std as bf16-rounded
  constants (Sa2VA's choice, not SAM 3's native 0.5/0.5; :func:`sa2va.grounding.sam2.sam2_pixels`);
* encoder: ViT + tracker neck; the neck's 0.5x level is dropped and levels 0/1 go through ``conv_s0``/``conv_s1``
  (``Sam3TrackerVideoModel.get_image_features``): 288², 144² and 72² maps of 256 channels;
* decoding as SAM2's (``[not_a_point, pad, language]``, multimask, best of 3 by predicted IoU) **with** the
  object-score clamp: a mask whose object score is <= 0 is empty;
* video memory: SAM 3's tracker rules (:mod:`sa2va.grounding.memory`).

transformers gained SAM 3 in its 5.x series; under 4.57 loading this release raises
:class:`~sa2va.errors.DependencyError`.
"""
from __future__ import annotations

import copy
import logging
import os

import torch

from ..hub import keymap
from ..hub.checkpoint import ShardIndex, check_keys, check_shapes
from ..compat import build_uninitialised
from ..errors import DependencyError
from .rules import SAM3_RULES
from .sam2 import GroundingHead

logger = logging.getLogger(__name__)

#: the release's name on the hub, for messages
SAM3_RELEASE = "Sa2VA-Qwen3-VL-4B-SAM3"
#: the ViT's LayerNorm epsilon in facebookresearch/sam3's ViTDet (``partial(nn.LayerNorm, eps=1e-5)``), which the
#: release's code builds; transformers' ``Sam3ViTConfig`` defaults to 1e-6, which moves the 72x72 features by ~1e-4
#: relative (measured against the upstream code, tests/data/parity/qwen3_vl_sam3)
SAM3_VIT_LAYER_NORM_EPS = 1e-5
#: config.json key of a test checkpoint's SAM3 geometry (keyword arguments of ``Sam3TrackerVideoConfig``); releases
#: have none and get transformers' defaults, which are facebook/sam3's tracker
SAM3_CONFIG_KEY = "sam3_config"


def sam3_model_class():
    """transformers' ``Sam3TrackerVideoModel``, or :class:`DependencyError` when this transformers has none."""
    import transformers

    try:
        model_class = getattr(transformers, "Sam3TrackerVideoModel", None)
    except (ImportError, AttributeError):  # a lazy transformers module that fails to import the class
        model_class = None
    if model_class is None:
        raise DependencyError(
            f"{SAM3_RELEASE} grounds masks with SAM 3, which transformers {transformers.__version__} does not have: "
            f"it needs transformers 5.x (Sam3TrackerVideoModel). Use it from an environment with transformers>=5.0; "
            f"the pack never upgrades a shared environment's transformers itself.")
    return model_class


def sam3_config(overrides: dict | None = None):
    """The ``Sam3TrackerVideoConfig`` of a checkpoint: transformers' defaults (facebook/sam3's tracker at 1008 px,
    ViT 1024 x 32 layers, the release's geometry) updated with ``overrides``, the optional ``sam3_config`` block of a
    test checkpoint's config.json. A ``vision_config.backbone_config`` given there updates the default ViT config
    key by key. The ViT's LayerNorm epsilon is set to the release code's :data:`SAM3_VIT_LAYER_NORM_EPS`."""
    sam3_model_class()
    from transformers import Sam3TrackerVideoConfig

    kwargs = copy.deepcopy(overrides) if overrides else {}
    vision = kwargs.pop("vision_config", None)
    config = Sam3TrackerVideoConfig(**kwargs)
    config.vision_config.backbone_config.layer_norm_eps = SAM3_VIT_LAYER_NORM_EPS
    if vision:
        vision = dict(vision)
        backbone = vision.pop("backbone_config", None) or {}
        for key, value in backbone.items():
            setattr(config.vision_config.backbone_config, key, value)
        for key, value in vision.items():
            setattr(config.vision_config, key, value)
    return config


def load_sam3(folder: str | os.PathLike, config: dict, index: ShardIndex, dtype: torch.dtype, device: torch.device,
              compile_encoder: bool | str = False) -> GroundingHead:
    """Load the release's SAM3 tracker into ``Sam3TrackerVideoModel`` and wrap it in a :class:`GroundingHead`.

    Every release tensor under ``grounding_encoder.sam2_model.`` must be one the model needs (or the unused detector
    neck) and vice versa, with the model's shape; tensors are streamed into the parameters one by one."""
    model_class = sam3_model_class()
    sam_cfg = sam3_config(config.get(SAM3_CONFIG_KEY))
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in model_class(sam_cfg).state_dict().items()}
    expected = {keymap.SAM2_PREFIX + k: s for k, s in keymap.sam3_release_shapes(shapes).items()}
    check_keys(set(expected), set(index.names(keymap.SAM2_PREFIX)), folder, "SAM3")
    check_shapes(expected, index, folder, "SAM3")
    model = build_uninitialised(lambda: model_class(sam_cfg), dtype)
    targets = model.state_dict()
    filled: set[str] = set()
    with torch.no_grad():
        for name, tensor in index.iter_tensors(keymap.SAM2_PREFIX):
            for native, row, value in keymap.sam3_tensor_to_native(name[len(keymap.SAM2_PREFIX):], tensor):
                target = targets[native] if row is None else targets[native][row:row + 1]
                target.copy_(value)
                filled.add(native)
    unfilled = sorted(set(targets) - filled)
    if unfilled:  # cannot happen after check_keys unless the key map is wrong; never run on uninitialised weights
        raise RuntimeError(f"SAM3 parameters left unloaded: {', '.join(unfilled[:5])}")
    logger.debug("SAM3 tracker: %d release tensors onto %d parameters", len(expected), len(targets))
    return GroundingHead(model.to(device=device, dtype=dtype).eval(), compile_encoder=compile_encoder,
                         rules=SAM3_RULES)
