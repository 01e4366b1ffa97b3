"""The heatmap viewer in the host's front end (headless Chromium): the example workflow is loaded and
queued from the page, and the viewer's canvas changes when the word, the frame, or playback changes it."""
import pytest
from test_frontend import bring_into_view, load_example, node_element_shown

pytestmark = pytest.mark.browser

FIND_VIEWER = """() => {
    const node = window.app.graph._nodes.find((n) => n.type === "TA_AttentionHeatmaps");
    const box = node.widgets.find((w) => w.name === "heatmap_viewer").element;
    return box;
}"""
SNAPSHOT = f"""() => {{
    const box = ({FIND_VIEWER})();
    const canvas = box.querySelector("canvas");
    const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    let hash = 0;
    for (let i = 0; i < data.length; i += 1) hash = (hash * 31 + data[i]) >>> 0;
    return {{ hash, width: canvas.width, height: canvas.height, word: canvas.dataset.word,
              frame: canvas.dataset.frame, words: [...box.querySelectorAll("option")].map((o) => o.textContent) }};
}}"""


def drive(page, selector, value, event):
    page.evaluate(f"""([value]) => {{
        const el = ({FIND_VIEWER})().querySelector("{selector}");
        el.value = value;
        el.dispatchEvent(new Event("{event}"));
    }}""", [value])
    return page.evaluate(SNAPSHOT)


def test_viewer_switches_words_scrubs_frames_and_plays(page, live_server, clips):
    load_example(page, live_server, clips["bikes.mp4"], "attention_heatmaps.json",
                 [["CheckpointLoaderSimple", "ckpt_name", "ta_tiny_sd15.safetensors"],
                  ["TA_LoadVideo", "frame_load_cap", 4], ["TA_AttentionHeatmaps", "seed", 7]])
    page.evaluate("""async () => {
        for (const type of ["TA_SaveVideo", "SaveImage"]) {
            window.app.graph._nodes.filter((n) => n.type === type).forEach((n, i) => {
                n.widgets.find((w) => w.name === "filename_prefix").value = `browser/heatmap_${type}_${i}`;
            });
        }
        await window.app.queuePrompt(0, 1);
    }""")
    page.wait_for_function(f"() => ({FIND_VIEWER})().querySelector('canvas').dataset.ready", timeout=180000)

    first = page.evaluate(SNAPSHOT)
    bring_into_view(page, "TA_AttentionHeatmaps")  # on screen in this renderer, inside the node
    shown = node_element_shown(page, "TA_AttentionHeatmaps", "(node) => node.widgets.find((w) => w.name === 'heatmap_viewer').element.querySelector('canvas')")
    assert shown["shown"], f"the viewer is not on screen in the {page.renderer} renderer: {shown['why']}"
    assert first["words"] == ["man", "bike", "street"] and first["word"] == "0" and first["frame"] == "0"
    assert first["width"] == 256 and first["height"] == 112

    other_word = drive(page, "select", "2", "change")
    assert other_word["word"] == "2" and other_word["hash"] != first["hash"]
    other_frame = drive(page, "input[type=range]", "3", "input")
    assert other_frame["frame"] == "3" and other_frame["hash"] != other_word["hash"]

    page.evaluate(f"() => ({FIND_VIEWER})().querySelector('button').click()")
    page.wait_for_function(f"() => ({FIND_VIEWER})().querySelector('canvas').dataset.frame !== '3'", timeout=5000)
    played = page.evaluate(SNAPSHOT)
    page.evaluate(f"() => ({FIND_VIEWER})().querySelector('button').click()")
    assert played["hash"] != other_frame["hash"]
    assert not [e for e in page.errors if "heatmap" in e.lower()], page.errors
