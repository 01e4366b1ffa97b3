"""The video nodes inside the real host, called in-process under inference mode like the executor."""
import json
import os
import shutil

import av
import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def nodes(comfy_host):
    from temporal_adapter.nodes import video_nodes
    return video_nodes


@pytest.fixture(scope="module")
def input_dir(comfy_host, clips):
    folder = comfy_host.folder_paths.get_input_directory()
    shutil.copy(clips["bikes.mp4"], os.path.join(folder, "bikes.mp4"))
    with open(os.path.join(folder, "notes.txt"), "w") as f:
        f.write("not listed")
    return folder


LOAD_DEFAULTS = dict(path="", force_rate=0.0, skip_first_frames=0, select_every_nth=1, frame_load_cap=0,
                     custom_width=0, custom_height=0, resize_mode="crop")


def load(nodes, **kwargs):
    with torch.inference_mode():
        return nodes.TA_LoadVideo().load(**{**LOAD_DEFAULTS, **kwargs})


def test_loader_lists_input_videos_and_loads_one(nodes, input_dir):
    choices = nodes.TA_LoadVideo.INPUT_TYPES()["required"]["video"][0]
    assert "bikes.mp4" in choices and "notes.txt" not in choices
    assert nodes.TA_LoadVideo.VALIDATE_INPUTS(video="bikes.mp4", path="") is True
    images, fps, count, info, text, mask = load(nodes, video="bikes.mp4", force_rate=12.5, frame_load_cap=8,
                                                custom_width=320)
    assert images.shape == (8, 136, 320, 3) and images.dtype == torch.float32
    assert fps == 12.5 and count == 8
    assert (info["fps"], info["frame_count"], info["width"], info["height"]) == (25.0, 250, 640, 272)
    assert info["duration"] == pytest.approx(10.0)
    assert (info["loaded_frame_count"], info["loaded_width"], info["loaded_height"]) == (8, 320, 136)
    assert text.startswith("bikes.mp4: 640x272 h264, 25.000 fps, 250 frames, 10.00 s -> loaded 8 frames")
    assert torch.equal(mask, torch.zeros(8, 64, 64))  # no alpha: Load Image's empty mask


def test_validate_rejects_missing_and_escaping_sources(nodes, input_dir, clips, tmp_path):
    validate = nodes.TA_LoadVideo.VALIDATE_INPUTS
    assert "gone.mp4: no such file" in validate(video="gone.mp4", path="")
    assert "'..' is not allowed" in validate(video="../bikes.mp4", path="")
    assert "outside the folders" in validate(video="bikes.mp4", path="/etc/passwd")
    assert "outside the folders" in validate(video="bikes.mp4", path=clips["carphone_pristine.mp4"])
    os.symlink(clips["carphone_pristine.mp4"], os.path.join(input_dir, "escape.mp4"))
    try:
        assert "outside the folders" in validate(video="escape.mp4", path="")
    finally:
        os.remove(os.path.join(input_dir, "escape.mp4"))
    assert validate(video="bikes.mp4", path=os.path.join(input_dir, "bikes.mp4")) is True
    assert validate(video="bikes.mp4", path=None) is True  # a linked path is checked at run time


def test_path_loader_honours_configured_roots(nodes, input_dir, clips, monkeypatch):
    folder = os.path.dirname(clips["carphone_pristine.mp4"])
    monkeypatch.setenv("TEMPORAL_ADAPTER_ALLOWED_ROOTS", folder)
    assert nodes.TA_LoadVideo.VALIDATE_INPUTS(video="bikes.mp4", path=clips["carphone_pristine.mp4"]) is True
    images, fps, count, info, _, _ = load(nodes, video="bikes.mp4", path=clips["carphone_pristine.mp4"],
                                          frame_load_cap=4)
    assert images.shape == (4, 144, 193, 3) and info["codec"] == "h264"  # 176x144 at 128:117, shown square


