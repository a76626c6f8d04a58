"""Sa2VA on transformers' native classes: segmentation and grounded answers from a free-form prompt.

    import sa2va
    model = sa2va.load_model("models/sa2va/Sa2VA-Qwen3-VL-4B", device="cuda")
    pred = model.predict(image, "Please segment the woman holding the red umbrella.")
    pred.text, pred.masks  # answer, float32 [N, H, W] probabilities
    video = model.predict_video(frames, "Please segment the dog.")
    video.masks            # float32 [N, T, H, W] probabilities, tracked with SAM2's memory

No code from the model hub is ever executed; the library never downloads implicitly (see sa2va.download).
"""
from .errors import Cancelled, CheckpointKeyError, DependencyError, InputError, ModelFolderError, Sa2VAError
from .model import Prediction, Sa2VAModel, load_model
from .video import VideoPrediction

__all__ = ["load_model", "Sa2VAModel", "Prediction", "VideoPrediction", "Sa2VAError", "ModelFolderError",
           "CheckpointKeyError", "InputError", "DependencyError", "Cancelled"]
__version__ = "0.1.0"
