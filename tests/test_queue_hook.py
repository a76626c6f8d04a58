"""The prompt hook that releases the nodes' own models when a workflow without their nodes is queued
(nodes/queue_hook.py), on plain prompt bodies and a stand-in for ComfyUI's server and queue. A real ComfyUI runs it in
tests/live_comfyui.py (check_standalone_release)."""
import threading
import types
import weakref
from contextlib import contextmanager

import pytest
from pack import pack_module

comfy = pack_module("nodes.comfy")
common = pack_module("nodes.common")
queue_hook = pack_module("nodes.queue_hook")


def seg(model=None, cls="Sa2VASegmentation") -> dict:
    inputs = {"segmentation_prompt": "cat", "model_name": "m"}
    if model is not None:
        inputs["model"] = model
    return {"class_type": cls, "inputs": inputs}


def body(**nodes) -> dict:
    """A ``POST /prompt`` body whose API prompt holds ``nodes`` (node id -> node; ids given as n4, n7, ...)."""
    return {"prompt": {k.lstrip("n"): v for k, v in nodes.items()}, "client_id": "test"}


class Model:
    def __init__(self, name: str, released: list) -> None:
        self.name, self.released = name, released

    def release_vram(self) -> None:
        self.released.append(self.name)


@pytest.fixture
def slot():
    """A slot holding node 4's model A and node 7's model B."""
    slot, released = common.ModelSlot("test model"), []
    slot.get("A", lambda: Model("A", released), user="4")
    slot.get("B", lambda: Model("B", released), user="7")
    slot.released = released
    return slot


@pytest.fixture
def queue(monkeypatch):
    """ComfyUI's queue as the bridge sees it: ``busy`` until a test empties it; callbacks scheduled, not run."""
    state = types.SimpleNamespace(busy=False, scheduled=[])

    @contextmanager
    def held_queue():
        yield not state.busy

    monkeypatch.setattr(comfy, "held_queue", held_queue)
    monkeypatch.setattr(comfy, "call_later", lambda seconds, callback: state.scheduled.append(callback) or True)
    return state


@pytest.mark.parametrize("given, users", [
    (body(n4=seg(), n5=seg(model=["3", 0]), n7=seg(cls="Sa2VAVideoSegmentation"), n3={"class_type": "Sa2VALoader"},
          n9={"class_type": "PreviewImage", "inputs": {}}), {"4", "7"}),
    (body(n1={"class_type": "LoadImage", "inputs": {"image": "x.png"}}), set()),
    # what ComfyUI would refuse or does not check before the hook: skipped, never an error
    (body(n4={"class_type": "Sa2VASegmentation"}, n5={"class_type": "Sa2VASegmentation", "inputs": None},
          n6="not a node", n7={"class_type": ["list"], "inputs": {}}, n8={"inputs": {"model": "x"}}), {"4", "5"}),
    ({"prompt": {}}, set()),
    ({"client_id": "no prompt"}, None), ({"prompt": "text"}, None), ({"prompt": ["4"]}, None), ([], None),
    (None, None), ("text", None),
])
def test_queued_users_are_the_segmentation_and_video_nodes_without_a_loader(given, users):
    assert queue_hook.queued_users(given) == users


def test_idle_queue_releases_the_models_of_nodes_the_queued_workflow_no_longer_holds(slot, queue):
    hook = queue_hook.ReleaseOnQueue(slot)
    b = weakref.ref(slot.values["B"])
    hook(body(n4=seg(), n1={"class_type": "LoadImage", "inputs": {}}))
    assert list(slot.values) == ["A"] and slot.released == ["B"] and b() is None, "B's memory is freed"
    hook(body(n4=seg(model=["3", 0]), n3={"class_type": "Sa2VALoader", "inputs": {}}))  # a Loader connected now
    assert slot.empty and slot.released == ["B", "A"] and not queue.scheduled


def test_busy_queue_defers_the_release_until_idle_and_follows_the_newest_workflow(slot, queue):
    hook = queue_hook.ReleaseOnQueue(slot)
    queue.busy = True  # the workflow that loaded A and B still runs
    hook(body(n1={"class_type": "LoadImage", "inputs": {}}))
    assert slot.released == [] and len(queue.scheduled) == 1
    hook(body(n7=seg(cls="Sa2VAVideoSegmentation")))  # queued behind it: node 7 is back
    assert slot.released == [] and len(queue.scheduled) == 1, "one pending check, not one per prompt"
    queue.scheduled.pop()()  # still busy: look again later
    assert slot.released == [] and len(queue.scheduled) == 1
    queue.busy = False
    queue.scheduled.pop()()
    assert list(slot.values) == ["B"] and slot.released == ["A"] and not queue.scheduled


def test_nothing_is_scheduled_while_the_slot_is_empty_or_for_a_body_without_a_prompt(queue):
    hook = queue_hook.ReleaseOnQueue(common.ModelSlot("test model"))
    queue.busy = True
    hook(body(n1={"class_type": "LoadImage", "inputs": {}}))
    hook({"no": "prompt"})
    assert not queue.scheduled