def test_is_changed_follows_content_and_options(nodes, input_dir, clips):
    path = os.path.join(input_dir, "changing.mp4")
    shutil.copy(clips["carphone_pristine.mp4"], path)
    options = {k: v for k, v in LOAD_DEFAULTS.items() if k != "path"}
    assert list(nodes.TA_LoadVideo.INPUT_TYPES()["required"]) == ["video", "path", *options][:-1]
    first = nodes.TA_LoadVideo.IS_CHANGED(video="changing.mp4", path="", **options)
    assert nodes.TA_LoadVideo.IS_CHANGED(video="changing.mp4", path="", **options) == first
    capped = {**options, "frame_load_cap": 3}
    assert nodes.TA_LoadVideo.IS_CHANGED(video="changing.mp4", path="", **capped) != first
    shutil.copy(clips["bikes.mp4"], path)
    assert nodes.TA_LoadVideo.IS_CHANGED(video="changing.mp4", path="", **options) != first


@pytest.mark.parametrize("name,content,message", [
    ("text.mp4", b"a shopping list\n" * 40, r"text\.mp4: not a video file"),
    ("half.mp4", None, r"half\.mp4: the video is damaged or truncated"),
])
def test_bad_files_fail_with_the_file_and_the_reason(nodes, input_dir, clips, name, content, message):
    if content is None:
        with open(clips["bikes.mp4"], "rb") as f:
            content = f.read()[:200_000]
    with open(os.path.join(input_dir, name), "wb") as f:
        f.write(content)
    with pytest.raises(ValueError, match=message):
        load(nodes, video=name)


def test_skip_past_the_end_fails_clearly(nodes, input_dir):
    with pytest.raises(ValueError, match=r"bikes\.mp4: no frames to load.*250 frames.*skip_first_frames=300"):
        load(nodes, video="bikes.mp4", skip_first_frames=300)


def test_memory_check_uses_the_free_memory(nodes, input_dir, monkeypatch):
    monkeypatch.setattr(nodes.host, "available_memory", lambda: 20 * 2**20)
    with pytest.raises(ValueError, match=r"bikes\.mp4: loading 250 frames at 640x272 needs 498\.0 MiB.*"
                                         r"only 20\.0 MiB.*frame_load_cap to 10 or less"):
        load(nodes, video="bikes.mp4")


def test_interrupt_stops_the_decode(nodes, input_dir, comfy_host):
    import comfy.model_management as mm
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            load(nodes, video="bikes.mp4")
    finally:
        mm.interrupt_current_processing(False)


def save(nodes, images, **kwargs):
    args = dict(fps=25.0, filename_prefix="ta_test/clip", format="mp4", crf=19,
                prompt={"1": {"class_type": "TA_SaveVideo", "inputs": {}}},
                extra_pnginfo={"workflow": {"nodes": [], "version": 0.4}})
    with torch.inference_mode():
        return nodes.TA_SaveVideo().save(images, **{**args, **kwargs})


@pytest.mark.parametrize("fmt", ["mp4", "webm", "gif", "webp", "png"])
def test_saver_writes_each_format_with_preview_and_counter(nodes, input_dir, comfy_host, fmt):
    images = load(nodes, video="bikes.mp4", frame_load_cap=6, custom_width=160)[0]
    output = comfy_host.folder_paths.get_output_directory()
    first = save(nodes, images, format=fmt, filename_prefix=f"ta_test/{fmt}/clip")
    second = save(nodes, images, format=fmt, filename_prefix=f"ta_test/{fmt}/clip")
    path = first["result"][0]
    suffix = "png" if fmt == "png" else f".{fmt}"
    assert path == os.path.join(output, "ta_test", fmt, f"clip_00001_{suffix}")
    assert second["result"][0].endswith(f"clip_00002_{suffix}")
    assert [n for n in os.listdir(os.path.dirname(path)) if n.startswith(".")] == []
    ui = first["ui"]
    assert ui["animated"] == (True,) and len(ui["images"]) == 1
    preview = ui["images"][0]
    root = {"output": output, "temp": comfy_host.folder_paths.get_temp_directory()}[preview["type"]]
    preview_path = os.path.join(root, preview["subfolder"], preview["filename"])
    with Image.open(preview_path) as im:
        assert im.format in ("GIF", "WEBP") and im.n_frames == 6
    if fmt in ("mp4", "webm"):
        with av.open(path) as c:
            tags = {k.lower(): v for k, v in c.metadata.items()}
            assert c.streams.video[0].codec_context.pix_fmt == "yuv420p"
        assert json.loads(tags["workflow"]) == {"nodes": [], "version": 0.4}
        assert json.loads(tags["prompt"])["1"]["class_type"] == "TA_SaveVideo"


