"""The trainer's live loss curve (js/loss_curve.js) in the host's front end (headless Chromium): the
train_adapter example workflow (tiny model, 4 small frames) is queued from the page on the live
server; the trainer's per-step "temporal_adapter.loss" events reach the node through the front
end's api, and the node draws the curve and the latest values under its widgets, on screen in
each node renderer of the front end (the Vue one never calls LiteGraph's onDrawForeground)."""
import io
import re

import pytest
from PIL import Image
from test_frontend import bring_into_view, load_example, node_element_shown

pytestmark = pytest.mark.browser

STEPS, SEED = 6, 4242  # a seed no other test uses, so the host cannot answer from its cache
CURVE_HEIGHT = 140  # HEIGHT in js/loss_curve.js
MIN_SHOWN_HEIGHT = 120  # what the 2024 front end lays a DOM widget of that height out at
COLOURS = {"total": (0xE0, 0xE0, 0xE0), "denoise": (0x4A, 0x9F, 0xE0), "temporal": (0xE0, 0x50, 0x50)}

TRAINER = "window.app.graph._nodes.find((n) => n.type === 'TA_TrainAdapter')"
CURVE = "(node) => node.widgets.find((w) => w.name === 'loss_curve').element"
# Redraws the curve's canvas (a DOM widget under the trainer's widgets, shown by both renderers) and returns
# what it holds: pixel colour counts and every text drawn, with the node's sizes and the widgets' layout.
SNAPSHOT = f"""([colours, height]) => {{
    const node = {TRAINER};
    const canvas = ({CURVE})(node);
    const texts = [];
    const fillText = CanvasRenderingContext2D.prototype.fillText;
    CanvasRenderingContext2D.prototype.fillText = function (text, ...rest) {{
        texts.push(String(text));
        return fillText.call(this, text, ...rest);
    }};
    try {{
        node.drawLossCurve();
    }} finally {{
        CanvasRenderingContext2D.prototype.fillText = fillText;
    }}
    const box = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    const counts = Object.fromEntries(Object.keys(colours).map((k) => [k, 0]));
    let background = 0;
    for (let i = 0; i < box.length; i += 4) {{
        const px = [box[i], box[i + 1], box[i + 2]];
        const near = (c) => c.every((v, j) => Math.abs(v - px[j]) <= 24);
        if (box[i + 3] > 0 && px.every((v) => Math.abs(v - 0x1b) <= 2)) background += 1;
        for (const [k, c] of Object.entries(colours)) if (box[i + 3] > 0 && near(c)) counts[k] += 1;
    }}
    // the curve's place: under every other widget (canvas renderer: the widgets' y; Vue: their elements)
    const others = node.widgets.filter((w) => w.name !== "loss_curve" && w.type !== "hidden");
    const widgetHeight = window.LiteGraph.NODE_WIDGET_HEIGHT;
    const curveWidget = node.widgets.find((w) => w.name === "loss_curve");
    const layout = {{ curveTop: curveWidget.last_y ?? curveWidget.y ?? 0,
                      widgetsBottom: Math.max(...others.map((w) => (w.last_y ?? w.y ?? 0) + widgetHeight)) }};
    const element = document.querySelector(`[data-node-id="${{node.id}}"]`);
    if (element) {{
        const bottoms = [...element.querySelectorAll("input, select, textarea, button")]
            .filter((el) => !canvas.contains(el)).map((el) => el.getBoundingClientRect().bottom);
        layout.curveTop = canvas.getBoundingClientRect().top;
        layout.widgetsBottom = Math.max(...bottoms);
    }}
    return {{ counts, background, pixels: box.length / 4, texts, size: [...node.size], min: [...node.computeSize()],
              bitmap: [canvas.width, canvas.height], laidOut: [canvas.clientWidth, canvas.clientHeight], ...layout,
              history: (node.lossHistory || []).map((r) => [r.step, r.steps, r.total, r.denoise, r.temporal]) }};
}}"""


def on_screen(page, colours):
    """The curve as the user sees it: bring the trainer into view and count, in a screenshot of the curve's
    box, the pixels of each term's colour (the canvas renderer places the DOM widget over the graph, the
    Vue renderer inside its node)."""
    bring_into_view(page, "TA_TrainAdapter")
    shown = node_element_shown(page, "TA_TrainAdapter", CURVE)
    assert shown["shown"], f"the loss curve is not on screen in the {page.renderer} renderer: {shown['why']}"
    x, y, w, h = shown["box"]
    picture = Image.open(io.BytesIO(page.screenshot(clip={"x": x, "y": y, "width": w, "height": h}))).convert("RGB")
    data = picture.tobytes()
    pixels = [data[i:i + 3] for i in range(0, len(data), 3)]
    return {k: sum(all(abs(p[j] - c[j]) <= 24 for j in range(3)) for p in pixels) for k, c in colours.items()}


OLD_HEIGHT = 300  # a trainer node saved by an older version of the workflow, before the curve had room


