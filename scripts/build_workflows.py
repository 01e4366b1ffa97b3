"""Write the UI-format (drag-and-drop) example workflows from compact specs, with widget order taken
from a live host's /object_info, so the files load in the front end exactly as if saved there.

    python3 scripts/ta.py run scripts/build_workflows.py --measure   # once per host: node sizes
    (TA_FRONT_END=1.58.1 with it: measured in that front end, in both of its node renderers)
    python3 scripts/ta.py run scripts/build_workflows.py             # lay out and write the files

Each spec node: (id, class_type, {widget: value}, {input: (source_id, output_slot)}, (stage, lane)).
Widgets not named take the host's default. The files are committed; the e2e tests convert them back
with `comfy_client.ui_to_api` and run them.

Layout, as ComfyUI's own templates: the pipeline reads left to right, one titled group per stage
(load -> prompts and encode -> invert -> train -> edit -> decode and save), the analysis nodes in a
"Measure" group below, and one short note. Front ends enlarge a node on load to what its widgets
need (ComfyUI 0.8.0's more than the 2024 one), so every node is given the largest size that any
front end measured for it: `--measure` loads the files in the current host's front end (or the one
TA_FRONT_END names; headless Chromium), in each node renderer it has (the Vue nodes, seen in front ends
1.35.9, 1.49.6 and 1.58.1, lay widgets out taller), and merges what it reads into scripts/workflow_node_sizes.json.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from comfy_client import ComfyServer, WIDGET_TYPES, front_end_page, front_end_root, load_manifest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = os.path.join(REPO, "scripts", "workflow_node_sizes.json")
CKPT = "v1-5-pruned-emaonly.safetensors"  # what users have; tests substitute generated weights
SDXL_CKPT = "sd_xl_base_1.0.safetensors"

SOURCE = "a man talking on a phone in a car"
EDIT = "a man talking on a phone in a car, oil painting in the style of van gogh"

# Columns left to right, as the pipeline reads; lane 0 is the pipeline, lane 1 the analysis below it.
STAGES = {"load": "Load", "encode": "Prompts and encode", "invert": "Invert", "train": "Train the adapter",
          "reconstruct": "Reconstruct", "edit": "Edit", "save": "Decode and save"}
MEASURE = "Measure"
GAP_X, GAP_Y = 100, 40          # between columns, between stacked nodes
PAD, GROUP_TITLE = 30, 50       # a group's padding around its nodes, and its title bar
NODE_TITLE = 30                 # LiteGraph draws a node's title bar above its position
MIN_WIDTH, NOTE_SIZE = 320, [400, 170]
# Room for what a node shows: prompts to read, and previews after a run (drawn inside the node's size).
ROOM = {"CLIPTextEncode": [400, 150], "SaveImage": [320, 320], "TA_SaveVideo": [320, 380],
        "TA_AttentionHeatmaps": [400, 0]}
VIEW = (1600, 1000)  # the canvas the saved view fits (the thumbnails are taken at this size)
VIEW_MARGIN = (80, 110)  # px kept free at the left and top for the front end's side and tab bars


def video(node_id, cap=8, width=256, clip="carphone_pristine.mp4", nth=1, place=("load", 0)):
    return (node_id, "TA_LoadVideo", {"video": clip, "frame_load_cap": cap, "custom_width": width,
                                      "select_every_nth": nth}, {}, place)


def checkpoint(node_id, ckpt=CKPT):
    return (node_id, "CheckpointLoaderSimple", {"ckpt_name": ckpt}, {}, ("load", 0))


def text(node_id, prompt, clip=1):
    return (node_id, "CLIPTextEncode", {"text": prompt}, {"clip": (clip, 1)}, ("encode", 0))


def save_image(node_id, prefix, images, place):
    return (node_id, "SaveImage", {"filename_prefix": prefix}, {"images": images}, place)


def text_sdxl(node_id, prompt, clip=1):
    """SDXL's text encoders: the same prompt for CLIP-G and CLIP-L, the size/crop entries at their 1024 px
    defaults (the ADM input of the SDXL family)."""
    return (node_id, "CLIPTextEncodeSDXL", {"text_g": prompt, "text_l": prompt}, {"clip": (clip, 1)},
            ("encode", 0))


def edit_front(ckpt, encode, width):
    """load, encode, prompts (source, edit, negative), invert, train: the start of every edit workflow"""
    return [
        checkpoint(1, ckpt),
        video(2, cap=16, width=width),
        encode(3, SOURCE),
        encode(4, EDIT),
        encode(5, "blurry, low quality"),
        (6, "VAEEncode", {}, {"pixels": (2, 0), "vae": (1, 2)}, ("encode", 0)),
        (7, "TA_BilateralDDIMInversion", {"filter": "temporal", "steps": 50},
         {"model": (1, 0), "conditioning": (3, 0), "latent": (6, 0)}, ("invert", 0)),
        (8, "TA_TrainAdapter", {"steps": 200}, {"model": (1, 0), "conditioning": (3, 0), "latent": (6, 0)},
         ("train", 0)),
    ]


def edit_video(ckpt, encode, width):
    """load -> encode -> invert -> train adapter -> sample (all mechanisms on) -> decode -> save; measure
    below"""
    return edit_front(ckpt, encode, width) + [
        save_image(19, "TemporalAdapter/edit_loss_curve", (8, 1), ("train", 0)),
        (9, "TA_ConsistencySampler", {"steps": 50, "cfg": 7.5},
         {"model": (1, 0), "positive": (4, 0), "negative": (5, 0), "inversion": (7, 1), "adapter": (8, 0)},
         ("edit", 0)),
        (10, "VAEDecode", {}, {"samples": (9, 0), "vae": (1, 2)}, ("save", 0)),
        (11, "TA_SaveVideo", {"filename_prefix": "TemporalAdapter/edit"}, {"images": (10, 0), "fps": (2, 1)},
         ("save", 0)),
        # what the edit is measured with: inversion round trip, consistency metrics, attention heatmaps
        (12, "TA_InversionReconstruct", {"filename_prefix": "TemporalAdapter/edit_reconstruction"},
         {"model": (1, 0), "conditioning": (3, 0), "inversion": (7, 1), "vae": (1, 2)}, ("invert", 1)),
        (13, "VAEDecode", {}, {"samples": (12, 0), "vae": (1, 2)}, ("train", 1)),
        (14, "TA_SaveVideo", {"filename_prefix": "TemporalAdapter/edit_reconstruction_video"},
         {"images": (13, 0), "fps": (2, 1)}, ("train", 1)),
        (17, "TA_AttentionHeatmaps", {"text": EDIT, "words": "man, phone, car", "mode": "probe"},
         {"model": (1, 0), "clip": (1, 1), "conditioning": (4, 0), "latent": (6, 0), "images": (2, 0),
          "inversion": (7, 1)}, ("edit", 1)),
        (18, "SaveImage", {"filename_prefix": "TemporalAdapter/edit_heatmap_grid"}, {"images": (17, 1)},
         ("save", 1)),
        (15, "TA_ConsistencyMetrics", {"filename_prefix": "TemporalAdapter/edit_metrics"},
         {"source": (2, 0), "edited": (10, 0), "latents": (9, 0)}, ("save", 1)),
        (16, "SaveImage", {"filename_prefix": "TemporalAdapter/edit_metrics_plot"}, {"images": (15, 1)},
         ("save", 1)),
    ]


EDIT_FRONT = edit_front(CKPT, text, 512)
EDIT_NOTE = ("The whole edit: invert the clip, train an adapter on it, sample the edit prompt with every "
             "consistency mechanism, decode and save. Below: inversion round trip, consistency metrics "
             "and cross-attention heatmaps of the edit.")

WORKFLOWS = {
    "load_and_save.json": {
        "note": "Load a clip, choose frames and size, save it browser-playable. Upload your own video with "
                "the loader's button; the saver shows an animated preview.",
        "titles": {"save": "Save"},
        "nodes": [
            video(1, cap=24, width=0, clip="bikes.mp4"),
            (2, "TA_SaveVideo", {"filename_prefix": "TemporalAdapter/load_and_save"},
             {"images": (1, 0), "fps": (1, 1)}, ("save", 0)),
        ]},
    "invert_reconstruct.json": {
        "note": "DDIM inversion of the clip with the temporal bilateral filter off and on, each sampled back: "
                "the readouts report the round-trip PSNR, the theory's stability claim made measurable.",
        "nodes": [
            checkpoint(1),
            video(2),
            text(3, SOURCE),
            (4, "VAEEncode", {}, {"pixels": (2, 0), "vae": (1, 2)}, ("encode", 0)),
            (5, "TA_BilateralDDIMInversion", {"filter": "off", "steps": 20},
             {"model": (1, 0), "conditioning": (3, 0), "latent": (4, 0)}, ("invert", 0)),
            (6, "TA_BilateralDDIMInversion", {"filter": "temporal", "steps": 20},
             {"model": (1, 0), "conditioning": (3, 0), "latent": (4, 0)}, ("invert", 0)),
            (7, "TA_InversionReconstruct", {"filename_prefix": "TemporalAdapter/reconstruction_filter_off"},
             {"model": (1, 0), "conditioning": (3, 0), "inversion": (5, 1), "vae": (1, 2)}, ("reconstruct", 0)),
            (8, "TA_InversionReconstruct", {"filename_prefix": "TemporalAdapter/reconstruction_filter_temporal"},
             {"model": (1, 0), "conditioning": (3, 0), "inversion": (6, 1), "vae": (1, 2)}, ("reconstruct", 0)),
            (9, "VAEDecode", {}, {"samples": (8, 0), "vae": (1, 2)}, ("save", 0)),
            (10, "TA_SaveVideo", {"filename_prefix": "TemporalAdapter/reconstruction"},
             {"images": (9, 0), "fps": (2, 1)}, ("save", 0)),
        ]},
    "edit_video.json": {"note": EDIT_NOTE, "nodes": edit_video(CKPT, text, 512)},
    # the same chain on an SDXL-family checkpoint (SDXL 1.0, its fine-tunes, SSD-1B, Segmind Vega, KOALA):
    # SDXL's text encoders and 1024 px frames
    "edit_video_sdxl.json": {
        "note": EDIT_NOTE[:-1] + " On an SDXL-family checkpoint: SDXL's text encoders, 1024 px frames.",
        "nodes": edit_video(SDXL_CKPT, text_sdxl, 1024)},
    # train an adapter on the clip and save it (models/temporal_adapters) with its loss curve
    "train_adapter.json": {
        "note": "Train a temporal adapter (shared and per-frame tokens, windowed LoRA) on your clip and save it "
                "to models/temporal_adapters. The trainer draws its loss curve while it runs.",
        "titles": {"save": "Save"},
        "nodes": [
            checkpoint(1),
            video(2, cap=16, width=512),
            text(3, SOURCE),
            (4, "VAEEncode", {}, {"pixels": (2, 0), "vae": (1, 2)}, ("encode", 0)),
            (5, "TA_TrainAdapter", {"steps": 200}, {"model": (1, 0), "conditioning": (3, 0), "latent": (4, 0)},
             ("train", 0)),
            (6, "TA_SaveAdapter", {"filename_prefix": "carphone_adapter"}, {"adapter": (5, 0)}, ("save", 0)),
            save_image(7, "TemporalAdapter/loss_curve", (5, 1), ("save", 0)),
        ]},
    # the same edit with and without the trained adapter, each saved and measured
    "compare_adapter.json": {
        "note": "The same edit with and without the trained adapter, each decoded, saved and measured "
                "against the source clip: compare the two metrics reports.",
        "nodes": EDIT_FRONT + [
            (9, "TA_ConsistencySampler", {"steps": 50, "use_adapter": True}, {
                "model": (1, 0), "positive": (4, 0), "negative": (5, 0), "inversion": (7, 1), "adapter": (8, 0)},
             ("edit", 0)),
            (10, "TA_ConsistencySampler", {"steps": 50, "use_adapter": False}, {
                "model": (1, 0), "positive": (4, 0), "negative": (5, 0), "inversion": (7, 1), "adapter": (8, 0)},
             ("edit", 0)),
            (11, "VAEDecode", {}, {"samples": (9, 0), "vae": (1, 2)}, ("save", 0)),
            (13, "TA_SaveVideo", {"filename_prefix": "TemporalAdapter/compare_with_adapter"},
             {"images": (11, 0), "fps": (2, 1)}, ("save", 0)),
            (12, "VAEDecode", {}, {"samples": (10, 0), "vae": (1, 2)}, ("save", 0)),
            (14, "TA_SaveVideo", {"filename_prefix": "TemporalAdapter/compare_without_adapter"},
             {"images": (12, 0), "fps": (2, 1)}, ("save", 0)),
            (15, "TA_ConsistencyMetrics", {"filename_prefix": "TemporalAdapter/compare_with_adapter_metrics"},
             {"source": (2, 0), "edited": (11, 0), "latents": (9, 0)}, ("save", 1)),
            (16, "TA_ConsistencyMetrics", {"filename_prefix": "TemporalAdapter/compare_without_adapter_metrics"},
             {"source": (2, 0), "edited": (12, 0), "latents": (10, 0)}, ("save", 1)),
        ]},
    # which words land where: heatmaps of a probe on the clip, drawn over the frames
    "attention_heatmaps.json": {
        "note": "Cross-attention heatmaps of chosen words over the frames, and the alignment error between "
                "adjacent frames per block. The node's viewer pages through words and frames.",
        "titles": {"edit": "Heatmaps", "save": "Save"},
        "nodes": [
            checkpoint(2),
            video(1, cap=8, width=256, clip="bikes.mp4", nth=3),
            text(3, "a man riding a bike on a street", clip=2),
            (4, "VAEEncode", {}, {"pixels": (1, 0), "vae": (2, 2)}, ("encode", 0)),
            (5, "TA_AttentionHeatmaps", {"text": "a man riding a bike on a street", "words": "man, bike, street"},
             {"model": (2, 0), "clip": (2, 1), "conditioning": (3, 0), "latent": (4, 0), "images": (1, 0)},
             ("edit", 0)),
            (6, "TA_SaveVideo", {"filename_prefix": "TemporalAdapter/attention_heatmaps"},
             {"images": (5, 0), "fps": (1, 1)}, ("save", 0)),
            save_image(7, "TemporalAdapter/attention_heatmap_grid", (5, 1), ("save", 0)),
            save_image(8, "TemporalAdapter/attention_heatmap_overlay", (5, 0), ("save", 0)),
        ]},
}


def _nodes(spec, object_info):
    """UI nodes (without position) and links of a spec."""
    kinds = {n[0]: n[1] for n in spec}
    links, out_links, nodes = [], {}, []
    for order, (node_id, kind, widgets, inputs, _place) in enumerate(spec):
        info = object_info[kind]
        names = {n for section in ("required", "optional") for n in info["input"].get(section, {})}
        if set(widgets) - names or set(inputs) - names:
            raise SystemExit(f"{kind}: no inputs named {(set(widgets) | set(inputs)) - names}")
        values, ui_inputs = [], []
        for section in ("required", "optional"):
            for name, value in info["input"].get(section, {}).items():
                kind_ = value[0]
                opts = value[1] if len(value) > 1 and isinstance(value[1], dict) else {}
                is_widget = isinstance(kind_, list) or kind_ in WIDGET_TYPES
                if is_widget:
                    default = opts.get("default", kind_[0] if isinstance(kind_, list) and kind_ else None)
                    values.append(widgets.get(name, default))
                    if kind_ == "INT" and (name in ("seed", "noise_seed") or opts.get("control_after_generate")):
                        values.append("fixed")
                if name in inputs:
                    src, slot = inputs[name]
                    links.append([len(links) + 1, src, slot, node_id, len(ui_inputs),
                                  object_info[kinds[src]]["output"][slot]])
                    out_links.setdefault((src, slot), []).append(len(links))
                    entry = {"name": name, "type": "COMBO" if isinstance(kind_, list) else kind_, "link": len(links)}
                    if is_widget:
                        entry["widget"] = {"name": name}
                    ui_inputs.append(entry)
                elif not is_widget:
                    ui_inputs.append({"name": name, "type": kind_, "link": None})
        outputs = [{"name": n, "type": t, "links": out_links.get((node_id, i)), "slot_index": i}
                   for i, (n, t) in enumerate(zip(info.get("output_name", info["output"]), info["output"]))]
        nodes.append({"id": node_id, "type": kind, "flags": {}, "order": order, "mode": 0, "inputs": ui_inputs,
                      "outputs": outputs, "properties": {"Node name for S&R": kind}, "widgets_values": values})
    # outputs refer to links made by later nodes: fill them in now
    for node in nodes:
        for i, out in enumerate(node["outputs"]):
            out["links"] = out_links.get((node["id"], i))
    return nodes, links


def layout(workflow, sizes):
    """Positions, sizes, groups and the note of a workflow spec: {id: (pos, size)}, groups, note node.

    sizes: {node id as str: [w, h]} measured in the front ends (missing: a default)."""
    spec = workflow["nodes"]
    size = {}
    for node_id, kind, *_ in spec:
        measured, room = sizes.get(str(node_id), [MIN_WIDTH, 200]), ROOM.get(kind, [0, 0])
        size[node_id] = [max(MIN_WIDTH, measured[0], room[0]), max(measured[1], room[1])]
    columns = [c for c in STAGES if any(n[4][0] == c for n in spec)]
    lanes = sorted({n[4][1] for n in spec})
    width = {c: max(size[n[0]][0] for n in spec if n[4][0] == c) for c in columns}
    x, left = {}, 0
    for c in columns:
        x[c], left = left, left + width[c] + GAP_X

    def stack(lane):
        return {c: [n for n in spec if n[4] == (c, lane)] for c in columns}

    placed, top = {}, GROUP_TITLE
    groups, lane_boxes = [], []
    for lane in lanes:
        cells, bottom = stack(lane), top
        for c, members in cells.items():
            y = top
            for n in members:
                placed[n[0]] = ([x[c], y + NODE_TITLE], size[n[0]])
                y += NODE_TITLE + size[n[0]][1] + GAP_Y
            bottom = max(bottom, y - GAP_Y)
        used = [c for c in columns if cells[c]]
        if lane == 0:
            titles = {**STAGES, **workflow.get("titles", {})}
            for c in used:
                groups.append({"title": titles[c], "bounding": [x[c] - PAD, top - GROUP_TITLE, width[c] + 2 * PAD,
                                                                bottom - top + GROUP_TITLE + PAD]})
        else:
            lo, hi = x[used[0]], x[used[-1]] + width[used[-1]]
            groups.append({"title": MEASURE, "bounding": [lo - PAD, top - GROUP_TITLE, hi - lo + 2 * PAD,
                                                          bottom - top + GROUP_TITLE + PAD]})
        lane_boxes.append((top, bottom))
        top = bottom + PAD + GAP_Y + GROUP_TITLE
    # the note: under the first column, below every group there (the Measure group starts further right)
    first = columns[0]
    below = max([b for (t, b), lane in zip(lane_boxes, lanes) if stack(lane)[first]] + [0])
    note_pos = [x[first], below + PAD + GAP_Y + NODE_TITLE]
    for group in groups:
        group.update({"color": "#3f789e", "font_size": 24})
    note_id = max(n[0] for n in spec) + 1
    measured = sizes.get(str(note_id), NOTE_SIZE)
    note = {"id": note_id, "type": "Note", "pos": note_pos,
            "size": [max(width[first], NOTE_SIZE[0], measured[0]), max(NOTE_SIZE[1], measured[1])], "flags": {},
            "order": len(spec), "mode": 0,
            "inputs": [], "outputs": [], "properties": {"text": ""}, "widgets_values": [workflow["note"]],
            "color": "#432", "bgcolor": "#653"}
    return placed, groups, note


def build(name, workflow, object_info, sizes):
    nodes, links = _nodes(workflow["nodes"], object_info)
    placed, groups, note = layout(workflow, sizes.get(name, {}))
    for node in nodes:
        node["pos"], node["size"] = placed[node["id"]]
    nodes.sort(key=lambda n: n["order"])
    nodes.append(note)
    boxes = [g["bounding"] for g in groups] + [[*note["pos"], *note["size"]]]
    right = max(b[0] + b[2] for b in boxes) + PAD
    bottom = max(b[1] + b[3] for b in boxes) + PAD
    left = min(b[0] for b in boxes)
    scale = round(min(1.0, (VIEW[0] - 2 * VIEW_MARGIN[0]) / (right - left),
                      (VIEW[1] - 2 * VIEW_MARGIN[1]) / bottom), 3)
    # the whole workflow in view when it opens (screen = (position + offset) * scale)
    view = {"ds": {"scale": scale, "offset": [round(VIEW_MARGIN[0] / scale - left), round(VIEW_MARGIN[1] / scale)]}}
    return {"last_node_id": note["id"], "last_link_id": len(links), "nodes": nodes, "links": links,
            "groups": groups, "config": {}, "extra": view, "version": 0.4}


# Reads the size the front end computes for every node once the workflow is loaded (what it needs
# for its widgets, previews and curves: smaller saved sizes are enlarged to it on load), widened to
# show the whole title (the 0.8.0 front end cuts a title at the node's width less two title heights).
MEASURE_JS = """async ([text, vue]) => {
    await window.app.loadGraphData(JSON.parse(text));
    await new Promise((resolve) => setTimeout(resolve, 1500));
    const element = (node) => document.querySelector(`[data-node-id="${node.id}"]`);
    for (let i = 0; vue && i < 100 && !window.app.graph._nodes.every(element); i += 1) {
        await new Promise((resolve) => setTimeout(resolve, 100));
    }
    const context = document.createElement("canvas").getContext("2d");
    const out = {};
    for (const node of window.app.graph._nodes) {
        context.font = node.titleFontStyle ?? `${LiteGraph.NODE_TEXT_SIZE}px ${LiteGraph.NODE_FONT ?? "Arial"}`;
        const title = context.measureText(node.getTitle()).width + 2 * LiteGraph.NODE_TITLE_HEIGHT;
        let [width, height] = node.computeSize();
        if (vue) {  // the Vue node's element (title bar included) as laid out, in graph units
            const r = element(node).getBoundingClientRect();
            const scale = window.app.canvas.ds.scale;
            const title = element(node).querySelector('[data-testid="node-title"] .truncate');
            const cut = title ? Math.max(0, title.scrollWidth - title.clientWidth) : 0;  // its title's missing px
            width = Math.max(width, (r.width + cut + 4) / scale);
            height = Math.max(height, r.height / scale - LiteGraph.NODE_TITLE_HEIGHT);
        }
        out[node.id] = [Math.ceil(Math.max(width, title)), Math.ceil(height)];
    }
    return out;
}"""
VUE_NODES = "Comfy.VueNodes.Enabled"


def measure(server, workflows):
    """{workflow name: {node id: [w, h]}} as the live host's front end sizes the nodes, the largest of its
    node renderers (LiteGraph's canvas, and its Vue nodes where it has them)."""
    clips = load_manifest()["clips"]
    for path in clips.values():  # the loader shows a preview of its file when the file is there
        shutil.copy(path, server.input_dir)
    found = {}
    for vue in (False, True):
        server.post("/settings", {VUE_NODES: vue, "Comfy.TutorialCompleted": True})
        with front_end_page(server.url) as page:
            if vue and not page.evaluate(f"() => !!window.app.ui?.settings?.settingsLookup?.['{VUE_NODES}']"):
                break
            for name, workflow in workflows.items():
                for node_id, (w, h) in page.evaluate(MEASURE_JS, [json.dumps(workflow), vue]).items():
                    old = found.setdefault(name, {}).get(node_id, [0, 0])
                    found[name][node_id] = [max(w, old[0]), max(h, old[1])]
            print(f"measured in the {'Vue' if vue else 'canvas'} renderer")
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--measure", action="store_true", help="record node sizes in this host's front end first")
    args = parser.parse_args()
    manifest = load_manifest()
    sizes = json.load(open(SIZES)) if os.path.exists(SIZES) else {}
    with tempfile.TemporaryDirectory() as work:
        server = ComfyServer(manifest["python"], manifest["comfyui"], work,
                             extra_model_paths=manifest["extra_model_paths"],
                             front_end_root=front_end_root(manifest) if args.measure else None).start()
        try:
            info = server.object_info
            if args.measure:
                built = {name: build(name, wf, info, sizes) for name, wf in WORKFLOWS.items()}
                for name, found in measure(server, built).items():
                    known = sizes.setdefault(name, {})
                    for node_id, (w, h) in found.items():
                        old = known.get(node_id, [0, 0])
                        known[node_id] = [max(w, old[0]), max(h, old[1])]
                with open(SIZES, "w") as f:
                    json.dump(sizes, f, indent=1, sort_keys=True)
                print(f"node sizes from {manifest.get('host_label', 'this host')} merged into "
                      f"{os.path.relpath(SIZES, REPO)}")
        finally:
            server.stop()
    for name, workflow in WORKFLOWS.items():
        path = os.path.join(REPO, "example_workflows", name)
        with open(path, "w") as f:
            json.dump(build(name, workflow, info, sizes), f, indent=1)
        print("wrote", os.path.relpath(path, REPO))


if __name__ == "__main__":
    main()
