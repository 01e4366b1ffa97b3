"""example_workflows/edit_video.json on a live server with a real clip: load -> encode -> invert -> train
adapter (2 steps) -> temporal-consistency sampler -> decode -> save writes a playable video; a bad
input (cfg 0) fails with the sampler's message and the server keeps working."""
import json
import os
import shutil

import av
import pytest
from comfy_client import ComfyError, set_inputs, ui_to_api

pytestmark = pytest.mark.e2e

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKFLOW = os.path.join(REPO, "example_workflows", "edit_video.json")
FRAMES = 6


@pytest.fixture(scope="module")
def graph(live_server, clips):
    """The example pointed at the generated tiny checkpoint, 6 frames of carphone_pristine.mp4 at 64 px
    wide, 4 inversion/sampling steps, 2 adapter training steps (the CPU budget of a test)."""
    shutil.copy(clips["carphone_pristine.mp4"], os.path.join(live_server.input_dir, "carphone_pristine.mp4"))
    with open(WORKFLOW) as f:
        graph = ui_to_api(json.load(f), live_server.object_info)
    assert set_inputs(graph, {("CheckpointLoaderSimple", "ckpt_name"): "ta_tiny_sd15.safetensors",
                              ("TA_LoadVideo", "frame_load_cap"): FRAMES, ("TA_LoadVideo", "custom_width"): 64,
                              ("TA_BilateralDDIMInversion", "steps"): 4, ("TA_BilateralDDIMInversion", "blocks"):
                              "output 0, output 1", ("TA_ConsistencySampler", "steps"): 4,
                              ("TA_TrainAdapter", "steps"): 2}) == 7
    return graph


def test_edit_video_workflow_writes_a_playable_video(live_server, graph):
    graph = json.loads(json.dumps(graph))
    graph["11"]["inputs"]["filename_prefix"] = "e2e/edit"
    live_server.run(graph)
    files = sorted(f for f in os.listdir(os.path.join(live_server.output_dir, "e2e")) if f.startswith("edit"))
    assert files, "no video written"
    with av.open(os.path.join(live_server.output_dir, "e2e", files[-1])) as container:
        decoded = list(container.decode(video=0))
    assert len(decoded) == FRAMES and decoded[0].width == 64


def test_cfg_zero_fails_clearly_and_the_server_survives(live_server, graph):
    bad = json.loads(json.dumps(graph))
    bad["9"]["inputs"]["cfg"] = 0.0
    bad["11"]["inputs"]["filename_prefix"] = "e2e/edit_bad"
    with pytest.raises(ComfyError, match="cfg: must be > 0"):
        live_server.run(bad)
    assert "TA_ConsistencySampler" in live_server.object_info
