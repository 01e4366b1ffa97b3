"""example_workflows/invert_reconstruct.json on a live server with a real clip: both inversions run
(filter off and temporal), the readouts write their JSON reports, the reconstruction video plays."""
import json
import math
import os
import shutil

import av
import pytest
from comfy_client import set_inputs, ui_to_api

pytestmark = pytest.mark.e2e

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_invert_reconstruct_workflow_writes_video_and_reports(live_server, clips):
    shutil.copy(clips["carphone_pristine.mp4"], os.path.join(live_server.input_dir, "carphone_pristine.mp4"))
    with open(os.path.join(REPO, "example_workflows", "invert_reconstruct.json")) as f:
        graph = ui_to_api(json.load(f), live_server.object_info)
    # generated two-level model: its highest-resolution attention blocks are output 2 and 3
    assert set_inputs(graph, {("CheckpointLoaderSimple", "ckpt_name"): "ta_twolevel_sd15.safetensors",
                              ("TA_BilateralDDIMInversion", "blocks"): "output 2, output 3",
                              ("TA_BilateralDDIMInversion", "steps"): 8,
                              ("TA_LoadVideo", "frame_load_cap"): 6,
                              ("TA_LoadVideo", "custom_width"): 128}) == 7
    outputs = live_server.run(graph, timeout=900)["outputs"]
    reports = {}
    for node in ("7", "8"):
        text = outputs[node]["text"][0]
        saved = text.rsplit("saved: ", 1)[1].strip()
        with open(os.path.join(live_server.output_dir, saved)) as f:
            reports[node] = json.load(f)
        latent, pixels = reports[node]["readouts"]
        assert latent["space"] == "latent" and pixels["space"] == "pixels"
        assert len(latent["psnr_per_frame"]) == 6 and math.isfinite(latent["psnr_mean"])
    assert reports["7"]["settings"]["filter"] == "off" and reports["8"]["settings"]["filter"] == "temporal"
    print("\nreconstruction PSNR (latent) filter off / temporal:",
          reports["7"]["readouts"][0]["psnr_mean"], reports["8"]["readouts"][0]["psnr_mean"])
    video = os.path.join(live_server.output_dir, "TemporalAdapter", "reconstruction_00001_.mp4")
    with av.open(video) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 6 and frames[0].shape[1] == 128
