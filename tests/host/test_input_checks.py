"""The door of every node (nodes/checks.py) in the real host: NaN/inf in every tensor wire type and every
FLOAT widget is refused by name before the node runs, file names the file system refuses fail before
anything is written, and no NaN reaches a saved file."""
import inspect
import math
import os

import pytest
import torch

from temporal_adapter.adapter_core.adapter import Adapter
from temporal_adapter.adapter_core.inversion import Inversion

pytestmark = pytest.mark.host


def nan_at(tensor, value=float("nan")):
    tensor = tensor.clone()
    tensor.view(-1)[tensor.numel() // 2] = value
    return tensor


def nan_adapter():
    adapter = Adapter.create(768, 2, {"blocks.0.attn1.to_q": (8, 8)})
    with torch.no_grad():
        adapter.loras["blocks.0.attn1.to_q"].up[0, 0] = float("inf")
    return adapter


# One broken value of each tensor wire type, with what the message names after the input's name.
BROKEN = {
    "LATENT": (lambda: {"samples": nan_at(torch.zeros(2, 4, 8, 8))}, ": 1 of 512 values"),
    "IMAGE": (lambda: nan_at(torch.zeros(2, 16, 16, 3), float("inf")), ": 1 of 1536 values"),
    "MASK": (lambda: nan_at(torch.zeros(2, 16, 16)), ": 1 of 512 values"),
    "CONDITIONING": (lambda: [[torch.zeros(1, 77, 768), {"pooled_output": nan_at(torch.zeros(1, 768))}]],
                     " entry 0 'pooled_output': 1 of 768 values"),
    "TA_INVERSION": (lambda: Inversion(nan_at(torch.zeros(3, 2, 4, 8, 8)), torch.tensor([14.6, 1.0, 0.0]), {}, "s",
                                       "m"), " trajectory: 1 of 1536 values"),
    "TA_ADAPTER": (nan_adapter, " loras.blocks/0/attn1/to_q.up: 1 of 32 values"),
}


def declared_inputs(cls):
    spec = cls.INPUT_TYPES()
    return {name: entry for section in ("required", "optional") for name, entry in spec.get(section, {}).items()}


def call_with(cls, **given):
    """Call the node's function with `given` and None for every other parameter: the door checks the given
    inputs before the node's own code runs (which would fail on the Nones)."""
    function = getattr(cls(), cls.FUNCTION)
    names = [n for n in inspect.signature(function).parameters]
    with torch.inference_mode():
        return function(**{name: given.get(name) for name in names})


def test_every_node_refuses_nan_and_inf_in_every_tensor_input_and_float_widget(comfy_host):
    """Generic over NODE_CLASS_MAPPINGS: a node added later is covered, or this test fails for it."""
    mappings = comfy_host.plugin.NODE_CLASS_MAPPINGS
    seen_types, floats, checked = set(), 0, 0
    for node_id, cls in mappings.items():
        assert getattr(getattr(cls, cls.FUNCTION), "inputs_checked", False), f"{node_id} has no door"
        for name, entry in declared_inputs(cls).items():
            kind, options = entry[0], entry[1] if len(entry) > 1 else {}
            if isinstance(kind, str) and kind in BROKEN:
                make, detail = BROKEN[kind]
                with pytest.raises(ValueError, match=rf"^{name}{detail} are NaN or infinite; "):
                    call_with(cls, **{name: make()})
                seen_types.add(kind)
                checked += 1
            elif kind == "FLOAT":
                for value in (math.nan, math.inf, -math.inf):
                    with pytest.raises(ValueError, match=rf"^{name}: {value} is not a number it can use; type "
                                                         rf"between {options['min']} and {options['max']}"):
                        call_with(cls, **{name: value})
                floats += 1
    print(f"\n{checked} tensor inputs and {floats} FLOAT widgets refused NaN/inf across {len(mappings)} nodes")
    assert seen_types == set(BROKEN) - {"MASK"}  # no node takes a MASK today; the door knows the type
    assert floats >= 10 and checked >= 20


def test_out_of_range_numbers_are_refused_in_process_too(comfy_host):
    """The host checks min/max over HTTP (not for inputs a VALIDATE_INPUTS takes, on 0.8.0); the door
    checks them for every caller."""
    from temporal_adapter.nodes import sampler_nodes
    with pytest.raises(ValueError, match=r"^steps: 1000 is outside the widget's range; type between 1 and 999"):
        call_with(sampler_nodes.ConsistencySampler, steps=1000)
    with pytest.raises(ValueError, match=r"^attention_fraction: 1.5 is outside the widget's range"):
        call_with(sampler_nodes.ConsistencySampler, attention_fraction=1.5)


def test_a_nan_latent_stops_the_sampler_before_it_runs(comfy_host, tiny_model):
    """The real sampler call (all inputs valid but the latent): refused at the door, nothing sampled."""
    from temporal_adapter.nodes import sampler_nodes
    model, clip, _ = tiny_model
    with torch.inference_mode():
        cond = comfy_host.nodes.CLIPTextEncode().encode(clip, "a road")[0]
        with pytest.raises(ValueError, match=r"^latent: 1 of 512 values are NaN or infinite; check the node that "
                                             r"made it \(a VAE Encode of broken frames"):
            sampler_nodes.ConsistencySampler().sample(
                model, cond, cond, 3, 4.0, 0, False, False, False, 3, 0, False, 0.5, 0.8, 0, 0,
                latent={"samples": nan_at(torch.zeros(2, 4, 8, 8))})


def output_listing(comfy_host):
    root = comfy_host.folder_paths.get_output_directory()
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, dirs, files in os.walk(root) for f in dirs + files)