def fake_server(tasks: int):
    """ComfyUI's PromptServer.instance as the bridge uses it (ComfyUI 0.3.64 and 0.8 have these names)."""
    queue = types.SimpleNamespace(mutex=threading.RLock(), get_tasks_remaining=lambda: tasks)
    handlers, later = [], []
    loop = types.SimpleNamespace(call_later=lambda seconds, callback: later.append((seconds, callback)))
    return types.SimpleNamespace(add_on_prompt_handler=handlers.append, prompt_queue=queue, loop=loop,
                                 handlers=handlers, later=later)


def test_bridge_registers_a_handler_that_hands_comfyui_the_body_unchanged(slot, monkeypatch):
    server = fake_server(tasks=0)
    monkeypatch.setattr(comfy, "_prompt_server", lambda: server)
    assert queue_hook.install(slot)
    (handler,) = server.handlers
    for garbage in (None, [], {"prompt": "text"}, {"prompt": {"4": {"class_type": "Sa2VASegmentation",
                                                                      "inputs": 5}, "7": None}}):
        assert handler(garbage) is garbage
    assert list(slot.values) == ["A"], "node 4 is still in the last prompt, node 7 is not"
    queued = body(n1={"class_type": "LoadImage", "inputs": {}})
    assert handler(queued) is queued and queued == body(n1={"class_type": "LoadImage", "inputs": {}})
    assert slot.empty and not server.later


def test_bridge_sees_running_and_waiting_prompts_and_holds_the_queue_lock(slot, monkeypatch):
    server = fake_server(tasks=2)
    monkeypatch.setattr(comfy, "_prompt_server", lambda: server)
    with comfy.held_queue() as idle:
        locked_elsewhere = []
        thread = threading.Thread(target=lambda: locked_elsewhere.append(server.prompt_queue.mutex.acquire(False)))
        thread.start()
        thread.join()
    assert idle is False and locked_elsewhere == [False], "no prompt can start while the hook decides"
    assert queue_hook.install(slot)
    server.handlers[0](body(n1={"class_type": "LoadImage", "inputs": {}}))
    assert len(slot.values) == 2 and [s for s, _ in server.later] == [queue_hook.RECHECK_S]


def test_outside_comfyui_nothing_is_registered_and_the_queue_is_always_idle():
    assert comfy.on_prompt(lambda body: None) is False
    assert comfy.call_later(1.0, lambda: None) is False
    with comfy.held_queue() as idle:
        assert idle is True


def test_a_comfyui_without_the_queue_lock_is_never_idle(monkeypatch):
    server = types.SimpleNamespace(add_on_prompt_handler=lambda h: None, prompt_queue=object(), loop=None)
    monkeypatch.setattr(comfy, "_prompt_server", lambda: server)
    monkeypatch.setattr(comfy, "IN_COMFY", True)
    assert comfy.on_prompt(lambda body: None) is False
    with comfy.held_queue() as idle:
        assert idle is False


def test_a_running_node_keeps_the_models_of_nodes_in_workflows_waiting_in_the_queue(monkeypatch):
    """The nodes' own rule when they run (standalone.handle_for): a workflow waiting behind the running one still
    holds node 4, so node 4's model stays; node 9 is in neither and its model goes."""
    standalone = pack_module("nodes.standalone")
    monkeypatch.setattr(standalone, "MODEL_SLOT", common.ModelSlot("test model"))
    slot, released = standalone.MODEL_SLOT, []
    slot.get("A", lambda: Model("A", released), user="4")
    slot.get("C", lambda: Model("C", released), user="9")
    monkeypatch.setattr(comfy, "waiting_prompts", lambda: [body(n4=seg())["prompt"]])
    loader_model = object()
    running = body(n7=seg(model=["3", 0]), n3={"class_type": "Sa2VALoader", "inputs": {}})["prompt"]
    assert standalone.handle_for(loader_model, "m", node_id="7", prompt=running) is loader_model
    assert list(slot.values) == ["A"] and released == ["C"]
    monkeypatch.setattr(comfy, "waiting_prompts", list)
    standalone.handle_for(loader_model, "m", node_id="7", prompt=running)
    assert slot.empty and released == ["C", "A"]


def test_waiting_prompts_are_the_third_item_of_each_queue_entry(monkeypatch):
    waiting = [(1, "id-1", {"4": seg()}, {}, ["5"], {}), (2, "id-2", {"9": seg()}, {}, ["5"])]  # 0.8, 0.3.64
    queue = types.SimpleNamespace(get_current_queue_volatile=lambda: ([(0, "running", {"7": seg()}, {}, [])],
                                                                      waiting))
    monkeypatch.setattr(comfy, "_prompt_server", lambda: types.SimpleNamespace(prompt_queue=queue))
    assert comfy.waiting_prompts() == [{"4": seg()}, {"9": seg()}]
    monkeypatch.setattr(comfy, "_prompt_server", lambda: None)
    assert comfy.waiting_prompts() == []
