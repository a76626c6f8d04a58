"""What a user sees in ComfyUI's own page (tests/live_comfyui.py runs these after its HTTP checks): Playwright drives a
headless Chromium (Debian: ``apt-get install chromium``; ``pip install playwright``; Playwright's own browser download
is not used) on the running ComfyUI, with a fresh profile.

The checks: a freshly added Segmentation / Video node's height with its defaults (at most :data:`MAX_NODE_HEIGHT`
canvas units where ComfyUI groups their inputs); every template's card picture is served and decodes; every example
opens as the template browser opens it, with no missing-node dialog, its Sa2VA nodes showing the saved values (in the
grouped layout where ComfyUI has it), and the prompt the page itself makes from it runs (models swapped for tiny ones,
short answers); a workflow saved by ComfyUI 0.8's page with the flat inputs opens with every value kept. Without
Chromium or Playwright one line says so and nothing fails.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]
#: the tallest a freshly added Segmentation or Video node may be (canvas units) where ComfyUI groups their inputs
MAX_NODE_HEIGHT = 360
PACK = "ComfyUI-Sa2VA"
SHORT_NODES = ("Sa2VASegmentation", "Sa2VAVideoSegmentation")


def unavailable(chromium: str = CHROMIUM) -> str | None:
    """Why the page cannot be opened here (no Chromium, no Playwright), or None."""
    if not (Path(chromium).exists() or shutil.which(chromium)):
        return f"no Chromium at {chromium} (Debian: apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (pip install playwright)"
    return None


def open_page(playwright, url: str, profile: str, chromium: str = CHROMIUM):
    """A page of ComfyUI at ``url`` in a fresh headless Chromium profile, once the app's graph exists."""
    context = playwright.chromium.launch_persistent_context(profile, executable_path=chromium, headless=True,
                                                            args=FLAGS, viewport={"width": 1600, "height": 900})
    page = context.new_page()
    page.goto(url)
    page.wait_for_function("window.app && window.app.graph", timeout=120000)
    page.wait_for_timeout(2000)
    return context, page


def fresh_node_sizes(page) -> dict[str, list[float]]:
    return page.evaluate("""(types) => {
      const out = {};
      for (const type of types) {
        const node = LiteGraph.createNode(type);
        window.app.graph.add(node);
        out[type] = [...node.size];
        window.app.graph.remove(node);
      }
      return out;
    }""", ["Sa2VALoader", *SHORT_NODES, "Sa2VARefineMask"])


OPEN_TEMPLATE = """async ([pack, name]) => {
  for (const key of ['Escape', 'Escape']) document.dispatchEvent(new KeyboardEvent('keydown', {key}));
  const response = await fetch(`/api/workflow_templates/${pack}/${name}.json`);
  const json = await response.json();
  await window.app.loadGraphData(json, true, true, name, {openSource: 'template'});
  await new Promise((r) => setTimeout(r, 1500));
  const dialogs = [...document.querySelectorAll('.p-dialog')].map((d) => d.innerText);
  const nodes = window.app.graph._nodes.map((n) => ({
    id: n.id, type: n.type, registered: n.type in LiteGraph.registered_node_types, errors: !!n.has_errors,
    height: n.size[1],
    widgets: (n.widgets || []).filter((w) => w.serialize !== false && w.type !== 'shim').map((w) => [w.name, w.value]),
  }));
  const prompt = (await window.app.graphToPrompt()).output;
  return {dialogs, nodes, prompt};
}"""


def expected_widgets(comfy, groups, node_type: str, saved: list) -> list | None:
    """The values a Sa2VA node saved with the flat inputs shows: the grouped values where ComfyUI groups them."""
    layout = groups.LAYOUTS.get(node_type)
    if layout is None:
        return None
    if not comfy.grouped(node_type):
        return list(saved)
    return groups.grouped_values(layout, dict(zip(layout.flat, saved)))


def tiny_prompt(comfy, groups, prompt: dict) -> dict:
    """The page's prompt with the models swapped for tiny ones and answers of at most 16 tokens."""
    out = {}
    for node_id, node in prompt.items():
        inputs = dict(node["inputs"])
        layout = groups.LAYOUTS.get(node["class_type"])
        if layout is not None and comfy.grouped(layout.node_id):
            inputs = {**layout.defaults, **groups.flat_from_api(layout, inputs)}
        for name in ("model", "model_name"):
            if isinstance(inputs.get(name), str):
                inputs[name] = "tiny-internvl" if "InternVL" in inputs[name] else "tiny-qwen3"
        if layout is not None:
            inputs["max_new_tokens"] = 16
        out[node_id] = {**node, "inputs": inputs}
    return out


