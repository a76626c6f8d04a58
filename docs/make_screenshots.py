"""Screenshots of the example workflows in a real ComfyUI page, and the template browser's thumbnails.

    python docs/make_screenshots.py --url http://127.0.0.1:8188 [--chromium /usr/bin/chromium]

Needs a running ComfyUI with this pack installed, and Playwright (``pip install playwright``) driving a Chromium
binary (Debian: ``apt-get install chromium``). Writes docs/images/workflow_<name>.png for every workflow in
example_workflows/, and docs/images/template_browser.png when the first-run template browser opens. (The template
cards, example_workflows/<name>.jpg, are docs/make_thumbnails.py's.)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# fit every node into the free part of the page (right of the side bar, below the tabs)
FIT_GRAPH = """() => {
  const c = window.app.canvas, nodes = window.app.graph._nodes;
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  for (const n of nodes) {
    x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - 30);
    x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
  }
  const left = 90, top = 110, width = 1600 - left - 20, height = 900 - top - 20;
  const scale = Math.min(1.0, width / (x1 - x0), height / (y1 - y0));
  c.ds.scale = scale;
  c.ds.offset = [left / scale - x0, top / scale - y0];
  c.setDirty(true, true);
}"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8188")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--no-first-run", "--disable-quic"]
    (ROOT / "docs" / "images").mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, headless=True, args=flags)
        page = browser.new_page(viewport={"width": 1600, "height": 900})
        page.goto(args.url)
        page.wait_for_function("window.app && window.app.graph", timeout=60000)
        page.wait_for_timeout(3000)
        templates = page.get_by_text("ComfyUI-Sa2VA", exact=True)
        if not templates.count():  # not the first run: open the template browser as its side-bar button does
            page.evaluate("() => window.app.extensionManager.command.execute('Comfy.BrowseTemplates')")
            page.wait_for_timeout(3000)
            templates = page.get_by_text("ComfyUI-Sa2VA", exact=True)
        if templates.count():  # the first-run template browser is open: show the pack's templates
            templates.first.click()
            page.wait_for_timeout(1500)
            page.screenshot(path=str(ROOT / "docs" / "images" / "template_browser.png"))
            close = page.locator(".p-dialog-close-button, button[aria-label='Close']")
            if close.count():
                close.first.click()
            else:
                page.keyboard.press("Escape")
            page.wait_for_timeout(800)
        for workflow in sorted((ROOT / "example_workflows").glob("*.json")):
            data = json.loads(workflow.read_text())
            page.evaluate("async (g) => { await window.app.loadGraphData(g); }", data)
            page.wait_for_timeout(1500)
            page.evaluate(FIT_GRAPH)
            page.wait_for_timeout(800)
            png = ROOT / "docs" / "images" / f"workflow_{workflow.stem}.png"
            page.screenshot(path=str(png))
            print(png)
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
