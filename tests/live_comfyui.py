"""Run the pack in a real ComfyUI over its HTTP API and check what a user meets (a maintainer's tool; pytest does not
collect it: it needs a ComfyUI checkout and a Python environment that runs it).

    python tests/live_comfyui.py --comfyui PATH [--python PYTHON] [--port 8199] [--keep DIR] [--only CHECK,...]

PYTHON (default: this interpreter) runs ComfyUI's ``main.py --cpu`` on 127.0.0.1 with ``--base-directory`` set to a
throw-away folder holding ``custom_nodes/ComfyUI-Sa2VA`` (a symlink to this checkout), tiny release-format checkpoints
under ``models/sa2va/`` (``sa2va.testing.write_checkpoint``) and the input pictures. A local fake hub
(``tests/fakehub.py``: API host plus a second CDN host, throttled) stands in for the Hugging Face hub through
``HF_ENDPOINT``; ``HF_TOKEN`` is set to a dummy secret so that where it is sent can be checked.

Each check prints one JSON line ``{"check": ..., "ok": ..., ...measurements}``; the exit status is 1 when any fails.
The checks: the pack imports and its nodes have tooltips; the example workflows are served as templates and each
runs as the user opens it (models swapped for tiny ones; ``api_prompt`` turns the UI format into a prompt); a tiny
checkpoint of every release format (:data:`FORMATS`) runs through Loader -> Segmentation; a batch of two images through Loader -> Segmentation gives outputs aligned with the batch; one prompt per line; region prompts
(and the clear error on a family without them); Cancel during generation ends the run within a second; Cancel
1 s into generation and 1 s into a full-size SAM2 image encoder ends the node within 2 s; ``/free``
releases the model (the next run loads it again) while queued runs in between reuse it; the Loader downloads a
catalog model from the throttled hub, Cancel stops it within a second keeping the partial files, the next run
resumes them (Range requests), every file ends up byte-identical, and the token never reaches the CDN host; the
Video Segmentation node runs on a short clip, with SAM2 and with SAM 3's tracker (where transformers has SAM 3); and,
where Chromium and Playwright are installed, what a user sees in the page (tests/live_browser.py: node heights, the
template cards, every example opening without missing nodes and with its values; skipped with a message elsewhere).
``--only check_templates,page`` runs only the named checks.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from fakehub import FakeHub  # noqa: E402
from live_browser import CHROMIUM, check_page  # noqa: E402

from pack import pack_module  # noqa: E402

from sa2va import testing  # noqa: E402

groups = pack_module("nodes.groups")

DOWNLOAD_NAME = "Sa2VA-Qwen3-VL-4B"
DOWNLOAD_REPO = "ByteDance/Sa2VA-Qwen3-VL-4B"
TOKEN = "hf_live_check_dummy_secret"
NODES = ("Sa2VALoader", "Sa2VASegmentation", "Sa2VARefineMask", "Sa2VAVideoSegmentation")
#: one tiny checkpoint per release format: folder name -> (family, write_checkpoint options)
FORMATS = {"tiny-qwen3": ("qwen3_vl", {}), "tiny-qwen2_5": ("qwen2_5_vl", {}), "tiny-internvl": ("internvl", {}),
           "tiny-sa2va-1b": ("internvl", {"single_file": True}), "tiny-sa2va-4b": ("internvl", {"template": "phi3_chat"}),
           "tiny-sa2va-8b": ("internvl", {"decoder": "internlm2"}),
           "tiny-sa2va-26b": ("internvl", {"decoder": "internlm2", "vision_tower": "6b"}),
           "tiny-llava": ("llava", {}), "tiny-sam3": ("qwen3_vl", {"grounding": "sam3"})}


def sam3_supported() -> bool:
    """Whether this transformers has SAM 3 (5.x): without it the SAM3 format can be neither written nor loaded (the
    pack's error for that case is tested in tests/test_sam3.py), so its checks are reported as skipped."""
    from sa2va.errors import DependencyError
    from sa2va.grounding.sam3 import sam3_model_class

    try:
        sam3_model_class()
    except DependencyError:
        return False
    return True


def formats() -> dict[str, tuple[str, dict]]:
    """:data:`FORMATS` this environment can run."""
    return {name: spec for name, spec in FORMATS.items() if spec[0] in testing.FAMILIES and
            (spec[1].get("grounding") != "sam3" or sam3_supported())}


class Comfy:
    """A ComfyUI server process and a minimal client of its HTTP API."""

    def __init__(self, url: str, process: subprocess.Popen, log: Path) -> None:
        self.url, self.process, self.log = url, process, log
        self.info: dict = {}

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=60) as response:
            return json.loads(response.read())

    def post(self, path: str, body: dict):
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                data = response.read()
        except urllib.error.HTTPError as error:  # ComfyUI explains a refused prompt in the body
            raise RuntimeError(f"POST {path}: {error.code} {error.read().decode(errors='replace')[:2000]}") from None
        return json.loads(data) if data else None

    def node(self, class_type: str, **given) -> dict:
        """An API-format node: the given inputs, every other required widget at its default."""
        spec = self.info[class_type]["input"]
        inputs = {}
        for name, entry in spec.get("required", {}).items():
            if name in given:
                continue
            kind, options = entry[0], (entry[1] if len(entry) > 1 else {})
            if isinstance(kind, list):
                inputs[name] = options.get("default", kind[0])
            elif kind == "COMBO":
                inputs[name] = options.get("default", options.get("options", [None])[0])
            elif "default" in options:
                inputs[name] = options["default"]
        inputs.update(given)
        return {"class_type": class_type, "inputs": inputs}

    def grouped(self, class_type: str) -> bool:
        """Whether the running ComfyUI shows ``class_type`` in the grouped layout (nodes/groups.py)."""
        spec = self.info.get(class_type, {}).get("input", {})
        return any(entry[0] == DYNAMIC_COMBO for section in spec.values() if isinstance(section, dict)
                   for entry in section.values())

    def server_inputs(self, prompt: dict) -> dict:
        """``prompt`` with each Segmentation / Video node written with the flat input names (the checks' own
        language) turned into the grouped layout's inputs where the running ComfyUI groups them."""
        out = {}
        for node_id, node in prompt.items():
            layout = groups.LAYOUTS.get(node.get("class_type"))
            if layout is not None and self.grouped(layout.node_id) and \
                    not any(g.name in node["inputs"] for g in layout.groups):
                node = {**node, "inputs": groups.api_inputs(layout, {**layout.defaults, **node["inputs"]})}
            out[node_id] = node
        return out

    def queue(self, prompt: dict) -> str:
        return self.post("/prompt", {"prompt": self.server_inputs(prompt), "client_id": "live-check"})["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 600) -> dict:
        end = time.time() + timeout
        while time.time() < end:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                entry = history[prompt_id]
                if entry["status"].get("status_str") in ("success", "error"):
                    return entry
            time.sleep(0.1)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s")

    def run(self, prompt: dict, timeout: float = 600) -> dict:
        return self.wait(self.queue(prompt), timeout)

    def running(self) -> bool:
        return bool(self.get("/queue")["queue_running"])

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def status_of(entry: dict) -> tuple[str, dict]:
    """(status_str, {message kind: data}) of a history entry."""
    messages = {kind: data for kind, data in entry["status"].get("messages", [])}
    return entry["status"]["status_str"], messages


def ui(entry: dict, node_id: str) -> dict:
    return entry.get("outputs", {}).get(node_id, {})


def texts(entry: dict, node_id: str) -> list[str]:
    return [str(t) for t in ui(entry, node_id).get("text", [])]


def report(name: str, ok: bool, **facts) -> bool:
    print(json.dumps({"check": name, "ok": bool(ok), **facts}, default=str), flush=True)
    return bool(ok)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------------ set-up
def picture(height: int = 240, width: int = 320) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], -1).astype(np.uint8)
    image[60:180, 80:200] = (220, 40, 40)
    return image