def check_templates_in_page(comfy, page, groups, root: Path, report, status_of) -> bool:
    names = sorted(comfy.get("/workflow_templates").get(PACK, []))
    results, ok = {}, bool(names)
    for name in names:
        card = page.evaluate("""async (url) => {
          const image = new Image();
          image.src = url;
          try { await image.decode(); } catch (e) { return null; }
          return [image.naturalWidth, image.naturalHeight];
        }""", f"{comfy.url}/api/workflow_templates/{PACK}/{name}.jpg")
        opened = page.evaluate(OPEN_TEMPLATE, [PACK, name])
        saved = {n["id"]: n for n in json.loads((root / "example_workflows" / f"{name}.json").read_text())["nodes"]}
        missing = [n["type"] for n in opened["nodes"] if not n["registered"] or n["errors"]]
        dialog = [d[:120] for d in opened["dialogs"] if "missing" in d.lower()]
        wrong = {}
        for node in opened["nodes"]:
            expected = expected_widgets(comfy, groups, node["type"], saved[node["id"]]["widgets_values"])
            shown = [value for _, value in node["widgets"]]
            if expected is not None and shown != expected:
                wrong[node["id"]] = {"shown": shown, "expected": expected}
        entry = comfy.run(tiny_prompt(comfy, groups, opened["prompt"]))
        status, messages = status_of(entry)
        heights = {n["id"]: n["height"] for n in opened["nodes"] if n["type"] in SHORT_NODES}
        results[name] = {"card": card, "missing_nodes": missing, "missing_dialog": dialog, "wrong_values": wrong,
                         "run": status if status == "success" else
                         messages.get("execution_error", {}).get("exception_message", status)[:200],
                         "sa2va_node_heights": heights}
        ok = ok and card is not None and min(card) >= 256 and not missing and not dialog and not wrong and \
            status == "success"
    return report("templates in the page: card served, opens without missing nodes, values kept, the page's "
                  "prompt runs", ok, **results)


def check_saved_flat_workflow(comfy, page, groups, root: Path, report) -> bool:
    """A workflow saved by ComfyUI 0.8's page before the grouped layout (non-default values on every node)."""
    path = root / "tests" / "data" / "workflows" / "flat_inputs_saved_by_comfyui_0.8.json"
    workflow = json.loads(path.read_text())
    # opened, then saved by this page and opened again: the grouped layout's own saved values load as they are
    opened, reopened = page.evaluate("""async (json) => {
      const shown = () => window.app.graph._nodes.map((n) => ({id: n.id, type: n.type,
        widgets: (n.widgets || []).filter((w) => w.serialize !== false).map((w) => w.value)}));
      await window.app.loadGraphData(json, true, true, 'saved-flat');
      await new Promise((r) => setTimeout(r, 1000));
      const first = shown();
      const saved = JSON.parse(JSON.stringify(window.app.graph.serialize()));
      await window.app.loadGraphData(saved, true, true, 'saved-again');
      await new Promise((r) => setTimeout(r, 1000));
      return [first, shown()];
    }""", workflow)
    saved = {n["id"]: n for n in workflow["nodes"]}
    wrong = {}
    for node in opened:
        expected = expected_widgets(comfy, groups, node["type"], saved[node["id"]]["widgets_values"])
        if expected is not None and node["widgets"] != expected:
            wrong[node["id"]] = {"shown": node["widgets"], "expected": expected}
    changed = [n["id"] for n in reopened if n["type"] in SHORT_NODES and n not in opened]
    checked = sum(n["type"] in SHORT_NODES for n in opened)
    return report("a workflow saved with the flat inputs opens with its values, and again once saved by the page",
                  checked == 4 and not wrong and not changed, nodes=checked, wrong=wrong, changed_on_reopen=changed)


def check_page(comfy, root: Path, report, status_of, chromium: str = CHROMIUM) -> list[bool]:
    """Every check in the page; an empty list (and one line saying why) where no browser can be driven."""
    reason = unavailable(chromium)
    if reason:
        print(json.dumps({"check": "in ComfyUI's page (browser)", "skipped": reason}), flush=True)
        return []
    from pack import pack_module
    from playwright.sync_api import sync_playwright

    groups = pack_module("nodes.groups")
    profile = tempfile.mkdtemp(prefix="sa2va-chromium-")
    try:
        with sync_playwright() as playwright:
            context, page = open_page(playwright, comfy.url, profile, chromium)
            try:
                sizes = fresh_node_sizes(page)
                grouped = all(comfy.grouped(n) for n in SHORT_NODES)
                short = all(sizes[n][1] <= MAX_NODE_HEIGHT for n in SHORT_NODES) if grouped else True
                results = [report("a freshly added node's height with its defaults (canvas units)", short,
                                  grouped_layout=grouped, limit=MAX_NODE_HEIGHT if grouped else None,
                                  **{n: sizes[n] for n in sizes})]
                results.append(check_templates_in_page(comfy, page, groups, root, report, status_of))
                results.append(check_saved_flat_workflow(comfy, page, groups, root, report))
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    return results
