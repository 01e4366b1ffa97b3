"""The consistency-metrics node inside the real host, called in-process under inference mode."""
import json
import os

import cv2
import numpy as np
import pytest
import torch

pytestmark = pytest.mark.host

PREFIX = "ta_metrics_test/run"


@pytest.fixture(scope="module")
def node(comfy_host):
    from temporal_adapter.nodes import metrics_nodes
    return metrics_nodes.TA_ConsistencyMetrics()


@pytest.fixture(scope="module")
def source(clips):
    """Frames 0..3 of carphone_pristine.mp4 as an IMAGE batch [4, 144, 176, 3]."""
    cap = cv2.VideoCapture(clips["carphone_pristine.mp4"])
    frames = []
    for _ in range(4):
        ok, bgr = cap.read()
        assert ok
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    return torch.from_numpy(np.stack(frames)).float() / 255.0


@pytest.fixture(scope="module")
def edited(source):
    """The source with noise on frame 2: the pairs 1->2 and 2->3 are the inconsistent ones."""
    out = source.clone()
    noise = torch.randn(out[2].shape, generator=torch.Generator().manual_seed(0)) * 0.05
    out[2] = (out[2] + noise).clamp(0.0, 1.0)
    return out


@pytest.fixture(scope="module")
def clip_vision(comfy_host, tmp_path_factory):
    """A real host CLIP_VISION (comfy.clip_vision.ClipVisionModel) shrunk to 2 layers of width 64,
    with seeded weights: no CLIP vision weights can be downloaded here."""
    import comfy.clip_vision
    with open(os.path.join(comfy_host.dir, "comfy", "clip_vision_config_vitl.json")) as f:
        config = json.load(f)
    config.update(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2,
                  patch_size=32, projection_dim=32)
    path = tmp_path_factory.mktemp("clip_vision") / "tiny_vitl.json"
    path.write_text(json.dumps(config))
    model = comfy.clip_vision.ClipVisionModel(str(path))
    g = torch.Generator().manual_seed(0)
    missing, unexpected = model.load_sd({k: torch.randn(v.shape, generator=g) * 0.05
                                         for k, v in model.get_sd().items()})
    assert not missing and not unexpected
    return model


def _strict_json(path):
    """The parsed file; fails on NaN/Infinity, so every number in it is finite."""
    def refuse(constant):
        raise AssertionError(f"{path}: non-finite number {constant}")
    with open(path) as f:
        return json.load(f, parse_constant=refuse)


def test_node_is_registered(comfy_host):
    assert "TA_ConsistencyMetrics" in comfy_host.plugin.NODE_CLASS_MAPPINGS
    assert comfy_host.plugin.NODE_DISPLAY_NAME_MAPPINGS["TA_ConsistencyMetrics"].endswith("(Temporal Adapter)")


def test_node_measures_an_edit_of_real_frames(node, comfy_host, tiny_model, clip_vision, source, edited):
    vae = tiny_model[2]
    with torch.inference_mode():
        latents = comfy_host.nodes.VAEEncode().encode(vae, edited)[0]
        out = node.measure(source, edited, latents=latents, clip_vision=clip_vision, filename_prefix=PREFIX)
    text, plot = out["result"]
    assert out["ui"] == {"text": [text]}
    assert plot.shape == (1, 720, 960, 3) and plot.dtype == torch.float32
    assert 0.0 <= float(plot.min()) and float(plot.max()) <= 1.0 and float(plot.std()) > 0.01

    folder = os.path.join(comfy_host.folder_paths.get_output_directory(), os.path.dirname(PREFIX))
    assert sorted(os.listdir(folder)) == ["run_00001_.json"]  # no temporary file left behind
    assert text.endswith("saved: ta_metrics_test/run_00001_.json")
    report = _strict_json(os.path.join(folder, "run_00001_.json"))
    assert (report["frames"], report["width"], report["height"]) == (4, 176, 144)
    errors = report["warp_error_per_pair"]
    assert min(errors[1], errors[2]) > 2 * errors[0], errors  # the noisy frame 2 touches pairs 1 and 2
    assert len(report["latent_cosine_per_pair"]) == 3 and -1.0 <= report["latent_cosine"] <= 1.0
    assert len(report["clip_f_per_pair"]) == 3 and -1.0 <= report["clip_f"] <= 1.0
    assert "CLIP-F (consecutive frames)" in text and "  1->2: " in text

    with torch.inference_mode():  # without the optional inputs: the next numbered file, fewer metrics
        text = node.measure(source, edited, filename_prefix=PREFIX)["result"][0]
    report = _strict_json(os.path.join(folder, "run_00002_.json"))
    assert "clip_f" not in report and "latent_cosine" not in report and "CLIP-F" not in text


@pytest.mark.parametrize("case,message", [
    ("one_frame", "source: has 1 frame(s); consistency compares neighbouring frames"),
    ("fewer_edited", "edited: has 3 frames but source has 4"),
    ("resized", "edited: frames are 88x72 but source frames are 176x144; resize one clip"),
    ("latent_count", "latents: has 2 latents but the clips have 4 frames"),
    ("empty_prefix", "filename_prefix: is empty"),
])
def test_node_refuses_bad_inputs(node, source, edited, case, message):
    args = {"source": source, "edited": edited}
    if case == "one_frame":
        args = {"source": source[:1], "edited": edited[:1]}
    elif case == "fewer_edited":
        args["edited"] = edited[:3]
    elif case == "resized":
        args["edited"] = edited[:, ::2, ::2]
    elif case == "latent_count":
        args["latents"] = {"samples": torch.zeros(2, 4, 18, 22)}
    else:
        args["filename_prefix"] = "  "
    with torch.inference_mode(), pytest.raises(ValueError) as info:
        node.measure(**args)
    assert message in str(info.value)
