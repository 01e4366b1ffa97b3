"""example_workflows/load_and_save.json on a live server: a playable file comes out, bad input fails
with a clear message, and the server keeps serving."""
import io
import json
import os
import shutil
import urllib.parse
import urllib.request

import av
import pytest
from comfy_client import ComfyError, ui_to_api
from PIL import Image

pytestmark = pytest.mark.e2e

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def graph(live_server, clips):
    shutil.copy(clips["bikes.mp4"], os.path.join(live_server.input_dir, "bikes.mp4"))
    with open(os.path.join(REPO, "example_workflows", "load_and_save.json")) as f:
        workflow = json.load(f)
    return ui_to_api(workflow, live_server.object_info)


def saved_files(live_server, entry, prefix, frames):
    """Files the saver wrote under `prefix`, after checking the preview it shows in the node: served by
    /view as the front end asks for it, animated, with every frame."""
    output = entry["outputs"]["2"]
    assert output["animated"] == [True] and len(output["images"]) == 1
    query = urllib.parse.urlencode(output["images"][0])
    with urllib.request.urlopen(f"{live_server.url}/view?{query}", timeout=30) as r:
        with Image.open(io.BytesIO(r.read())) as preview:  # frames=None: a long clip's few frames
            assert preview.format == "WEBP" and (preview.n_frames == frames if frames else preview.n_frames <= 48)
    folder, name = os.path.split(os.path.join(live_server.output_dir, prefix))
    return [os.path.join(folder, n) for n in sorted(os.listdir(folder)) if n.startswith(name)]


def test_example_workflow_writes_a_playable_mp4(live_server, graph):
    assert graph["1"]["inputs"]["video"] == "bikes.mp4" and graph["1"]["inputs"]["frame_load_cap"] == 24
    assert graph["2"]["inputs"]["fps"] == ["1", 1]
    graph = json.loads(json.dumps(graph))
    graph["2"]["inputs"]["filename_prefix"] = "e2e/load_and_save"
    entry = live_server.run(graph)
    files = saved_files(live_server, entry, "e2e/load_and_save", 24)
    assert [os.path.basename(f) for f in files] == ["load_and_save_00001_.mp4"]
    with av.open(files[0]) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        assert float(stream.average_rate) == 25 and stream.codec_context.name == "h264"
    assert len(frames) == 24 and frames[0].shape == (272, 640, 3)


def test_bad_input_fails_clearly_and_the_server_survives(live_server, graph):
    missing = json.loads(json.dumps(graph))
    missing["1"]["inputs"]["video"] = "nowhere.mp4"
    with pytest.raises(ComfyError, match=r"nowhere\.mp4: no such file"):
        live_server.submit(missing)

    with open(os.path.join(live_server.input_dir, "renamed.mp4"), "w") as f:
        f.write("this is a text file\n" * 20)
    renamed = json.loads(json.dumps(graph))
    renamed["1"]["inputs"]["video"] = "renamed.mp4"
    with pytest.raises(ComfyError, match=r"renamed\.mp4: not a video file"):
        live_server.run(renamed)

    again = json.loads(json.dumps(graph))
    again["1"]["inputs"]["frame_load_cap"] = 5
    again["2"]["inputs"].update(filename_prefix="e2e/after_error", format="webp")
    files = saved_files(live_server, live_server.run(again), "e2e/after_error", 5)
    assert [os.path.basename(f) for f in files] == ["after_error_00001_.webp"]
    with Image.open(files[0]) as im:
        assert im.n_frames == 5


def test_real_world_footage_cases_over_http_and_the_server_survives(live_server, graph, case):
    """shared/cases over HTTP: a phone clip saves upright, a clip without length and one with alpha
    load, a folder of mixed sizes fails naming the odd image, and the next prompt still runs."""
    for name in ("video/rot90.mp4", "video/live_noduration.webm", "video/vp9_alpha.webm",
                 "video/mixed_sizes_seq"):
        copy = case(name)
        target = os.path.join(live_server.input_dir, os.path.basename(copy))
        (shutil.copytree if os.path.isdir(copy) else shutil.copy)(copy, target)

    def run(source, prefix, **loader):
        prompt = json.loads(json.dumps(graph))
        prompt["1"]["inputs"].update({"video": source, "frame_load_cap": 0, **loader})
        prompt["2"]["inputs"]["filename_prefix"] = prefix
        return live_server.run(prompt)

    entry = run("rot90.mp4", "e2e/cases/rot90")
    files = saved_files(live_server, entry, "e2e/cases/rot90", 8)
    with av.open(files[0]) as container:
        frame = next(container.decode(video=0))
        assert (frame.width, frame.height) == (48, 64)  # upright: 48 wide, 64 tall
    files = saved_files(live_server, run("live_noduration.webm", "e2e/cases/live"), "e2e/cases/live", None)
    with av.open(files[0]) as container:
        assert len(list(container.decode(video=0))) == 60
    saved_files(live_server, run("vp9_alpha.webm", "e2e/cases/alpha"), "e2e/cases/alpha", None)
    with pytest.raises(ComfyError, match=r"mixed_sizes_seq: the images differ in size: f1\.png is 64x48 "
                                         r"but f2\.png is 48x64"):
        run("bikes.mp4", "e2e/cases/mixed", path="mixed_sizes_seq")
    saved_files(live_server, run("bikes.mp4", "e2e/cases/after", frame_load_cap=3), "e2e/cases/after", 3)
