"""Write a same-name .jpg thumbnail for every example workflow (newer ComfyUI shows them in its
template browser): each workflow is loaded in the host's own front end in headless Chromium and the
canvas is captured.

    TA_FRONT_END=1.58.1 python3 scripts/ta.py run scripts/workflow_thumbnails.py
        (with chromium; the newest front end, served by a host that has --front-end-root:
        TA_HOST_ARCHIVE=... or COMFYUI_PATH=...; the committed pictures are 1.58.1's on ComfyUI 0.33.0)
"""
import io
import json
import os
import sys
import tempfile

from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from comfy_client import ComfyServer, front_end_page, front_end_root, load_manifest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Settings of the pictures' user folder (the 0.8.0 front end's; the 2024 one has none of them and keeps
# its user folder in its own tree): no minimap drawn over the canvas, zoomed-out nodes drawn in full
# rather than as blank boxes, and no template browser opened over the canvas as for a new user.
SETTINGS = {"Comfy.Minimap.Visible": False, "LiteGraph.Canvas.MinFontSizeForLOD": 0, "Comfy.TutorialCompleted": True}

# Notices over the canvas (1.58.1 warns that the generated test checkpoints' names are missing here): hidden
HIDE_NOTICES = """() => document.querySelectorAll('.p-toast, [role="alert"], [data-sonner-toaster], [role="status"]')
    .forEach((el) => { el.style.visibility = "hidden"; })"""


def main():
    manifest = load_manifest()
    folder = os.path.join(REPO, "example_workflows")
    names = sorted(n for n in os.listdir(folder) if n.endswith(".json"))
    with tempfile.TemporaryDirectory() as work:
        server = ComfyServer(manifest["python"], manifest["comfyui"], work,
                             extra_model_paths=manifest["extra_model_paths"], front_end_root=front_end_root(manifest))
        os.makedirs(os.path.join(server.user_dir, "default"))
        with open(os.path.join(server.user_dir, "default", "comfy.settings.json"), "w") as f:
            json.dump(SETTINGS, f)
        server.start()
        try:
            with front_end_page(server.url) as page:
                page.wait_for_timeout(2000)
                assert not page.locator(".p-dialog").count(), "a dialog covers the canvas"
                for name in names:
                    with open(os.path.join(folder, name)) as f:
                        page.evaluate("async (text) => { await window.app.loadGraphData(JSON.parse(text)); }", f.read())
                    page.wait_for_timeout(500)
                    page.evaluate(HIDE_NOTICES)
                    shot = Image.open(io.BytesIO(page.locator("canvas#graph-canvas").screenshot()))
                    shot.convert("RGB").resize((800, 500), Image.LANCZOS).save(
                        os.path.join(folder, name[:-5] + ".jpg"), quality=85)
                    print("wrote", os.path.join("example_workflows", name[:-5] + ".jpg"))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