@pytest.mark.parametrize("prefix,message", [
    ("ta_values/na\0me", r"the character U\+0000 at position 12 cannot be part of a file name; remove it"),
    ("ta_values/sub\0dir/clip", r"the character U\+0000 at position 13 cannot be part"),
    ("ta_values/line\nbreak", r"the character U\+000A at position 14 cannot be part"),
    ("ta_values/\ud800", r"the character U\+D800 at position 10 cannot be stored by this file system"),
    ("ta_values/" + "x" * 250, r"the name 'xxxxxxxxxxxxxxxxxxxxxxxx'... is 250 bytes long; this folder allows 223"),
    ("  ", r"is empty; give a name such as"),
])
def test_a_file_name_the_file_system_refuses_fails_before_anything_is_written(comfy_host, prefix, message):
    """Save Video, the metrics and readout JSON reports and Save Adapter: the same check, at the door, so
    nothing is computed, no folder is made and no file is left in output/ (or models/)."""
    from temporal_adapter.nodes import adapter_nodes, inversion_nodes, metrics_nodes, video_nodes
    before = output_listing(comfy_host)
    for cls in (video_nodes.TA_SaveVideo, metrics_nodes.TA_ConsistencyMetrics, inversion_nodes.InversionReconstruct,
                adapter_nodes.TA_SaveAdapter):
        with pytest.raises(ValueError, match=rf"^filename_prefix: {message}"):
            call_with(cls, filename_prefix=prefix)
    assert output_listing(comfy_host) == before


def test_save_video_refuses_nan_frames_a_bad_prefix_and_an_escape_and_writes_nothing(comfy_host):
    """The real saver with real frames: NaN frames, a NaN fps, a NUL in the name and a path out of
    the output folder all fail with nothing left in output/ or temp/; a good call then writes its file."""
    from temporal_adapter.nodes import host, video_nodes
    frames = torch.rand(3, 16, 16, 3)
    node = video_nodes.TA_SaveVideo()
    temp = comfy_host.folder_paths.get_temp_directory()
    before, temp_before = output_listing(comfy_host), sorted(os.listdir(temp))
    cases = [(dict(images=nan_at(frames)), r"^images: 1 of 2304 values are NaN or infinite"),
             (dict(fps=math.nan), r"^fps: nan is not a number it can use"),
             (dict(filename_prefix="ta_values/clip\0.mp4"), r"^filename_prefix: the character U\+0000"),
             (dict(filename_prefix="../escaped/clip"), r"^filename_prefix: '../escaped/clip' leads outside the "
                                                        r"output folder")]
    for change, message in cases:
        args = {**dict(images=frames, fps=8.0, filename_prefix="ta_values/clip", format="webp", crf=19), **change}
        with torch.inference_mode(), pytest.raises(ValueError, match=message):
            node.save(**args)
    assert output_listing(comfy_host) == before and sorted(os.listdir(temp)) == temp_before
    assert not os.path.exists(os.path.join(os.path.dirname(host.output_directory()), "escaped"))
    with torch.inference_mode():
        path = node.save(frames, 8.0, "ta_values/clip", "webp", 19)["result"][0]
    assert os.path.basename(path) == "clip_00001_.webp" and os.path.getsize(path) > 0


def test_metrics_with_a_nan_frame_write_no_report(comfy_host):
    from temporal_adapter.nodes import metrics_nodes
    before = output_listing(comfy_host)
    source = torch.rand(3, 32, 32, 3)
    with torch.inference_mode(), pytest.raises(ValueError, match=r"^edited: 1 of 9216 values are NaN or infinite"):
        metrics_nodes.TA_ConsistencyMetrics().measure(source, nan_at(source), filename_prefix="ta_values/metrics")
    assert output_listing(comfy_host) == before
