"""Bad values over HTTP on a live server: a NaN float widget (JSON NaN and the string "nan"), a file
name with a NUL byte, a damaged video file and a malformed adapter file each fail with the node's
clear message and write nothing, and after each one the next prompt succeeds. Each next prompt saves
under a name of its own: the host's default cache (0.33.0: RAM pressure, kept across prompts) answers
a graph it has run before from the cache, writing nothing, as it should."""
import os
import shutil

import pytest
from comfy_client import ComfyError

pytestmark = pytest.mark.e2e

PREFIX = "e2e_bad_values/clip"


def good_graph(prefix=PREFIX):
    """Load 3 frames of bikes.mp4 at 64 px and save them as webp: the prompt that must keep working."""
    return {"1": {"class_type": "TA_LoadVideo", "inputs": {
                "video": "bikes.mp4", "path": "", "force_rate": 0.0, "skip_first_frames": 0, "select_every_nth": 1,
                "frame_load_cap": 3, "custom_width": 64, "custom_height": 0}},
            "2": {"class_type": "TA_SaveVideo", "inputs": {
                "images": ["1", 0], "fps": ["1", 1], "filename_prefix": prefix, "format": "webp", "crf": 19}}}


def bad_adapter_graph(name):
    """Load Adapter (the file `name`) on the tiny model and a 2-frame latent, into Save Adapter."""
    return {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "ta_tiny_sd15.safetensors"}},
            "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 2}},
            "3": {"class_type": "TA_LoadAdapter", "inputs": {"adapter_name": name, "model": ["1", 0],
                                                             "latent": ["2", 0]}},
            "4": {"class_type": "TA_SaveAdapter", "inputs": {"adapter": ["3", 0], "filename_prefix": "e2e_never"}}}


def outputs(live_server):
    folder = os.path.join(live_server.output_dir, os.path.dirname(PREFIX))
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


@pytest.fixture
def adapter_folder(provisioned):
    folder = os.path.join(os.path.dirname(provisioned["checkpoints"]), "temporal_adapters")
    os.makedirs(folder, exist_ok=True)
    made = []
    yield folder, made
    for name in made:
        os.remove(os.path.join(folder, name))


def test_each_bad_value_fails_clearly_and_the_next_prompt_succeeds(live_server, clips, adapter_folder):
    import torch
    from safetensors.torch import save_file

    shutil.copy(clips["bikes.mp4"], os.path.join(live_server.input_dir, "bikes.mp4"))
    with open(clips["bikes.mp4"], "rb") as f:
        data = f.read()
    with open(os.path.join(live_server.input_dir, "damaged.mp4"), "wb") as f:
        f.write(data[:4096])  # the first 4 KiB of an mp4 whose index is at the end: no frames reachable
    folder, made = adapter_folder
    save_file({"tokens.shared": torch.zeros(1, 768)}, os.path.join(folder, "e2e_malformed.safetensors"),
              metadata={"temporal_adapter": '{"format_version": 1, "frames": '})
    made.append("e2e_malformed.safetensors")

    def with_input(node, name, value):
        graph = good_graph()
        graph[node]["inputs"][name] = value
        return graph

    cases = [
        (with_input("1", "force_rate", float("nan")), r"force_rate: nan is not a number it can use"),
        (with_input("1", "force_rate", "nan"), r"force_rate: nan is not a number it can use"),
        (with_input("2", "filename_prefix", "e2e_bad_values/cl\0ip"),
         r"filename_prefix: the character U\+0000 at position 17 cannot be part of a file name"),
        (with_input("1", "video", "damaged.mp4"), r"damaged\.mp4: "),
        (bad_adapter_graph("e2e_malformed.safetensors"),
         r"e2e_malformed\.safetensors: not a valid adapter file: its 'temporal_adapter' metadata is not JSON"),
    ]
    for i, (graph, message) in enumerate(cases):
        before = outputs(live_server)
        with pytest.raises(ComfyError, match=message) as failure:
            live_server.run(graph)
        print(f"\ncase {i}: {str(failure.value).splitlines()[0]}")
        assert " failed: " in str(failure.value), "refused by the host's validation, not at the node's door"
        assert outputs(live_server) == before, f"case {i} wrote {set(outputs(live_server)) - set(before)}"
        assert not any(f.startswith("e2e_never") for f in os.listdir(folder))
        live_server.run(good_graph(f"{PREFIX}_after_{i}"))
        new = sorted(set(outputs(live_server)) - set(before))
        assert len(new) == 1, f"the prompt after case {i} saved {new}"
        assert os.path.getsize(os.path.join(live_server.output_dir, os.path.dirname(PREFIX), new[0])) > 0