def queue(page, live_server, steps):
    """Queue the loaded workflow from the page with `steps` training steps; return once the trainer's
    last loss event has reached the node and the whole prompt (the save nodes too) has finished."""
    page.evaluate(f"""async (steps) => {{
        const node = {TRAINER};
        node.widgets.find((w) => w.name === "steps").value = steps;
        await window.app.queuePrompt(0, 1);
    }}""", steps)
    page.wait_for_function(f"""(steps) => {{
        const history = {TRAINER}.lossHistory;
        return history && history.length === steps && history.at(-1).step === steps;
    }}""", arg=steps, timeout=300000)
    live_server.wait_idle(timeout=300)


def test_the_trainer_node_draws_the_streamed_loss_curve(page, live_server, clips):
    load_example(page, live_server, clips["carphone_pristine.mp4"], "train_adapter.json", [
        ["CheckpointLoaderSimple", "ckpt_name", "ta_tiny_sd15.safetensors"], ["TA_LoadVideo", "frame_load_cap", 4],
        ["TA_LoadVideo", "custom_width", 64], ["TA_TrainAdapter", "seed", SEED],
        ["TA_TrainAdapter", "frames_per_step", 2], ["TA_SaveAdapter", "filename_prefix", "browser_loss_curve"],
        ["SaveImage", "filename_prefix", "browser/loss_curve"]])
    page.evaluate(f"(h) => {{ const node = {TRAINER}; node.setSize([node.size[0], h]); }}", OLD_HEIGHT)
    before = page.evaluate(SNAPSHOT, [COLOURS, CURVE_HEIGHT])
    assert not before["history"] and before["background"] == 0
    assert not any(on_screen(page, COLOURS).values())
    assert not [t for t in before["texts"] if t.startswith("step ")]

    queue(page, live_server, STEPS)
    after = page.evaluate(SNAPSHOT, [COLOURS, CURVE_HEIGHT])
    print(f"\ncurve box {after['pixels']} px: background {after['background']}, line pixels {after['counts']}; "
          f"texts {[t for t in after['texts'] if re.match(r'(total|denoise|temporal|step) ', t)]}")
    history = after["history"]
    assert [r[0] for r in history] == list(range(1, STEPS + 1)) and {r[1] for r in history} == {STEPS}
    assert all(v > 0 for r in history for v in r[2:])
    # The node grew tall enough for its widgets and the curve under them (the size it was given is
    # not), and the curve is drawn there: mostly its background, with every term's line.
    assert after["size"][1] >= after["min"][1] > OLD_HEIGHT and after["widgetsBottom"] <= after["curveTop"]
    # drawn at the size the renderer lays the canvas out at (the Vue nodes stretch it, the 2024 front end
    # gives a DOM widget 120 px), never scaled
    assert after["bitmap"] == after["laidOut"] and after["laidOut"][1] >= MIN_SHOWN_HEIGHT, after
    assert after["background"] > 0.5 * after["pixels"]
    assert all(count >= 20 for count in after["counts"].values()), after["counts"]
    shown = {t.split()[0]: float(t.split()[1]) for t in after["texts"]
             if re.fullmatch(r"(total|denoise|temporal) \S+", t)}
    for key, value in zip(("total", "denoise", "temporal"), history[-1][2:]):
        assert abs(shown[key] - value) <= 1e-3 * value, (key, value, shown)
    assert f"step {STEPS}/{STEPS}" in after["texts"]
    # and it is on screen, in this renderer: each term's line (the total's, drawn first, lies mostly under
    # the denoise line: its label and the rest of its line are what shows of it)
    seen = on_screen(page, COLOURS)
    print(f"on screen ({page.renderer} renderer): {seen}")
    assert seen["denoise"] >= 20 and seen["temporal"] >= 10 and seen["total"] >= 5, seen

    # The values are the trainer's own: its output text gives the first and last total loss.
    entries = [e for e in live_server.get("/history").values()
               if e["prompt"][2].get("5", {}).get("inputs", {}).get("seed") == SEED]
    summary = entries[-1]["outputs"]["5"]["text"][0]
    first, last_total = (float(v) for v in re.match(r"\d+ steps; loss (\S+) -> (\S+)", summary).groups())
    assert abs(first - history[0][2]) <= 1e-4 * first and abs(last_total - history[-1][2]) <= 1e-4 * last_total

    # A new run starts a new curve (the history restarts at step 1).
    queue(page, live_server, STEPS - 2)
    again = page.evaluate(SNAPSHOT, [COLOURS, CURVE_HEIGHT])
    assert [r[0] for r in again["history"]] == list(range(1, STEPS - 1))
    assert f"step {STEPS - 2}/{STEPS - 2}" in again["texts"]
    # A node taller than it needs (a workflow saved at a larger size): the Vue nodes stretch the curve's
    # element to fill it, and the curve is drawn at that size, not scaled up from its own
    page.evaluate(f"(extra) => {{ const node = {TRAINER}; node.setSize([node.size[0], node.computeSize()[1] + extra]);"
                  " node.setDirtyCanvas(true, true); }", 200)
    page.wait_for_timeout(500)
    tall = page.evaluate(SNAPSHOT, [COLOURS, CURVE_HEIGHT])
    assert tall["bitmap"] == tall["laidOut"] and tall["laidOut"][1] >= MIN_SHOWN_HEIGHT, tall
    assert not [e for e in page.errors if "loss" in e.lower()], page.errors
