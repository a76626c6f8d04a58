"""Releasing the nodes' own models when a workflow without their nodes is queued (ComfyUI's prompt hook).

A Segmentation or Video node without a Sa2VA Loader keeps its model in :data:`~.common.MODEL_SLOT` between runs.
The nodes themselves let go of the models of nodes the queued workflow no longer holds (``handle_for``), but only
when a Sa2VA node runs; :class:`ReleaseOnQueue` applies the same rule to every prompt queued, whatever its nodes.

When: only while ComfyUI's queue is idle (no prompt running or waiting), with the queue's lock held so that no prompt
starts meanwhile. ComfyUI runs prompts on its worker thread, and neither the slot nor ComfyUI's memory manager may be
changed from another thread while it does; so while a prompt runs or waits the release waits too
(:meth:`ReleaseOnQueue.check` looks again every :data:`RECHECK_S` seconds on the server's event loop), and when the
queue is idle it follows the newest workflow queued by then. A model is thus never released while a prompt that may
use it runs or waits, and never when the newest workflow still holds its node.
"""
from __future__ import annotations

import logging

from . import comfy
from .common import ModelSlot
from .standalone import standalone_users

logger = logging.getLogger(__name__)

#: how often a release waiting for a busy queue looks again (seconds)
RECHECK_S = 1.0


def queued_users(body: object) -> set[str] | None:
    """The Segmentation / Video nodes without a loader in the body of a ``POST /prompt`` (``{"prompt": {...}}``);
    None for a body without an API prompt (ComfyUI refuses it, so it changes nothing)."""
    prompt = body.get("prompt") if isinstance(body, dict) else None
    return standalone_users(prompt) if isinstance(prompt, dict) else None


class ReleaseOnQueue:
    """The prompt hook (:func:`.comfy.on_prompt`): remembers the newest queued workflow's Segmentation / Video nodes
    without a loader and, once the queue is idle, releases the models of every other node from ``slot``
    (:meth:`ModelSlot.keep_only`, the rule the nodes apply when they run). Never raises: a body it cannot read is
    ignored."""

    def __init__(self, slot: ModelSlot, recheck_s: float = RECHECK_S) -> None:
        self.slot = slot
        self.recheck_s = recheck_s
        self.newest: set[str] | None = None
        self.waiting = False

    def __call__(self, body: object) -> None:
        users = queued_users(body)
        if users is None:
            return
        self.newest = users
        if not self.waiting:
            self.check()

    def check(self) -> None:
        """Release now if the queue is idle, else look again in ``recheck_s`` seconds (while the slot holds any
        model)."""
        self.waiting = False
        if self.newest is None or self.slot.empty:
            return
        with comfy.held_queue() as idle:
            if idle:
                self.slot.keep_only(self.newest)
                return
        logger.debug("A prompt is running: the models of nodes the queued workflow no longer holds are released "
                     "once the queue is idle")
        self.waiting = comfy.call_later(self.recheck_s, self.check)


def install(slot: ModelSlot) -> bool:
    """Register :class:`ReleaseOnQueue` for ``slot`` with ComfyUI (False outside ComfyUI or without the hook: the
    nodes still release unused models when they run)."""
    installed = comfy.on_prompt(ReleaseOnQueue(slot))
    if not installed and comfy.IN_COMFY:
        logger.info("ComfyUI-Sa2VA: this ComfyUI has no prompt hook; the model of a deleted Sa2VA node is released "
                    "when a Sa2VA node runs next")
    return installed
