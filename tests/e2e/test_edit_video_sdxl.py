"""example_workflows/edit_video_sdxl.json on a live server with the generated Segmind-Vega checkpoint (SDXL
family at its real width: 745 M params, CLIP-L + OpenCLIP-G, SDXL TAESD): the whole chain (SDXL text
encoders -> invert -> train adapter -> sampler with every mechanism -> decode -> save, the reconstruction
readout, metrics and heatmaps) at the CPU budget of a test: 3 frames 64 px wide, 2 steps, 1 training step."""
import json
import os
import shutil

import av
import pytest
from comfy_client import set_inputs, ui_to_api

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKFLOW = os.path.join(REPO, "example_workflows", "edit_video_sdxl.json")
FRAMES = 3


def test_sdxl_edit_workflow_writes_a_playable_video(live_server, clips):
    shutil.copy(clips["carphone_pristine.mp4"], os.path.join(live_server.input_dir, "carphone_pristine.mp4"))
    with open(WORKFLOW) as f:
        ui = json.load(f)
    graph = ui_to_api(ui, live_server.object_info)
    kinds = {node["class_type"] for node in graph.values()}
    assert {"CLIPTextEncodeSDXL", "TA_TrainAdapter", "TA_ConsistencySampler", "TA_AttentionHeatmaps"} <= kinds
    assert "CLIPTextEncode" not in kinds
    # the user-facing defaults are SDXL's: 1024 px frames and text-encoder sizes
    assert {node["inputs"]["width"] for node in graph.values() if node["class_type"] == "CLIPTextEncodeSDXL"} == {1024}
    assert [node["inputs"]["custom_width"] for node in graph.values() if node["class_type"] == "TA_LoadVideo"] == [1024]
    assert set_inputs(graph, {("CheckpointLoaderSimple", "ckpt_name"): "ta_vega_sdxl.safetensors",
                              ("TA_LoadVideo", "frame_load_cap"): FRAMES, ("TA_LoadVideo", "custom_width"): 64,
                              ("TA_BilateralDDIMInversion", "steps"): 2, ("TA_ConsistencySampler", "steps"): 2,
                              ("TA_TrainAdapter", "steps"): 1, ("TA_TrainAdapter", "frames_per_step"): 2}) == 7
    for node in graph.values():
        if node["class_type"] == "TA_SaveVideo":
            prefix = node["inputs"]["filename_prefix"]
            node["inputs"]["filename_prefix"] = prefix.replace("TemporalAdapter/", "e2e_sdxl/")
    try:
        outputs = live_server.run(graph, timeout=1800)
    finally:
        live_server.free()  # the 745 M-param UNet and its text encoders stay loaded in the server otherwise
    folder = os.path.join(live_server.output_dir, "e2e_sdxl")
    edits = sorted(f for f in os.listdir(folder) if f.startswith("edit_") and "reconstruction" not in f)
    assert edits, f"no video written: {os.listdir(folder)}"
    with av.open(os.path.join(folder, edits[-1])) as container:
        decoded = list(container.decode(video=0))
    assert len(decoded) == FRAMES and decoded[0].width == 64
    # the heatmaps chose the papers' decoder blocks 4-11 on the Vega layout
    assert "blocks: output 1, output 2, output 3, output 4, output 5" in json.dumps(outputs["outputs"])