def prepare(base: Path) -> dict:
    """The base directory ComfyUI runs in, and the hub's files; returns the paths the checks use."""
    (base / "custom_nodes").mkdir(parents=True)
    os.symlink(ROOT, base / "custom_nodes" / "ComfyUI-Sa2VA")
    models = base / "models" / "sa2va"
    for name, (family, options) in formats().items():
        testing.write_checkpoint(models / name, family, **options)
    # a model that never says [SEG] and keeps talking: generation long enough to cancel in the middle
    testing.write_checkpoint(models / "tiny-talker", "qwen3_vl", seg_chain=False, seed=3,
                             text_size={"num_hidden_layers": 8, "hidden_size": 256, "intermediate_size": 1024})
    hub_files = testing.write_checkpoint(base.parent / "hub" / DOWNLOAD_NAME, "qwen3_vl", max_shard_bytes=4 * 2**20)
    inputs = base / "input"
    inputs.mkdir()
    Image.fromarray(picture()).save(inputs / "photo.png")
    region = np.zeros((240, 320), np.uint8)
    region[60:180, 80:200] = 255
    Image.fromarray(region).save(inputs / "region.png")
    # the example workflows' inputs: LoadImage's MASK output is 1 - alpha, so the region is the transparent part
    Image.fromarray(np.dstack([picture(), 255 - region])).save(inputs / "example.png")
    write_video(inputs / "example.mp4", [np.roll(picture(), 8 * t, axis=1) for t in range(6)])
    return {"models": models, "hub_files": hub_files, "inputs": inputs}


