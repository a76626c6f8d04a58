"""Tasks: what a request asks the model to do, and the instruction each release was trained with (docs/tasks.md).

* ``"segment"`` (the default): the prompt names what to segment; a bare phrase becomes "Please segment the ..."
  (:func:`sa2va.requests.as_request`); one mask per [SEG] of the answer.
* ``"describe with masks"``: grounded caption generation; the prompt is replaced by the release's trained
  instruction (:func:`gcg_instruction`) and the answer interleaves ``<p>phrase</p> [SEG]``, one labelled mask per
  phrase.
* ``"describe"``: a plain description (``Please describe the image.`` / ``Please describe the video content.``, as
  upstream's model card and demo write them); text only, the grounding head never runs.
* ``"ask"``: the prompt as the user typed it, a free question (a bare phrase is *not* turned into a segmentation
  request); masks only when the answer holds [SEG].

Which grounded-caption list a release was trained with (:func:`codebase`): upstream's v1 code (the "brief" list) for
Sa2VA-1B/4B/8B/26B (InternVL2.5), its v2 code (the "detailed" list) for the InternVL3, Qwen2.5-VL and Qwen3-VL
releases. Sa2VA-LLaVA-1.5-7B has no training config upstream: it gets the "brief" question upstream's own evaluation
sends to every release. The family adapter adds the image markers and the chat template, as for every request.
"""
from __future__ import annotations

from .errors import InputError
from .requests import as_request

SEGMENT, DESCRIBE_WITH_MASKS, DESCRIBE, ASK = "segment", "describe with masks", "describe", "ask"
#: the tasks, in the order the nodes offer them
TASKS = (SEGMENT, DESCRIBE_WITH_MASKS, DESCRIBE, ASK)
DEFAULT_TASK = SEGMENT

#: the first of upstream's v1 ``GCG_QUESTIONS`` (projects/llava_sam2/datasets/gcg_process.py), also the question of
#: upstream's GCG evaluation for every release
GCG_BRIEF = ("Could you please give me a brief description of the image? Please respond with interleaved "
             "segmentation masks for the corresponding parts of the answer.")
#: the first of upstream's v2 ``GCG_QUESTIONS`` (projects/sa2va/datasets/common.py)
GCG_DETAILED = ("Could you please give me a detailed description of the image? Please respond with interleaved "
                "segmentation masks for the corresponding parts of the answer.")
DESCRIBE_IMAGE = "Please describe the image."
DESCRIBE_VIDEO = "Please describe the video content."
#: the instructions the describe tasks send: they name no object to label a mask with
TASK_INSTRUCTIONS = frozenset({GCG_BRIEF, GCG_DETAILED, DESCRIBE_IMAGE, DESCRIBE_VIDEO})

#: releases of upstream's v1 codebase, by catalog name (lower case)
V1_RELEASES = frozenset({"sa2va-1b", "sa2va-4b", "sa2va-8b", "sa2va-26b"})
#: chat templates only v1 releases use (Sa2VA-4B: phi3_chat; Sa2VA-8B/26B: internlm2_chat)
V1_TEMPLATES = frozenset({"phi3_chat", "internlm2_chat"})


def codebase(name: str, family: str, config: dict | None = None) -> str:
    """``"v1"`` (the "brief" grounded-caption list) or ``"v2"`` (the "detailed" list) for a model folder ``name`` of
    ``family`` with ``config.json`` ``config``: v1 for the catalog's Sa2VA-1B/4B/8B/26B, for an InternVL folder whose
    chat template only v1 releases use, and for LLaVA (upstream's evaluation question); v2 otherwise. A renamed
    Sa2VA-1B folder (qwen_chat, like the InternVL3 releases) is read as v2."""
    template = str((config or {}).get("template", "")).replace("-", "_")
    if name.lower() in V1_RELEASES or family == "llava" or (family == "internvl" and template in V1_TEMPLATES):
        return "v1"
    return "v2"


def check_task(task: str) -> None:
    """Raise :class:`~sa2va.errors.InputError` for a task that is not one of :data:`TASKS`."""
    if task not in TASKS:
        raise InputError(f"task must be one of {', '.join(repr(t) for t in TASKS)}, got {task!r}.")


def gcg_instruction(release_codebase: str = "v2") -> str:
    """The grounded-caption instruction of a release's codebase (:func:`codebase`)."""
    return GCG_BRIEF if release_codebase == "v1" else GCG_DETAILED


def task_request(task: str, prompt: str, release_codebase: str = "v2", video: bool = False) -> str:
    """The request the model is sent for ``task`` (see the module docstring); ``prompt`` is used by "segment" and
    "ask" only. Video asks for the same grounded caption as an image (upstream has no video GCG question)."""
    check_task(task)
    if task == SEGMENT:
        return as_request(prompt)
    if task == ASK:
        return prompt
    if task == DESCRIBE:
        return DESCRIBE_VIDEO if video else DESCRIBE_IMAGE
    return gcg_instruction(release_codebase)


def uses_prompt(task: str) -> bool:
    """Whether ``task`` sends the user's prompt ("segment", "ask"); the describe tasks send the release's own
    instruction."""
    check_task(task)
    return task in (SEGMENT, ASK)


def grounds(task: str) -> bool:
    """Whether ``task`` segments the [SEG] of its answers (every task but "describe")."""
    check_task(task)
    return task != DESCRIBE
