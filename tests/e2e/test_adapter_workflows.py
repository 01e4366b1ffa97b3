"""example_workflows/train_adapter.json and compare_adapter.json on a live server with a real clip:
the adapter file and loss curve are written; the edit with and without the adapter is saved and
measured (finite metrics) for both."""
import json
import math
import os
import shutil

import pytest
from comfy_client import set_inputs, ui_to_api
from safetensors import safe_open

pytestmark = pytest.mark.e2e

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAST = {("CheckpointLoaderSimple", "ckpt_name"): "ta_tiny_sd15.safetensors", ("TA_LoadVideo", "frame_load_cap"): 6,
        ("TA_LoadVideo", "custom_width"): 64, ("TA_TrainAdapter", "steps"): 2,
        ("TA_BilateralDDIMInversion", "steps"): 4, ("TA_BilateralDDIMInversion", "blocks"): "output 0, output 1",
        ("TA_ConsistencySampler", "steps"): 4}


def graph_of(live_server, clips, name):
    shutil.copy(clips["carphone_pristine.mp4"], os.path.join(live_server.input_dir, "carphone_pristine.mp4"))
    with open(os.path.join(REPO, "example_workflows", name)) as f:
        graph = ui_to_api(json.load(f), live_server.object_info)
    assert set_inputs(graph, FAST) >= 4
    return graph


def test_train_adapter_workflow_saves_adapter_and_loss_curve(live_server, clips, provisioned):
    graph = graph_of(live_server, clips, "train_adapter.json")
    graph["6"]["inputs"]["filename_prefix"] = "e2e_workflow_adapter"
    outputs = live_server.run(graph, timeout=900)["outputs"]
    folder = os.path.join(os.path.dirname(provisioned["checkpoints"]), "temporal_adapters")
    saved = sorted(f for f in os.listdir(folder) if f.startswith("e2e_workflow_adapter"))
    assert saved, f"no adapter file in {folder}"
    with safe_open(os.path.join(folder, saved[-1]), "pt") as f:
        assert f.metadata() and f.keys()
    (curve,) = outputs["7"]["images"]
    assert os.path.exists(os.path.join(live_server.output_dir, curve["subfolder"], curve["filename"]))


def test_compare_adapter_workflow_saves_and_measures_both_edits(live_server, clips):
    graph = graph_of(live_server, clips, "compare_adapter.json")
    outputs = live_server.run(graph, timeout=900)["outputs"]
    for node in ("15", "16"):
        saved = outputs[node]["text"][0].rsplit("saved: ", 1)[1].strip()
        with open(os.path.join(live_server.output_dir, saved)) as f:
            report = json.load(f)
        assert math.isfinite(report["warp_error"]) and math.isfinite(report["latent_cosine"])
    videos = os.listdir(os.path.join(live_server.output_dir, "TemporalAdapter"))
    assert any(v.startswith("compare_with_adapter_0") for v in videos)
    assert any(v.startswith("compare_without_adapter_0") for v in videos)
