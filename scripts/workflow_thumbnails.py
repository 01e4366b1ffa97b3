"""Write a same-name .jpg thumbnail for every example workflow (newer ComfyUI shows them in its
template browser): each workflow is loaded in the host's own front end in headless Chromium and the
canvas is captured.

    python3 scripts/ta.py run scripts/workflow_thumbnails.py      (with chromium; use the newest host:
                                                                  TA_HOST_ARCHIVE=... or COMFYUI_PATH=...)
"""
import io
import json
import os
import shutil
import sys
import tempfile

from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from comfy_client import ComfyServer, load_manifest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


# Newer front ends draw a minimap over the canvas and draw zoomed-out nodes as blank boxes: hide the
# one and turn off the other for the pictures (settings the 2024 front end lacks are skipped).
HIDE_CHROME = """async () => {
    const settings = {"Comfy.Minimap.Visible": false, "LiteGraph.Canvas.MinFontSizeForLOD": 0};
    for (const [id, value] of Object.entries(settings)) {
        try { await window.app.extensionManager.setting.set(id, value); } catch (e) {}
    }
}"""


def main():
    from playwright.sync_api import sync_playwright
    manifest = load_manifest()
    folder = os.path.join(REPO, "example_workflows")
    names = sorted(n for n in os.listdir(folder) if n.endswith(".json"))
    with tempfile.TemporaryDirectory() as work:
        server = ComfyServer(manifest["python"], manifest["comfyui"], work,
                             extra_model_paths=manifest["extra_model_paths"]).start()
        chromium = shutil.which("chromium")
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, args=FLAGS)
                page = browser.new_page(viewport={"width": 1600, "height": 1000})
                page.goto(server.url)
                page.wait_for_function("() => window.app && window.app.graph", timeout=60000)
                page.evaluate(HIDE_CHROME)
                for name in names:
                    with open(os.path.join(folder, name)) as f:
                        page.evaluate("async (wf) => { await window.app.loadGraphData(wf); }", json.load(f))
                    page.wait_for_timeout(500)
                    shot = Image.open(io.BytesIO(page.locator("canvas#graph-canvas").screenshot()))
                    shot.convert("RGB").resize((800, 500), Image.LANCZOS).save(
                        os.path.join(folder, name[:-5] + ".jpg"), quality=85)
                    print("wrote", os.path.join("example_workflows", name[:-5] + ".jpg"))
                browser.close()
        finally:
            server.stop()


if __name__ == "__main__":
    main()
