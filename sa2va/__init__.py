"""Sa2VA on transformers' native classes: segmentation and grounded answers from a free-form prompt.

    import sa2va
    model = sa2va.load_model("models/sa2va/Sa2VA-Qwen3-VL-4B", device="cuda")
    pred = model.predict(image, "Please segment the woman holding the red umbrella.")
    pred.text, pred.masks  # answer, float32 [N, H, W] probabilities
    video = model.predict_video(frames, "Please segment the dog.")
    video.masks            # float32 [N, T, H, W] probabilities, tracked with SAM2's memory

No code from the model hub is ever executed; the library never downloads implicitly (see sa2va.hub.download).
The model API is imported on first use, so ``python -m sa2va doctor`` can report a missing torch or transformers
instead of failing on import.
"""
from .errors import Cancelled, CheckpointKeyError, DependencyError, InputError, ModelFolderError, Sa2VAError

__all__ = ["load_model", "Sa2VAModel", "Prediction", "VideoPrediction", "VideoOptions", "Answer", "Sa2VAError",
           "ModelFolderError", "CheckpointKeyError", "InputError", "DependencyError", "Cancelled"]
__version__ = "0.1.0"

_LAZY = {"load_model": "loading", "Sa2VAModel": "model", "Prediction": "model", "VideoPrediction": "video",
         "VideoOptions": "video", "Answer": "answer"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    message = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(message)