@pytest.mark.parametrize("fmt,fastest,refused", [("gif", 51, [52, 60, 240]), ("webp", 95, [96, 240])])
def test_saver_refuses_rates_the_animated_formats_do_not_play(nodes, input_dir, comfy_host, fmt, fastest, refused):
    """Players show gif/webp frames of 10 ms or less for 100 ms (GIF counts in 1/100 s): a faster fps is
    refused naming fps and the limit, nothing written; the fastest rate that plays is saved as asked."""
    images = load(nodes, video="bikes.mp4", frame_load_cap=3, custom_width=64)[0]
    folder = os.path.join(comfy_host.folder_paths.get_output_directory(), "ta_test", f"rate_{fmt}")
    for fps in refused:
        with pytest.raises(Exception, match=rf"fps: {fps} is faster than {fmt} plays: .* Use {fastest} fps or less"):
            save(nodes, images, fps=float(fps), format=fmt, filename_prefix=f"ta_test/rate_{fmt}/clip")
        assert not os.path.isdir(folder) or not os.listdir(folder)
    path = save(nodes, images, fps=float(fastest), format=fmt, filename_prefix=f"ta_test/rate_{fmt}/clip")["result"][0]
    with Image.open(path) as im:
        im.load()  # webp reads a frame's duration with the frame
        assert im.info["duration"] == (20 if fmt == "gif" else 11)


def test_saver_respects_disable_metadata(nodes, input_dir, monkeypatch):
    import comfy.cli_args
    monkeypatch.setattr(comfy.cli_args.args, "disable_metadata", True)
    images = load(nodes, video="bikes.mp4", frame_load_cap=2, custom_width=64)[0]
    path = save(nodes, images, filename_prefix="ta_test/nometa")["result"][0]
    with av.open(path) as c:
        assert not {"prompt", "workflow"} & {k.lower() for k in c.metadata}


# ---- footage as people bring it (issue 16) -------------------------------------------------------

def test_mask_output_and_resize_mode_come_last_so_saved_workflows_keep_their_links(nodes, input_dir):
    loader = nodes.TA_LoadVideo
    assert loader.RETURN_TYPES == ("IMAGE", "FLOAT", "INT", "TA_VIDEO_INFO", "STRING", "MASK")
    assert loader.RETURN_NAMES[-1] == "mask" and len(loader.OUTPUT_TOOLTIPS) == 6
    spec = loader.INPUT_TYPES()
    required, optional = spec["required"], spec["optional"]
    assert list(required)[-1] == "custom_height"  # the widgets saved workflows know keep their slots
    assert list(optional) == ["resize_mode"] and optional["resize_mode"][1]["default"] == "crop"
    tips = {name: spec[1]["tooltip"] for name, spec in {**required, **optional}.items() if len(spec) > 1}
    assert "VideoHelperSuite" in tips["force_rate"] and "on screen" in tips["force_rate"]
    assert "multiple of 8" in tips["custom_width"] and "mixed sizes" in tips["path"]
    # An API prompt written before resize_mode existed still runs (with the default, crop).
    before = {k: v for k, v in LOAD_DEFAULTS.items() if k != "resize_mode"}
    with torch.inference_mode():
        out = loader().load(video="bikes.mp4", **{**before, "frame_load_cap": 1, "custom_width": 64,
                                                  "custom_height": 64})
    assert out[0].shape == (1, 64, 64, 3) and len(out) == 6


