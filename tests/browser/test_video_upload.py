"""The loader's upload button and preview (js/video_upload.js) and the saver's animated preview in the
host's front end (headless Chromium): a clip chosen through the button's file input is uploaded to
the input folder, becomes the loader's choice and plays in the node; a queued run then shows the
saved clip's preview in the saver."""
import os

import pytest
from test_frontend import bring_into_view, load_example, node_element_shown

pytestmark = pytest.mark.browser

LOADER = "window.app.graph._nodes.find((n) => n.type === 'TA_LoadVideo')"
SAVER = "window.app.graph._nodes.find((n) => n.type === 'TA_SaveVideo')"
VIDEO = "(node) => node.widgets.find((w) => w.name === 'video_preview').element.querySelector('video')"
PREVIEW = f"""() => {{
    const node = {LOADER};
    const box = node.widgets.find((w) => w.name === "video_preview").element;
    const video = box.querySelector("video");
    return {{ value: node.widgets.find((w) => w.name === "video").value, src: video.getAttribute("src") || "",
              ready: video.readyState, width: video.videoWidth, height: video.videoHeight,
              shown: video.style.display !== "none", nodeHeight: node.size[1] }};
}}"""


def test_upload_button_preview_and_saver_preview(page, live_server, clips, tmp_path):
    load_example(page, live_server, clips["carphone_pristine.mp4"], "load_and_save.json",
                 [["TA_LoadVideo", "frame_load_cap", 3], ["TA_LoadVideo", "custom_width", 64],
                  ["TA_SaveVideo", "filename_prefix", "browser/upload"]])
    # The button opens the loader's file input (counted, not opened: a headless page has no dialog).
    clicked = page.evaluate(f"""() => {{
        const node = {LOADER};
        const button = node.widgets.find((w) => w.type === "button");
        let count = 0;
        const click = HTMLInputElement.prototype.click;
        HTMLInputElement.prototype.click = function () {{ if (this.type === "file") count += 1; }};
        try {{ button.callback(); }} finally {{ HTMLInputElement.prototype.click = click; }}
        return {{ label: button.label || button.name, count }};
    }}""")
    assert clicked == {"label": "choose video to upload", "count": 1}

    upload = tmp_path / "my clip.mp4"  # a name with a space, as users' files have
    upload.write_bytes(open(clips["carphone_pristine.mp4"], "rb").read())
    page.locator("input[type=file][accept*='video']").last.set_input_files(str(upload))
    # The workflow's own clip may already be playing: wait for the uploaded one, not any preview.
    page.wait_for_function(f"""() => {{
        const preview = ({PREVIEW})();
        return preview.value === "my clip.mp4" && preview.src.includes("my+clip.mp4") && preview.ready >= 1;
    }}""", timeout=60000)
    preview = page.evaluate(PREVIEW)
    assert preview["value"] == "my clip.mp4" and os.path.exists(os.path.join(live_server.input_dir, "my clip.mp4"))
    assert preview["shown"] and "filename=my+clip.mp4" in preview["src"] and "type=input" in preview["src"]
    assert preview["height"] == 144 and preview["width"] > 0  # the uploaded clip plays in the node
    bring_into_view(page, "TA_LoadVideo")  # and is on screen in this renderer, inside the loader
    shown = node_element_shown(page, "TA_LoadVideo", VIDEO)
    assert shown["shown"], f"the preview is not on screen in the {page.renderer} renderer: {shown['why']}"
    if page.renderer == "vue":  # the button is an element of the Vue node: a real click opens the file input
        button = f"[data-node-id='{page.evaluate(f'() => String({LOADER}.id)')}'] button:has-text('choose video to upload')"
        page.evaluate("""() => {
            window.__fileInputClicks = 0;
            const click = HTMLInputElement.prototype.click;
            HTMLInputElement.prototype.click = function () {
                if (this.type === "file") window.__fileInputClicks += 1; else click.call(this);
            };
        }""")
        page.locator(button).click()
        assert page.evaluate("() => window.__fileInputClicks") == 1

    # a choice whose file is not in the input folder (a shared workflow's clip) shows no preview
    missing = page.evaluate(f"""async () => {{
        const node = {LOADER};
        node.widgets.find((w) => w.name === "video").callback("not_in_the_input_folder.mp4");
        await new Promise((resolve) => setTimeout(resolve, 2000));
        return ({PREVIEW})();
    }}""")
    assert not missing["shown"] and missing["ready"] == 0, missing
    page.evaluate(f"() => {LOADER}.widgets.find((w) => w.name === 'video').callback('my clip.mp4')")
    page.wait_for_function(f"() => ({PREVIEW})().ready >= 1", timeout=60000)

    page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
    live_server.wait_idle(timeout=300)
    page.wait_for_function(f"""() => {{
        const out = window.app.nodeOutputs?.[{SAVER}.id] ?? {SAVER}.images;
        return out && (out.images ?? out).length > 0;
    }}""", timeout=60000)
    shown = page.evaluate(f"""async () => {{
        const node = {SAVER};
        const out = window.app.nodeOutputs?.[node.id] ?? {{ images: node.images }};
        const image = out.images[0];
        const params = new URLSearchParams({{ filename: image.filename, subfolder: image.subfolder, type: image.type }});
        const response = await fetch(`/view?${{params}}`);
        return {{ image, animated: out.animated, status: response.status, bytes: (await response.arrayBuffer()).byteLength }};
    }}""")
    assert shown["image"]["filename"].endswith(".webp") and shown["image"]["subfolder"] == "browser"
    assert shown["status"] == 200 and shown["bytes"] > 0 and shown["animated"] in ([True], True)
    assert not [e for e in page.errors if "upload" in e.lower() or "TemporalAdapter" in e], page.errors
