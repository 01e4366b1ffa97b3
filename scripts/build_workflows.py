"""Write the UI-format (drag-and-drop) example workflows from compact specs, with widget order taken
from a live host's /object_info, so the files load in the front end exactly as if saved there.

    .cache/venv/bin/python scripts/build_workflows.py      (needs a provisioned cache)

Each spec node: (id, class_type, {widget: value}, {input: (source_id, output_slot)}). Widgets not
named take the host's default. The files are committed; the e2e tests convert them back with
`comfy_client.ui_to_api` and run them.
"""
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from comfy_client import ComfyServer, WIDGET_TYPES  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CKPT = "v1-5-pruned-emaonly.safetensors"  # what users have; tests substitute generated weights
SDXL_CKPT = "sd_xl_base_1.0.safetensors"

SOURCE = "a man talking on a phone in a car"
EDIT = "a man talking on a phone in a car, oil painting in the style of van gogh"


def video(node_id, cap=8, width=256):
    return (node_id, "TA_LoadVideo", {"video": "carphone_pristine.mp4", "frame_load_cap": cap,
                                      "custom_width": width}, {})


def text(node_id, prompt, clip=1):
    return (node_id, "CLIPTextEncode", {"text": prompt}, {"clip": (clip, 1)})


def text_sdxl(node_id, prompt, clip=1):
    """SDXL's text encoders: the same prompt for CLIP-G and CLIP-L, the size/crop entries at their 1024 px
    defaults (the ADM input of the SDXL family)."""
    return (node_id, "CLIPTextEncodeSDXL", {"text_g": prompt, "text_l": prompt}, {"clip": (clip, 1)})


def edit_front(ckpt, encode, width):
    """load, encode, prompts (source, edit, negative), invert, train: the start of every edit workflow"""
    return [
        (1, "CheckpointLoaderSimple", {"ckpt_name": ckpt}, {}),
        video(2, cap=16, width=width),
        encode(3, SOURCE),
        encode(4, EDIT),
        encode(5, "blurry, low quality"),
        (6, "VAEEncode", {}, {"pixels": (2, 0), "vae": (1, 2)}),
        (7, "TA_BilateralDDIMInversion", {"filter": "temporal", "steps": 50}, {"model": (1, 0), "conditioning": (3, 0),
                                                                               "latent": (6, 0)}),
        (8, "TA_TrainAdapter", {"steps": 200}, {"model": (1, 0), "conditioning": (3, 0), "latent": (6, 0)}),
    ]


def edit_video(ckpt, encode, width):
    """load -> encode -> invert -> train adapter -> sample (all mechanisms on) -> decode -> save -> measure"""
    return edit_front(ckpt, encode, width) + [
        (9, "TA_ConsistencySampler", {"steps": 50, "cfg": 7.5}, {"model": (1, 0), "positive": (4, 0),
                                                                  "negative": (5, 0), "inversion": (7, 1),
                                                                  "adapter": (8, 0)}),
        (10, "VAEDecode", {}, {"samples": (9, 0), "vae": (1, 2)}),
        (11, "TA_SaveVideo", {"filename_prefix": "TemporalAdapter/edit"}, {"images": (10, 0), "fps": (2, 1)}),
        # what the edit is measured with: inversion round trip, consistency metrics, attention heatmaps
        (12, "TA_InversionReconstruct", {"filename_prefix": "TemporalAdapter/edit_reconstruction"},
         {"model": (1, 0), "conditioning": (3, 0), "inversion": (7, 1), "vae": (1, 2)}),
        (13, "VAEDecode", {}, {"samples": (12, 0), "vae": (1, 2)}),
        (14, "TA_SaveVideo", {"filename_prefix": "TemporalAdapter/edit_reconstruction_video"},
         {"images": (13, 0), "fps": (2, 1)}),
        (15, "TA_ConsistencyMetrics", {"filename_prefix": "TemporalAdapter/edit_metrics"},
         {"source": (2, 0), "edited": (10, 0), "latents": (9, 0)}),
        (16, "SaveImage", {"filename_prefix": "TemporalAdapter/edit_metrics_plot"}, {"images": (15, 1)}),
        (17, "TA_AttentionHeatmaps", {"text": EDIT, "words": "man, phone, car", "mode": "probe"},
         {"model": (1, 0), "clip": (1, 1), "conditioning": (4, 0), "latent": (6, 0), "images": (2, 0),
          "inversion": (7, 1)}),
        (18, "SaveImage", {"filename_prefix": "TemporalAdapter/edit_heatmap_grid"}, {"images": (17, 1)}),
        (19, "SaveImage", {"filename_prefix": "TemporalAdapter/edit_loss_curve"}, {"images": (8, 1)}),
    ]


EDIT_FRONT = edit_front(CKPT, text, 512)

