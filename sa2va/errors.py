"""Exceptions raised by the Sa2VA library.

Every message is one actionable line: what is wrong, where, and what to do. The node layer lets these
propagate so ComfyUI shows them on the node; TROUBLESHOOTING.md lists each message.
"""


class Sa2VAError(Exception):
    """Base class of every error the library raises on purpose."""


class ModelFolderError(Sa2VAError):
    """A model folder is missing, incomplete, corrupted or of an unknown kind."""


class CheckpointKeyError(ModelFolderError):
    """The tensors in a checkpoint do not match the model its config describes."""


class InputError(Sa2VAError, ValueError):
    """An image, prompt or option given to the model is not usable."""


class DependencyError(Sa2VAError):
    """An optional dependency needed for the requested feature is missing or too old."""


class Cancelled(Sa2VAError):
    """A long run (e.g. video segmentation) was stopped by its ``cancelled`` callback."""
