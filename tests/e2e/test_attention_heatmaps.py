"""example_workflows/attention_heatmaps.json on a live server with a real clip: overlays, grid and the
heatmap video are saved, the viewer's sheets are served, and a word missing from the prompt fails clearly."""
import io
import json
import os
import shutil
import urllib.parse
import urllib.request

import av
import pytest
from comfy_client import ComfyError, set_inputs, ui_to_api
from PIL import Image

pytestmark = pytest.mark.e2e

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKFLOW = os.path.join(REPO, "example_workflows", "attention_heatmaps.json")


def load_graph(live_server, clips):
    """The example workflow as an API graph, pointed at the bikes clip and the generated tiny checkpoint."""
    shutil.copy(clips["bikes.mp4"], os.path.join(live_server.input_dir, "bikes.mp4"))
    with open(WORKFLOW) as f:
        graph = ui_to_api(json.load(f), live_server.object_info)
    assert set_inputs(graph, {("CheckpointLoaderSimple", "ckpt_name"): "ta_tiny_sd15.safetensors"}) == 1
    return graph


@pytest.fixture(scope="module")
def graph(live_server, clips):
    return load_graph(live_server, clips)


def view(live_server, entry):
    with urllib.request.urlopen(f"{live_server.url}/view?{urllib.parse.urlencode(entry)}", timeout=30) as r:
        return Image.open(io.BytesIO(r.read()))


def test_example_workflow_saves_overlays_grid_and_heatmap_video(live_server, graph):
    assert graph["2"]["inputs"]["ckpt_name"] == "ta_tiny_sd15.safetensors"
    assert graph["5"]["inputs"]["text"] == graph["3"]["inputs"]["text"]
    graph = json.loads(json.dumps(graph))
    graph["6"]["inputs"]["filename_prefix"] = "e2e/heatmaps"
    graph["7"]["inputs"]["filename_prefix"] = "e2e/heatmap_grid"
    graph["8"]["inputs"]["filename_prefix"] = "e2e/heatmap_overlay"
    outputs = live_server.run(graph)["outputs"]

    words, frames = 3, 8  # "man, bike, street"; 8 frames of bikes.mp4 (every 3rd), 256x112
    overlays = outputs["8"]["images"]
    assert len(overlays) == words * frames
    with Image.open(os.path.join(live_server.output_dir, overlays[0]["subfolder"], overlays[0]["filename"])) as im:
        assert im.size == (256, 112)
    (grid,) = outputs["7"]["images"]
    with Image.open(os.path.join(live_server.output_dir, grid["subfolder"], grid["filename"])) as im:
        assert im.size == (frames * 256, words * 112)
    video = os.path.join(live_server.output_dir, "e2e", "heatmaps_00001_.mp4")
    with av.open(video) as container:
        assert sum(1 for _ in container.decode(video=0)) == words * frames

    data = outputs["5"]["ta_heatmaps"][0]
    assert data["words"] == ["man", "bike", "street"] and data["frames"] == frames
    for sheet in data["sheets"]:
        with view(live_server, sheet) as im:
            assert im.size == (data["columns"] * data["cell"][0], data["cell"][1])
    report = outputs["5"]["text"][0]
    assert "blocks: output 0, output 1" in report and "alignment error" in report


def test_a_word_not_in_the_prompt_fails_clearly_and_the_server_survives(live_server, graph):
    bad = json.loads(json.dumps(graph))
    bad["5"]["inputs"]["words"] = "bike, unicorn"
    with pytest.raises(ComfyError, match=r"'unicorn' is not in the prompt. The prompt's words are: a, man, riding, "
                                         r"a, bike, on, a, street"):
        live_server.run(bad)
    good = json.loads(json.dumps(graph))
    good["5"]["inputs"].update(words="bike", mode="probe", seed=1)
    for node, prefix in (("6", "e2e/heatmaps_after_error"), ("7", "e2e/heatmaps_after_error_grid"),
                         ("8", "e2e/heatmaps_after_error_overlay")):
        good[node]["inputs"]["filename_prefix"] = prefix
    outputs = live_server.run(good)["outputs"]
    assert len(outputs["8"]["images"]) == 8