WORKFLOWS = {
    "invert_reconstruct.json": [
        (1, "CheckpointLoaderSimple", {"ckpt_name": CKPT}, {}),
        video(2),
        text(3, SOURCE),
        (4, "VAEEncode", {}, {"pixels": (2, 0), "vae": (1, 2)}),
        (5, "TA_BilateralDDIMInversion", {"filter": "off", "steps": 20}, {"model": (1, 0), "conditioning": (3, 0),
                                                                           "latent": (4, 0)}),
        (6, "TA_BilateralDDIMInversion", {"filter": "temporal", "steps": 20}, {"model": (1, 0), "conditioning": (3, 0),
                                                                                "latent": (4, 0)}),
        (7, "TA_InversionReconstruct", {"filename_prefix": "TemporalAdapter/reconstruction_filter_off"},
         {"model": (1, 0), "conditioning": (3, 0), "inversion": (5, 1), "vae": (1, 2)}),
        (8, "TA_InversionReconstruct", {"filename_prefix": "TemporalAdapter/reconstruction_filter_temporal"},
         {"model": (1, 0), "conditioning": (3, 0), "inversion": (6, 1), "vae": (1, 2)}),
        (9, "VAEDecode", {}, {"samples": (8, 0), "vae": (1, 2)}),
        (10, "TA_SaveVideo", {"filename_prefix": "TemporalAdapter/reconstruction"}, {"images": (9, 0), "fps": (2, 1)}),
    ],
    "edit_video.json": edit_video(CKPT, text, 512),
    # the same chain on an SDXL-family checkpoint (SDXL 1.0, its fine-tunes, SSD-1B, Segmind Vega, KOALA):
    # SDXL's text encoders and 1024 px frames
    "edit_video_sdxl.json": edit_video(SDXL_CKPT, text_sdxl, 1024),
    # train an adapter on the clip and save it (models/temporal_adapters) with its loss curve
    "train_adapter.json": [
        (1, "CheckpointLoaderSimple", {"ckpt_name": CKPT}, {}),
        video(2, cap=16, width=512),
        text(3, SOURCE),
        (4, "VAEEncode", {}, {"pixels": (2, 0), "vae": (1, 2)}),
        (5, "TA_TrainAdapter", {"steps": 200}, {"model": (1, 0), "conditioning": (3, 0), "latent": (4, 0)}),
        (6, "TA_SaveAdapter", {"filename_prefix": "carphone_adapter"}, {"adapter": (5, 0)}),
        (7, "SaveImage", {"filename_prefix": "TemporalAdapter/loss_curve"}, {"images": (5, 1)}),
    ],
    # the same edit with and without the trained adapter, each saved and measured
    "compare_adapter.json": EDIT_FRONT + [
        (9, "TA_ConsistencySampler", {"steps": 50, "use_adapter": True}, {
            "model": (1, 0), "positive": (4, 0), "negative": (5, 0), "inversion": (7, 1), "adapter": (8, 0)}),
        (10, "TA_ConsistencySampler", {"steps": 50, "use_adapter": False}, {
            "model": (1, 0), "positive": (4, 0), "negative": (5, 0), "inversion": (7, 1), "adapter": (8, 0)}),
        (11, "VAEDecode", {}, {"samples": (9, 0), "vae": (1, 2)}),
        (12, "VAEDecode", {}, {"samples": (10, 0), "vae": (1, 2)}),
        (13, "TA_SaveVideo", {"filename_prefix": "TemporalAdapter/compare_with_adapter"},
         {"images": (11, 0), "fps": (2, 1)}),
        (14, "TA_SaveVideo", {"filename_prefix": "TemporalAdapter/compare_without_adapter"},
         {"images": (12, 0), "fps": (2, 1)}),
        (15, "TA_ConsistencyMetrics", {"filename_prefix": "TemporalAdapter/compare_with_adapter_metrics"},
         {"source": (2, 0), "edited": (11, 0), "latents": (9, 0)}),
        (16, "TA_ConsistencyMetrics", {"filename_prefix": "TemporalAdapter/compare_without_adapter_metrics"},
         {"source": (2, 0), "edited": (12, 0), "latents": (10, 0)}),
    ],
}


def build(spec, object_info):
    kinds = {n[0]: n[1] for n in spec}
    links, out_links, nodes = [], {}, []
    for order, (node_id, kind, widgets, inputs) in enumerate(spec):
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
        outputs = [{"name": n, "type": t, "links": None, "slot_index": i}
                   for i, (n, t) in enumerate(zip(info.get("output_name", info["output"]), info["output"]))]
        nodes.append({"id": node_id, "type": kind, "pos": [60 + 380 * (order % 4), 80 + 420 * (order // 4)],
                      "size": [340, 300], "flags": {}, "order": order, "mode": 0, "inputs": ui_inputs,
                      "outputs": outputs, "properties": {"Node name for S&R": kind}, "widgets_values": values})
    # outputs refer to links created by later nodes: fill them in now
    for node in nodes:
        for i, out in enumerate(node["outputs"]):
            out["links"] = out_links.get((node["id"], i))
    return {"last_node_id": max(n[0] for n in spec), "last_link_id": len(links), "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": {}, "version": 0.4}


def main():
    with open(os.environ.get("TA_MANIFEST") or os.path.join(REPO, ".cache", "manifest.json")) as f:
        manifest = json.load(f)
    with tempfile.TemporaryDirectory() as work:
        server = ComfyServer(manifest["python"], manifest["comfyui"], work,
                             extra_model_paths=manifest["extra_model_paths"]).start()
        try:
            info = server.object_info
        finally:
            server.stop()
    for name, spec in WORKFLOWS.items():
        path = os.path.join(REPO, "example_workflows", name)
        with open(path, "w") as f:
            json.dump(build(spec, info), f, indent=1)
        print("wrote", os.path.relpath(path, REPO))


if __name__ == "__main__":
    main()