def write_video(path: Path, frames: list[np.ndarray], fps: int = 6) -> None:
    import av  # ComfyUI's own requirement (its video nodes)

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def start(python: str, comfyui: Path, base: Path, port: int, env: dict) -> Comfy:
    log = base / "comfyui.log"
    process = subprocess.Popen([python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
                                "--base-directory", str(base), "--disable-auto-launch"],
                               cwd=comfyui, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    comfy = Comfy(f"http://127.0.0.1:{port}", process, log)
    end = time.time() + 300
    while time.time() < end:
        if process.poll() is not None:
            raise RuntimeError(f"ComfyUI exited with {process.returncode}:\n{comfy.log_text()[-3000:]}")
        try:
            comfy.info = comfy.get("/object_info")
            return comfy
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(1)
    raise TimeoutError("ComfyUI did not answer /object_info within 300 s")


# ------------------------------------------------------------------------------------------------ checks
def check_import(comfy: Comfy) -> bool:
    missing = [n for n in NODES if n not in comfy.info]
    untipped = [f"{n}.{name}" for n in NODES if n in comfy.info
                for section in ("required", "optional") for name, entry in comfy.info[n]["input"].get(section, {})
                .items() if not (len(entry) > 1 and isinstance(entry[1], dict) and entry[1].get("tooltip"))]
    # ComfyUI's import-times table: "   0.1 seconds: <path>", or "   0.1 seconds (IMPORT FAILED): <path>"
    timing = [line for line in comfy.log_text().splitlines() if "seconds" in line and "ComfyUI-Sa2VA" in line]
    failed = not timing or any("IMPORT FAILED" in line for line in timing)
    version = comfy.get("/system_stats")["system"].get("comfyui_version")
    return report("pack imports, nodes with tooltips", not missing and not untipped and not failed,
                  comfyui=version, missing=missing, untipped=untipped)


def check_templates(comfy: Comfy) -> bool:
    templates = comfy.get("/workflow_templates")
    ours = sorted(templates.get("ComfyUI-Sa2VA", []))
    expected = sorted(p.stem for p in (ROOT / "example_workflows").glob("*.json"))
    return report("example workflows served as templates", ours == expected, templates=ours)


def segment_graph(comfy: Comfy, model: str, prompt: str, batch: int = 1, **options) -> dict:
    graph = {"1": comfy.node("LoadImage", image="photo.png"),
             "3": comfy.node("Sa2VALoader", model=model, device="cpu", dtype="fp32"),
             "4": comfy.node("Sa2VASegmentation", image=["1", 0] if batch == 1 else ["2", 0],
                             segmentation_prompt=prompt, model=["3", 0], max_new_tokens=16, **options),
             "5": comfy.node("PreviewImage", images=["4", 3]),
             "6": comfy.node("MaskToImage", mask=["4", 1]),
             "7": comfy.node("PreviewImage", images=["6", 0]),
             "8": comfy.node("PreviewAny", source=["4", 5]),
             "9": comfy.node("PreviewAny", source=["4", 4]),
             "10": comfy.node("MaskToImage", mask=["4", 0]),
             "11": comfy.node("PreviewImage", images=["10", 0])}
    if batch > 1:
        graph["2"] = comfy.node("ImageBatch", image1=["1", 0], image2=["1", 0])
    return graph


WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"
#: nodes of the page alone (no server class): skipped when a UI workflow becomes a prompt
PAGE_NODES = ("Note", "MarkdownNote")
#: nodes whose file widget is followed by the upload button's value in widgets_values
UPLOAD_NODES = ("LoadImage", "LoadImageMask", "LoadVideo")


def api_prompt(comfy: Comfy, workflow: dict) -> dict:
    """The API-format prompt of a UI-format workflow (what the frontend sends when the user presses Run): links
    become ``[node id, output slot]``, ``widgets_values`` are assigned to the node's widget inputs in order (optional
    widgets added after the workflow was saved keep their defaults). A workflow whose widget values do not line up
    with the running ComfyUI's inputs raises ValueError."""
    links = {link[0]: [str(link[1]), link[2]] for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in PAGE_NODES:
            continue
        spec = comfy.info[node["type"]]
        sections = spec["input"]
        order = spec.get("input_order") or {k: list(sections.get(k, {})) for k in ("required", "optional")}
        widgets = [name for k in ("required", "optional") for name in order.get(k, [])
                   if isinstance(sections[k][name][0], list) or sections[k][name][0] in WIDGET_TYPES]
        if node["type"] in groups.LAYOUTS and comfy.grouped(node["type"]):  # saved flat: Comfy.queue groups them
            layout = groups.LAYOUTS[node["type"]]
            widgets, order = list(layout.flat), {"required": list(layout.flat[:2])}
        values = list(node.get("widgets_values") or [])
        if node["type"] in UPLOAD_NODES:
            values = values[:1]
        required = [n for n in order.get("required", []) if n in widgets]
        # a workflow saved before an optional widget was added has no value for it: the frontend uses the default
        if not len(required) <= len(values) <= len(widgets):
            raise ValueError(f"{node['type']} (node {node['id']}): {len(values)} widget values for the widgets "
                             f"{widgets}")
        inputs = dict(zip(widgets, values))
        inputs.update({i["name"]: links[i["link"]] for i in node.get("inputs", []) if i.get("link") is not None})
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def check_example_workflows(comfy: Comfy) -> bool:
    """Every example workflow as the user opens it, with the models swapped for tiny ones and short answers."""
    results, ok = {}, True
    for path in sorted((ROOT / "example_workflows").glob("*.json")):
        try:
            prompt = api_prompt(comfy, json.loads(path.read_text()))
        except ValueError as error:
            results[path.stem], ok = str(error), False
            continue
        for node in prompt.values():
            inputs = node["inputs"]
            for name in ("model", "model_name"):
                if isinstance(inputs.get(name), str):
                    inputs[name] = "tiny-internvl" if "InternVL" in inputs[name] else "tiny-qwen3"
            if "max_new_tokens" in inputs:
                inputs["max_new_tokens"] = 16
        entry = comfy.run(prompt)
        status, messages = status_of(entry)
        previews = sum(len(v.get("images", []) or v.get("text", [])) for v in entry.get("outputs", {}).values())
        results[path.stem] = status if status == "success" else \
            messages.get("execution_error", {}).get("exception_message", status)[:200]
        ok = ok and status == "success" and previews > 0
    return report("example workflows run (tiny models)", ok, **results)


def check_batch(comfy: Comfy) -> bool:
    entry = comfy.run(segment_graph(comfy, "tiny-qwen3", "Please segment the red box.", batch=2))
    status, _ = status_of(entry)
    overlays, merged = len(ui(entry, "5").get("images", [])), len(ui(entry, "7").get("images", []))
    phrases = texts(entry, "8")
    lines = phrases[0].splitlines() if phrases else []
    ok = status == "success" and overlays == 2 and merged == 2 and [ln.split(":")[0] for ln in lines] == ["0", "1"]
    return report("batch of 2: Loader -> Segmentation -> previews", ok, status=status, overlays=overlays,
                  merged_masks=merged, phrases=lines, text=texts(entry, "9"))


def check_formats(comfy: Comfy) -> bool:
    """Loader -> Segmentation on a tiny checkpoint of every release format the pack reads."""
    results = {name: "skipped (this transformers has no SAM 3)" for name in set(FORMATS) - set(formats())}
    for name in formats():
        entry = comfy.run(segment_graph(comfy, name, "Please segment the red box."))
        status, messages = status_of(entry)
        masks = len(ui(entry, "11").get("images", []))
        results[name] = f"{status}, {masks} mask(s)" if status == "success" else \
            messages.get("execution_error", {}).get("exception_message", status)[:200]
    graph = segment_graph(comfy, "tiny-qwen3", "Please segment the red box.")
    graph["3"]["inputs"]["gpu_split"] = "auto"  # the Loader's device map (every visible device: the CPU here)
    status, messages = status_of(comfy.run(graph))
    results["tiny-qwen3 gpu_split=auto"] = status if status == "success" else \
        messages.get("execution_error", {}).get("exception_message", status)[:200]
    return report("every release format runs (tiny checkpoints)", all(r.startswith(("success", "skipped")) for r in
                                                                     results.values()), **results)


def check_prompt_per_line(comfy: Comfy) -> bool:
    entry = comfy.run(segment_graph(comfy, "tiny-qwen3", "the red box\nthe sky", prompt_per_line=True))
    status, _ = status_of(entry)
    lines = texts(entry, "8")[0].splitlines() if texts(entry, "8") else []
    masks = len(ui(entry, "11").get("images", []))
    return report("several prompts, one per line", status == "success" and masks == 2 and
                  lines == ["0: red box", "0: sky"], status=status, masks=masks, phrases=lines)


def check_regions(comfy: Comfy) -> bool:
    graph = segment_graph(comfy, "tiny-internvl", "Please segment the object similar to region1.",
                          regions=["12", 0])
    graph["12"] = comfy.node("LoadImageMask", image="region.png", channel="red")
    entry = comfy.run(graph)
    status, _ = status_of(entry)
    overlays = len(ui(entry, "5").get("images", []))
    graph = segment_graph(comfy, "tiny-qwen3", "What is in region1?", regions=["12", 0])
    graph["12"] = comfy.node("LoadImageMask", image="region.png", channel="red")
    refused, messages = status_of(comfy.run(graph))
    error = messages.get("execution_error", {})
    ok = (status == "success" and overlays == 1 and refused == "error"
          and "Region prompts need a Sa2VA-InternVL3 model" in error.get("exception_message", "")
          and error.get("node_type") == "Sa2VASegmentation")
    return report("region prompts (InternVL3), clear error elsewhere", ok, status=status, overlays=overlays,
                  other_family=refused, message=error.get("exception_message", "")[:160])


def interrupt_when(comfy: Comfy, prompt_id: str, ready, timeout: float = 300) -> float:
    """Send /interrupt once ``ready()`` holds while the prompt runs; returns the time it was sent (epoch ms)."""
    end = time.time() + timeout
    while time.time() < end and not ready():
        time.sleep(0.05)
    sent = time.time() * 1000
    comfy.post("/interrupt", {})
    return sent


class ProgressListener:
    """ComfyUI's websocket messages for one client id, collected in a thread (aiohttp: ComfyUI's own requirement)."""

    def __init__(self, comfy: Comfy, client_id: str = "live-check") -> None:
        import asyncio
        import threading

        import aiohttp

        self.messages: list[dict] = []
        url = comfy.url.replace("http://", "ws://") + f"/ws?clientId={client_id}"

        async def listen() -> None:
            async with aiohttp.ClientSession() as session, session.ws_connect(url) as socket:
                async for message in socket:
                    if message.type == aiohttp.WSMsgType.TEXT:
                        self.messages.append(json.loads(message.data))

        threading.Thread(target=lambda: asyncio.run(listen()), daemon=True).start()

    def progress(self, prompt_id: str, node: str) -> int:
        """The last progress value ComfyUI reported for ``node`` of ``prompt_id``."""
        values = [m["data"]["value"] for m in list(self.messages) if m.get("type") == "progress"
                  and m["data"].get("prompt_id") == prompt_id and str(m["data"].get("node")) == node]
        return values[-1] if values else 0


def check_cancel_generation(comfy: Comfy) -> bool:
    graph = segment_graph(comfy, "tiny-talker", "Describe the picture in detail.")
    graph["4"]["inputs"]["max_new_tokens"] = 2048
    listener = ProgressListener(comfy)
    time.sleep(0.5)
    prompt_id = comfy.queue(graph)
    # generation is under way once the token progress bar moves: cancel after 20 tokens
    started = interrupt_when(comfy, prompt_id, lambda: listener.progress(prompt_id, "4") >= 20)
    tokens = listener.progress(prompt_id, "4")
    entry = comfy.wait(prompt_id)
    status, messages = status_of(entry)
    stopped = messages.get("execution_interrupted", {}).get("timestamp")
    delay = (stopped - started) / 1000 if stopped else None
    return report("Cancel during generation", status == "error" and delay is not None and delay < 1.0
                  and 20 <= tokens < 2048, status=status, tokens_when_cancelled=tokens,
                  seconds_after_interrupt=delay)


FULL_SAM2 = "tiny-full-sam2"


def cancel_delay(comfy: Comfy, graph: dict, node: str, ready, wait: float) -> tuple[float | None, str, int]:
    """Queue ``graph``, press Cancel ``wait`` seconds after ``ready(progress of node)`` holds; returns (seconds from
    Cancel to ComfyUI's ``execution_interrupted``, status, progress when cancelled)."""
    listener = ProgressListener(comfy)
    time.sleep(0.5)
    prompt_id = comfy.queue(graph)

    def later() -> bool:
        if not ready(listener.progress(prompt_id, node)):
            return False
        time.sleep(wait)
        return True

    sent = interrupt_when(comfy, prompt_id, later)
    progress = listener.progress(prompt_id, node)
    status, messages = status_of(comfy.wait(prompt_id))
    stopped = messages.get("execution_interrupted", {}).get("timestamp")
    return ((stopped - sent) / 1000 if stopped else None), status, progress


def check_cancel_inside_encoders(comfy: Comfy) -> bool:
    """Cancel ends the node within 2 s at any moment of a CPU run with a full-size encoder (issue 27): once 1 s into
    generation (tiny-talker), then 1 s and 8 s into the image encoder of a full-size SAM2 (Hiera-L at 1024 px, a pass
    of 10-40 s on two cores; the answer is finished when the progress reaches ``max_new_tokens``). A run without Cancel
    then shows how long that encoder pass and the masks after it took, so the Cancel fell inside it."""
    models = comfy.log.parent / "models" / "sa2va"
    if not (models / FULL_SAM2).exists():
        testing.write_checkpoint(models / FULL_SAM2, "qwen3_vl", sam2="full")
    talker = segment_graph(comfy, "tiny-talker", "Describe the picture in detail.")
    talker["4"]["inputs"]["max_new_tokens"] = 2048
    in_generation, generation_status, tokens = cancel_delay(comfy, talker, "4", lambda done: done >= 1, 1.0)
    graph = segment_graph(comfy, FULL_SAM2, "Please segment the red box.")
    max_new_tokens = graph["4"]["inputs"]["max_new_tokens"]
    in_encoder, encoder_status, done = cancel_delay(comfy, graph, "4", lambda done: done >= max_new_tokens, 1.0)
    graph["4"]["inputs"]["segmentation_prompt"] = "Please segment the box."  # ComfyUI runs the node again
    later, later_status, _ = cancel_delay(comfy, graph, "4", lambda done: done >= max_new_tokens, 8.0)
    graph["4"]["inputs"]["segmentation_prompt"] = "Please segment the red square."  # a new prompt: the node runs
    listener = ProgressListener(comfy)
    time.sleep(0.5)
    prompt_id = comfy.queue(graph)
    end = time.time() + 600
    while listener.progress(prompt_id, "4") < max_new_tokens and time.time() < end:
        time.sleep(0.05)
    answered = time.time()
    status, _ = status_of(comfy.wait(prompt_id))
    encoder_seconds = time.time() - answered
    ok = (generation_status == encoder_status == "error" and status == "success" and
          in_generation is not None and in_generation < 2.0 and tokens < 2048 and
          in_encoder is not None and in_encoder < 2.0 and done == max_new_tokens and later_status == "error" and
          later is not None and later < 2.0 and encoder_seconds > 8.0 + later)
    return report("Cancel within 2 s inside generation and inside a full-size SAM2 encoder", ok,
                  seconds_after_interrupt_in_generation=in_generation, tokens_when_cancelled=tokens,
                  seconds_after_interrupt_1s_into_sam2_encoder=in_encoder,
                  seconds_after_interrupt_8s_into_sam2_encoder=later, sam2_encoder_and_masks_seconds=encoder_seconds,
                  statuses=[generation_status, encoder_status, later_status, status])


def check_free(comfy: Comfy) -> bool:
    def loads() -> int:
        return comfy.log_text().count("Loaded tiny-qwen3")

    comfy.run(segment_graph(comfy, "tiny-qwen3", "Please segment the person."))
    before = loads()
    comfy.run(segment_graph(comfy, "tiny-qwen3", "Please segment the tree."))  # a queued run reuses the model
    reused = loads() == before
    comfy.post("/free", {"unload_models": True, "free_memory": True})
    time.sleep(1.5)  # the flags are applied between prompts
    entry = comfy.run(segment_graph(comfy, "tiny-qwen3", "Please segment the car."))
    again = loads() == before + 1
    return report("/free releases the model; queued runs reuse it", reused and again and
                  status_of(entry)[0] == "success", reused=reused, loaded_again_after_free=again)


RELEASED = "Releasing Sa2VA model of a node without a loader"


def standalone_graph(comfy: Comfy, model: str, prompt: str, max_new_tokens: int = 16) -> dict:
    """LoadImage -> Sa2VA Segmentation without a Loader (node 4 loads its own model) -> preview."""
    return {"1": comfy.node("LoadImage", image="photo.png"),
            "4": comfy.node("Sa2VASegmentation", image=["1", 0], segmentation_prompt=prompt, model_name=model,
                            max_new_tokens=max_new_tokens),
            "5": comfy.node("PreviewImage", images=["4", 3])}


def plain_graph(comfy: Comfy) -> dict:
    """A workflow without any Sa2VA node."""
    return {"1": comfy.node("LoadImage", image="photo.png"), "2": comfy.node("ImageInvert", image=["1", 0]),
            "3": comfy.node("PreviewImage", images=["2", 0])}


def resident_mib(comfy: Comfy) -> float | None:
    """The ComfyUI process's resident memory (Linux), reported only: glibc need not hand freed memory back."""
    status = Path(f"/proc/{comfy.process.pid}/status")
    if not status.exists():
        return None
    line = next((ln for ln in status.read_text().splitlines() if ln.startswith("VmRSS:")), "")
    return int(line.split()[1]) / 1024 if line else None


def check_standalone_release(comfy: Comfy) -> bool:
    """Issue 27: a Segmentation node's own model (no Loader) is released when a workflow without the node is queued,
    never while a prompt runs or waits: queued while the node still runs, the release waits until the queue is idle,
    and a workflow queued behind it that holds the node again keeps (and reuses) the model."""
    def count(text: str) -> int:
        return comfy.log_text().count(text)

    def finished(prompt_id: str) -> bool:
        return prompt_id in comfy.get(f"/history/{prompt_id}")

    def queue_while_running(first: dict, *others: dict) -> tuple[list[str], bool, bool]:
        """Queue ``first``, then ``others`` once its node 4 is generating. Returns the prompt ids, whether ``first``
        still ran after the others were queued, and whether no model was released until ``first`` ended."""
        listener = ProgressListener(comfy)
        time.sleep(0.5)
        first_id, before = comfy.queue(first), count(RELEASED)
        end = time.time() + 300
        while listener.progress(first_id, "4") < 1 and time.time() < end:
            time.sleep(0.02)
        ids = [first_id] + [comfy.queue(graph) for graph in others]
        during, kept = not finished(first_id), True
        while not finished(first_id) and time.time() < end:
            kept = kept and count(RELEASED) == before
            time.sleep(0.05)
        return ids, during, kept

    first = status_of(comfy.run(standalone_graph(comfy, "tiny-qwen3", "Please segment the red box.")))[0]
    before, held_mib = count(RELEASED), resident_mib(comfy)
    plain = status_of(comfy.run(plain_graph(comfy)))[0]
    on_queue = count(RELEASED) == before + 1
    freed_mib = resident_mib(comfy)

    # a workflow without the node queued while the node runs: released once the queue is idle, not before
    talker = standalone_graph(comfy, "tiny-talker", "Describe the picture in detail.", max_new_tokens=200)
    before = count(RELEASED)
    ids, during, kept_while_running = queue_while_running(talker, plain_graph(comfy))
    statuses = [status_of(comfy.wait(i))[0] for i in ids]
    end = time.time() + 5.0
    while count(RELEASED) == before and time.time() < end:
        time.sleep(0.1)
    deferred = count(RELEASED) == before + 1

    # ... and a workflow queued behind that holds the node again: nothing released, its run reuses the model
    loading = [ln for ln in comfy.log_text().splitlines() if "Loading Sa2VA model" in ln and "tiny-talker" in ln]
    before = count(RELEASED)
    talker["4"]["inputs"]["segmentation_prompt"] = "Describe the picture."  # new inputs: ComfyUI runs the node
    again = standalone_graph(comfy, "tiny-talker", "Describe the colours.")
    ids, during_again, kept_again = queue_while_running(talker, plain_graph(comfy), again)
    statuses += [status_of(comfy.wait(i))[0] for i in ids]
    time.sleep(3.0)  # three re-checks of an idle queue
    kept_for_newest = count(RELEASED) == before
    loads = [ln for ln in comfy.log_text().splitlines() if "Loading Sa2VA model" in ln and "tiny-talker" in ln]
    reused = len(loads) == len(loading) + 1  # loaded by the first run (released above), reused by the last one
    ok = (first == plain == "success" and on_queue and during and kept_while_running and deferred and during_again
          and kept_again and kept_for_newest and reused and all(s == "success" for s in statuses))
    return report("a node's own model is released when a workflow without the node is queued (not while a prompt "
                  "runs)", ok, released_when_queued=on_queue, kept_while_the_node_ran=kept_while_running,
                  released_once_idle=deferred, kept_when_the_newest_workflow_holds_the_node=kept_for_newest,
                  reused_by_it=reused, queued_while_the_node_ran=[during, during_again], statuses=[first, plain] +
                  statuses, resident_mib_before_release=held_mib, resident_mib_after_release=freed_mib)


def check_download(comfy: Comfy, hub: FakeHub, models: Path, hub_files: Path) -> bool:
    target = models / DOWNLOAD_NAME
    graph = segment_graph(comfy, DOWNLOAD_NAME, "Please segment the red box.")
    graph["3"]["inputs"]["model"] = DOWNLOAD_NAME
    hub.delay_per_chunk = 0.2  # 64 KiB per 0.2 s per connection: a slow link
    total = sum(p.stat().st_size for p in hub_files.iterdir())

    def state() -> list[tuple[str, int, int]]:  # .part files are allocated at full size: watch their writes
        return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in target.iterdir()) \
            if target.is_dir() else []

    prompt_id = comfy.queue(graph)
    sent = interrupt_when(comfy, prompt_id, lambda: hub.cdn_bytes > total // 3)
    entry = comfy.wait(prompt_id)
    status, messages = status_of(entry)
    stopped = messages.get("execution_interrupted", {}).get("timestamp")
    delay = (stopped - sent) / 1000 if stopped else None
    fetched = hub.cdn_bytes
    kept = [name for name, _, _ in state() if name.endswith(".part")]
    before = state()
    time.sleep(1.0)
    still = state() == before  # nothing writes after the run ended
    hub.delay_per_chunk = 0.0
    resumed = comfy.run(graph)
    resumed_status = status_of(resumed)[0]
    refetched = hub.cdn_bytes - fetched
    identical = all((target / p.name).is_file() and sha256(target / p.name) == sha256(p) for p in hub_files.iterdir())
    leftovers = [p.name for p in target.iterdir() if p.name.endswith((".part", ".part.json"))]
    leaked = [path for path, _, auth, server in hub.requests if server == "cdn" and auth]
    sent_to_hub = any(auth == f"Bearer {TOKEN}" for _, _, auth, server in hub.requests if server == "hub")
    # the resumed run fetches what was missing (plus at most the unsaved tail of each range), not the whole model
    ok = (status == "error" and delay is not None and delay < 1.0 and kept and still
          and resumed_status == "success" and identical and not leftovers and not leaked and sent_to_hub
          and refetched < total - fetched // 2)
    return report("download from a throttled hub: Cancel, resume, verify, token kept on the hub", ok,
                  cancel_status=status, seconds_after_interrupt=delay, partial_files_kept=kept,
                  no_write_after_cancel=still, bytes_before_cancel=fetched, resumed=resumed_status,
                  bytes_after_resume=refetched, total_bytes=total, files_identical=identical,
                  leftovers=leftovers, token_on_cdn=len(leaked), token_on_hub=sent_to_hub)


def check_video(comfy: Comfy) -> bool:
    """The Video Segmentation node on a 6-frame clip, with SAM2 and (where transformers has it) SAM 3's tracker."""
    models = ["tiny-qwen3"] + (["tiny-sam3"] if "tiny-sam3" in formats() else [])
    return all([_video_on(comfy, name) for name in models])


def _video_on(comfy: Comfy, model: str) -> bool:
    spec = comfy.info["Sa2VAVideoSegmentation"]["input"]
    frames_input = next(n for n, e in spec["required"].items() if e[0] == "IMAGE")
    prompt_input = next(n for n, e in spec["required"].items() if e[0] == "STRING")
    model_input = next(n for section in ("required", "optional") for n, e in spec.get(section, {}).items()
                       if e[0] == "SA2VA_MODEL")
    graph = {"1": comfy.node("LoadImage", image="photo.png"),
             "2": comfy.node("RepeatImageBatch", image=["1", 0], amount=6),
             "3": comfy.node("Sa2VALoader", model=model, device="cpu", dtype="fp32"),
             "4": comfy.node("Sa2VAVideoSegmentation", **{frames_input: ["2", 0], prompt_input: "Please segment the "
                                                          "red box.", model_input: ["3", 0]}),
             "5": comfy.node("PreviewImage", images=["4", comfy.info["Sa2VAVideoSegmentation"]["output_name"]
                                                     .index("overlay")])}
    graph["4"]["inputs"]["max_new_tokens"] = 16
    entry = comfy.run(graph)
    status, messages = status_of(entry)
    frames = len(ui(entry, "5").get("images", []))
    return report(f"video segmentation on a 6-frame clip ({model})", status == "success" and frames == 6, status=status,
                  overlay_frames=frames, error=messages.get("execution_error", {}).get("exception_message"))


# ------------------------------------------------------------------ issue 24: video objects and tasks
TASKS = ["segment", "describe with masks", "describe", "ask"]


def _last_optional(comfy: Comfy, node: str) -> list[str]:
    spec = comfy.info[node]
    order = spec.get("input_order") or {k: list(spec["input"].get(k, {})) for k in ("required", "optional")}
    return order.get("optional", [])


def _grouped_inputs(comfy: Comfy, node: str) -> set[str]:
    """The names of the inputs the grouped layout's choices show."""
    return {name for section in comfy.info[node]["input"].values() if isinstance(section, dict)
            for entry in section.values() if entry[0] == DYNAMIC_COMBO
            for option in entry[1]["options"] for part in option["inputs"].values() for name in part}


def _video_graph(comfy: Comfy, prompt: str, **options) -> dict:
    outputs = comfy.info["Sa2VAVideoSegmentation"]["output_name"]
    graph = {"1": comfy.node("LoadImage", image="photo.png"),
             "2": comfy.node("RepeatImageBatch", image=["1", 0], amount=6),
             "3": comfy.node("Sa2VALoader", model="tiny-qwen3", device="cpu", dtype="fp32"),
             "4": comfy.node("Sa2VAVideoSegmentation", frames=["2", 0], prompt=prompt, model=["3", 0],
                             max_new_tokens=16, **options)}
    for node_id, name in (("5", "phrases"), ("6", "scores"), ("7", "boxes"), ("8", "text")):
        graph[node_id] = comfy.node("PreviewAny", source=["4", outputs.index(name)])
    return graph


def check_video_objects(comfy: Comfy) -> bool:
    """The video node's scores and per-frame boxes come last among its outputs and agree with its phrases; min_score
    is an optional input and drops every track at 1.0."""
    info = comfy.info["Sa2VAVideoSegmentation"]
    names, types = info["output_name"], info["output"]
    layout = names[:5] == ["masks", "merged_mask", "overlay", "text", "phrases"] and names[5:] == ["scores", "boxes"]
    entry = comfy.run(_video_graph(comfy, "Please segment the red box."))
    status, messages = status_of(entry)
    phrases = (texts(entry, "5") or [""])[0].splitlines()
    scores = (texts(entry, "6") or [""])[0].splitlines()
    boxes_text = (texts(entry, "7") or ["null"])[0]
    boxes = json.loads(boxes_text)
    per_frame = isinstance(boxes, list) and len(boxes) == 6
    objects = {record.get("object") for frame in (boxes if per_frame else []) for record in frame}
    aligned = per_frame and len(phrases) == len(scores) >= 1 and objects <= set(range(len(scores))) and \
        all({"x", "y", "width", "height", "score", "label"} <= set(r) for f in boxes for r in f)
    dropped = comfy.run(_video_graph(comfy, "Please segment the red box.", min_score=1.0))
    none = texts(dropped, "5") == ["(none)"] and texts(dropped, "6") == ["(none)"] and \
        json.loads((texts(dropped, "7") or ["null"])[0]) == [[]] * 6
    min_score = "min_score" in (_grouped_inputs(comfy, "Sa2VAVideoSegmentation") if comfy.grouped(
        "Sa2VAVideoSegmentation") else _last_optional(comfy, "Sa2VAVideoSegmentation"))
    ok = layout and min_score and status == "success" and \
        per_frame and aligned and none and status_of(dropped)[0] == "success"
    return report("video node: scores and per-frame boxes last, min_score", ok, status=status, outputs=names,
                  boxes_type=types[names.index("boxes")], scores=scores, boxes_per_frame=[len(f) for f in boxes]
                  if per_frame else boxes_text[:200], min_score_1=texts(dropped, "6"),
                  error=messages.get("execution_error", {}).get("exception_message"))


def check_tasks(comfy: Comfy) -> bool:
    """The task choice is the last optional input of both nodes, and every task runs on both (tiny model): describe
    gives text and no mask, the others succeed."""
    offered = {}
    for node in ("Sa2VASegmentation", "Sa2VAVideoSegmentation"):
        inputs = comfy.info[node]["input"]
        entry = inputs.get("optional", {}).get("task") or inputs.get("required", {}).get("task")
        options = entry[0] if entry and isinstance(entry[0], list) else (entry[1].get("options") if entry else None)
        # flat layout: optional and last (older workflows keep their widget order); grouped: shown after the model
        placed = "task" in inputs.get("required", {}) if comfy.grouped(node) else _last_optional(comfy, node)[-1] == "task"
        offered[node] = options == TASKS and placed and entry[1].get("default") == "segment"
    results, ok = {}, all(offered.values())
    for task in TASKS:
        image = comfy.run(segment_graph(comfy, "tiny-qwen3", "red box", task=task))
        video = comfy.run(_video_graph(comfy, "red box", task=task))
        image_status, video_status = status_of(image)[0], status_of(video)[0]
        results[task] = {"image": image_status, "image_phrases": texts(image, "8"), "video": video_status,
                         "video_phrases": texts(video, "5")}
        ok = ok and image_status == video_status == "success"
        if task == "describe":
            ok = ok and texts(image, "8") == ["0: (none)"] and texts(video, "5") == ["(none)"] and \
                bool((texts(image, "9") or [""])[0].strip())
    return report("task choice on both nodes: offered last, each task runs", ok, offered=offered, **results)


def check_describe_with_masks_workflow(comfy: Comfy) -> bool:
    """example_workflows/sa2va_describe_with_masks.json as the user opens it (tiny model): the task widget reaches the
    node, and the Labels preview has one line per object the Scores preview lists."""
    workflow = json.loads((ROOT / "example_workflows" / "sa2va_describe_with_masks.json").read_text())
    prompt = api_prompt(comfy, workflow)
    seg = next(k for k, n in prompt.items() if n["class_type"] == "Sa2VASegmentation")
    for node in prompt.values():
        if isinstance(node["inputs"].get("model"), str):
            node["inputs"]["model"] = "tiny-qwen3"
    prompt[seg]["inputs"]["max_new_tokens"] = 16
    entry = comfy.run(prompt)
    status, messages = status_of(entry)
    titles = {str(n["id"]): n.get("title") for n in workflow["nodes"]}
    shown = {titles[k]: texts(entry, k) for k in titles if titles[k] in ("Labels", "Scores", "Answer")}
    ok = status == "success" and prompt[seg]["inputs"].get("task") == "describe with masks" and \
        len((shown.get("Labels") or [""])[0].splitlines()) == len((shown.get("Scores") or [""])[0].splitlines())
    return report("example workflow sa2va_describe_with_masks runs", ok, status=status,
                  task=prompt[seg]["inputs"].get("task"), **shown,
                  error=messages.get("execution_error", {}).get("exception_message"))


#: the checks run on the server, in order (check_download, which needs the hub, runs last)
CHECKS = {check.__name__: check for check in (
    check_import, check_templates, check_example_workflows, check_formats, check_batch, check_prompt_per_line,
    check_regions, check_cancel_generation, check_cancel_inside_encoders, check_free, check_standalone_release,
    check_video, check_video_objects, check_tasks, check_describe_with_masks_workflow)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", type=Path, required=True, help="a ComfyUI checkout (its main.py)")
    parser.add_argument("--python", default=sys.executable, help="the Python that runs ComfyUI")
    parser.add_argument("--port", type=int, default=8199)
    parser.add_argument("--keep", type=Path, help="keep the base folder (models, log) here instead of a temp dir")
    parser.add_argument("--chromium", default=CHROMIUM, help="the Chromium the page checks drive (tests/live_browser.py)")
    parser.add_argument("--only", help="run only these checks, comma-separated: function names (e.g. "
                                       "check_standalone_release,check_download) or page (the browser checks)")
    args = parser.parse_args()
    wanted = set(args.only.split(",")) if args.only else None
    work = Path(tempfile.mkdtemp(prefix="sa2va-live-")) if args.keep is None else args.keep
    base = work / "base"
    paths = prepare(base)
    hub = FakeHub({DOWNLOAD_REPO: paths["hub_files"]})
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "SA2VA_MODELS_DIR")}
    results = []
    with hub:
        env.update(HF_ENDPOINT=hub.url, HF_TOKEN=TOKEN)
        comfy = start(args.python, args.comfyui.resolve(), base, args.port, env)
        try:
            for name, check in CHECKS.items():
                if wanted is None or name in wanted:
                    results.append(check(comfy))
            if wanted is None or "page" in wanted:
                results.extend(check_page(comfy, ROOT, report, status_of, args.chromium))
            if wanted is None or "check_download" in wanted:
                results.append(check_download(comfy, hub, paths["models"], paths["hub_files"]))
        finally:
            comfy.process.terminate()
            comfy.process.wait(timeout=30)
    print(json.dumps({"passed": sum(results), "failed": len(results) - sum(results), "log": str(comfy.log)}))
    if args.keep is None and all(results):
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