def in_input(comfy_host, path):
    shutil.copytree(path, os.path.join(comfy_host.folder_paths.get_input_directory(), os.path.basename(path)),
                    dirs_exist_ok=True) if os.path.isdir(path) else shutil.copy(path, comfy_host.folder_paths.get_input_directory())
    return os.path.basename(path)


def test_phone_clip_loads_saves_and_previews_upright(nodes, comfy_host, case):
    name = in_input(comfy_host, case("video/rot90.mp4"))
    images, fps, count, info, text, mask = load(nodes, video=name)
    assert images.shape == (8, 64, 48, 3) and (info["width"], info["height"], info["rotation"]) == (48, 64, 90)
    assert "48x64 h264, rotated 90\u00b0 clockwise" in text
    result = save(nodes, images, fps=fps, filename_prefix="ta_test/upright")
    with av.open(result["result"][0]) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == (48, 64)
    preview = result["ui"]["images"][0]
    with Image.open(os.path.join(comfy_host.folder_paths.get_temp_directory(), preview["subfolder"],
                                 preview["filename"])) as im:
        assert im.size == (48, 64)


def test_alpha_clip_gives_its_mask_and_a_mixed_folder_is_named(nodes, comfy_host, case):
    name = in_input(comfy_host, case("video/vp9_alpha.webm"))
    images, _, _, info, text, mask = load(nodes, video=name)
    assert images.shape == (4, 48, 64, 3) and mask.shape == (4, 48, 64) and info["alpha"]
    assert "alpha -> mask" in text and 0 < float(mask.mean()) < 1
    folder = in_input(comfy_host, case("video/mixed_sizes_seq"))
    with pytest.raises(ValueError, match=r"mixed_sizes_seq: the images differ in size: f1\.png is 64x48 but "
                                         r"f2\.png is 48x64"):
        load(nodes, video="bikes.mp4", path=folder)
    images = load(nodes, video="bikes.mp4", path=folder, custom_width=64, custom_height=48)[0]
    assert images.shape == (3, 48, 64, 3)


def test_default_graph_runs_on_a_size_the_vae_rounds(nodes, comfy_host, tiny_model, case):
    """load -> VAE encode -> invert -> sample -> VAE decode -> metrics against the loaded source, on a
    65x49 clip: the VAE crops to 64x48 and the metrics compare that area of the source."""
    from temporal_adapter.nodes import inversion_nodes, metrics_nodes, sampler_nodes
    from test_inversion_nodes import encode, invert
    from test_sampler_nodes import sample

    model, clip, vae = tiny_model
    name = in_input(comfy_host, case("video/odd_65x49_444.mp4"))
    source = load(nodes, video=name, frame_load_cap=3)[0]
    assert source.shape == (3, 49, 65, 3)
    with torch.inference_mode():
        prompt = comfy_host.nodes.CLIPTextEncode().encode(clip, "a test pattern")[0]
    latent = encode(comfy_host, vae, source)
    assert tuple(latent["samples"].shape[-2:]) == (6, 8)  # 48x64 pixels
    _, inv, _ = invert(inversion_nodes, model, prompt, latent, 2, blocks="output 0, output 1")
    edited_latent, _ = sample((inversion_nodes, sampler_nodes), model, prompt, prompt, inv, steps=2)
    with torch.inference_mode():
        edited = comfy_host.nodes.VAEDecode().decode(vae, {"samples": edited_latent})[0]
        result = metrics_nodes.TA_ConsistencyMetrics().measure(source, edited, filename_prefix="ta_test/odd")
    assert edited.shape == (3, 48, 64, 3)
    text = result["result"][0]
    assert "compared the 64x48 area at x=0, y=0 of the 65x49 source" in text
