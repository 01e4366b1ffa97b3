"""adapter_core.video without the host: decode against an independent OpenCV decode, formats,
round trips, frame selection, memory estimate, safe paths and bad input."""
import math
import os
from fractions import Fraction

import av
import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from temporal_adapter.adapter_core import video


def psnr(a, b):
    diff = torch.as_tensor(a, dtype=torch.float64) - torch.as_tensor(b, dtype=torch.float64)
    mse = float((diff ** 2).mean())
    return 10 * math.log10(1.0 / mse) if mse else float("inf")


def reference(path, options, frames_needed):
    """Independent decode: OpenCV reads the source frames, the test picks them by the documented rule
    (tick k shows source frame floor(k * fps / force_rate); then skip, every nth, cap; then crop to
    the output aspect and resize)."""
    cap = cv2.VideoCapture(path)
    fps = cap.get(cv2.CAP_PROP_FPS)
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    if options.force_rate:
        ticks = []
        while (i := math.floor(len(ticks) * fps / options.force_rate + 1e-9)) < count:
            ticks.append(i)
    else:
        ticks = list(range(count))
    picked = ticks[options.skip_first_frames::options.select_every_nth]
    picked = picked[:options.frame_load_cap or None]
    assert picked and max(picked) < frames_needed, "test reads too few reference frames"
    source = []
    while len(source) <= max(picked):
        ok, bgr = cap.read()
        assert ok
        source.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    # the sample aspect ratio (pixel width over height as players show them), as OpenCV reads it
    sar = (cap.get(cv2.CAP_PROP_SAR_NUM) / cap.get(cv2.CAP_PROP_SAR_DEN)) if cap.get(cv2.CAP_PROP_SAR_DEN) else 1.0
    out = []
    for i in picked:
        rgb = source[i]
        if options.width or options.height:  # resize_mode crop: the shown centre at the target's aspect
            h, w = rgb.shape[:2]
            scale = max(options.width / (w * sar), options.height / h)
            ch, cw = min(h, round(options.height / scale)), min(w, round(options.width / scale / sar))
            rgb = rgb[(h - ch) // 2:(h - ch) // 2 + ch, (w - cw) // 2:(w - cw) // 2 + cw]
            rgb = cv2.resize(rgb, (options.width, options.height), interpolation=cv2.INTER_AREA)
        out.append(rgb)
    return np.stack(out).astype(np.float32) / 255, (options.force_rate or fps) / options.select_every_nth


# (clip, options, expected output (width, height) or None for the source size, frames the reference reads)
# carphone_pristine.mp4 stores 176x144 with a sample aspect ratio of 128/117: players show 193x144
CASES = [
    ("carphone_pristine.mp4", video.LoadOptions(), (193, 144), 120),
    ("carphone_pristine.mp4", video.LoadOptions(force_rate=12, skip_first_frames=5, select_every_nth=2,
                                                frame_load_cap=10), (193, 144), 80),
    ("bikes.mp4", video.LoadOptions(force_rate=40, frame_load_cap=20), None, 13),
    ("bikes.mp4", video.LoadOptions(skip_first_frames=100, select_every_nth=3, frame_load_cap=12,
                                    width=320), (320, 136), 140),
    ("bigbuckbunny.mp4", video.LoadOptions(frame_load_cap=6, width=320), (320, 184), 6),
    ("bigbuckbunny.mp4", video.LoadOptions(force_rate=10, select_every_nth=2, frame_load_cap=5,
                                           height=256), (456, 256), 24),
]


@pytest.mark.parametrize("clip,options,size,needed", CASES,
                         ids=lambda v: str(v) if isinstance(v, str) else None)
def test_load_matches_independent_opencv_decode(clips, clip, options, size, needed):
    path = clips[clip]
    images, fps, info, _ = video.load(path, options)
    if size:
        options = video.LoadOptions(options.force_rate, options.skip_first_frames, options.select_every_nth,
                                    options.frame_load_cap, *size)
    expected, expected_fps = reference(path, options, needed)
    assert images.dtype == torch.float32 and images.shape == expected.shape
    assert fps == pytest.approx(expected_fps, rel=1e-6)
    assert 0 <= float(images.min()) and float(images.max()) <= 1
    # Same decoder and matrix: identical at the source size; the resizers differ slightly. A frame
    # off by one in time scores 20-29 dB on these clips.
    worst = min(psnr(a, b) for a, b in zip(images, expected))
    assert worst >= (35 if size else 45)
    assert info.frame_count == int(cv2.VideoCapture(path).get(cv2.CAP_PROP_FRAME_COUNT))


def test_expected_count_is_exact_for_the_clips(clips):
    path = clips["carphone_pristine.mp4"]
    for options in [video.LoadOptions(force_rate=7.5, skip_first_frames=3, select_every_nth=4),
                    video.LoadOptions(force_rate=60, select_every_nth=7),
                    video.LoadOptions(skip_first_frames=119)]:
        images, _, info, _ = video.load(path, options)
        assert len(images) == video.expected_count(info, options)


def test_resample_follows_timestamps_of_a_variable_rate_source():
    # Frames shown at irregular times; at 10 fps tick k (k/10 s) shows the frame on screen then.
    times = [0.0, 0.05, 0.31, 0.32, 0.7]
    picked = list(video.resample(((t, i) for i, t in enumerate(times)), fps=10, rate=10))
    assert picked == [0, 1, 1, 1, 3, 3, 3, 4]  # ticks 0..0.7; the last frame lasts 1/fps


def test_select_frames_order_and_early_stop():
    pulled = []

    def source():
        for i in range(100):
            pulled.append(i)
            yield i / 10, i

    options = video.LoadOptions(force_rate=20, skip_first_frames=3, select_every_nth=4, frame_load_cap=3)
    picked = list(video.select_frames(source(), 10, options))
    # 20 fps repeats every 10 fps frame twice: ticks 0,0,1,1,2,2,3,3,... skip 3 -> tick 3 onwards.
    assert picked == [1, 3, 5]
    assert len(pulled) < 10  # decoding stopped at the cap


def test_output_size_rules():
    assert video.output_size(640, 272) == (640, 272)
    assert video.output_size(640, 272, 320, 0) == (320, 136)
    assert video.output_size(1280, 720, 0, 256) == (456, 256)
    assert video.output_size(176, 144, 100, 50) == (104, 48)
    assert video.output_size(1280, 720, 3, 0) == (8, 8)


def test_frame_buffer_grows_and_trims_in_place():
    buffer = video._FrameBuffer(2, 4, 6)
    frames = [np.full((4, 6, 3), i, np.uint8) for i in range(21)]
    for frame in frames[:-1]:
        buffer.append(frame)
    buffer.repeat()
    images, mask = buffer.finish()
    assert images.shape == (21, 4, 6, 3) and mask is None
    assert torch.equal(images[:20, 0, 0, 0], torch.arange(20, dtype=torch.float32) / 255)
    assert images[20, 0, 0, 0] == images[19, 0, 0, 0]


@pytest.mark.parametrize("setting", [True, False])
def test_frame_buffer_leaves_numpys_huge_page_switch_as_it_was(setting):
    # The output array is allocated with numpy's process-wide huge-page hint off (slow first touch
    # in VMs, benchmarks/README.md); the switch must come back to whatever the host had.
    try:
        from numpy._core import multiarray
    except ImportError:
        from numpy.core import multiarray
    previous = multiarray._set_madvise_hugepage(setting)
    try:
        buffer = video._FrameBuffer(3, 720, 1280)  # 33 MB: above numpy's 4 MiB huge-page size
        assert multiarray._get_madvise_hugepage() == setting
        buffer.append(np.full((720, 1280, 3), 255, np.uint8))
        assert buffer.finish()[0][0].min() == 1.0
    finally:
        multiarray._set_madvise_hugepage(previous)


def clip_frames(clips, n=12):
    images, fps, _, _ = video.load(clips["bikes.mp4"], video.LoadOptions(frame_load_cap=n, width=320))
    return images, fps


def write_with_pyav(path, container_format, codec, frames, fps, pix_fmt):
    with av.open(path, "w", format=container_format) as out:
        stream = out.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pix_fmt
        stream.options = {"qscale": "2"} if codec in ("mjpeg", "mpeg4") else {"crf": "10"}
        for rgb in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(stream.encode())


@pytest.mark.parametrize("name,container_format,codec,pix_fmt", [
    ("clip.mkv", "matroska", "libx264", "yuv420p"),
    ("clip.mov", "mov", "libx264", "yuv420p"),
    ("clip.avi", "avi", "mpeg4", "yuv420p"),
    ("clip.avi", "avi", "mjpeg", "yuvj420p"),
    ("clip.webm", "webm", "libvpx-vp9", "yuv420p"),
])
def test_reads_containers_written_by_ffmpeg(clips, tmp_path, name, container_format, codec, pix_fmt):
    images, fps = clip_frames(clips)
    frames = (images * 255).round().to(torch.uint8).numpy()
    path = str(tmp_path / name)
    write_with_pyav(path, container_format, codec, frames, fps, pix_fmt)
    loaded, loaded_fps, info, _ = video.load(path)
    assert loaded.shape == images.shape and loaded_fps == pytest.approx(25)
    assert psnr(loaded, images) >= 30


@pytest.mark.parametrize("ext", ["gif", "webp"])
def test_reads_animated_images_written_by_pillow(clips, tmp_path, ext):
    images, _ = clip_frames(clips, 8)
    pictures = [Image.fromarray(f) for f in (images * 255).round().to(torch.uint8).numpy()]
    path = str(tmp_path / f"clip.{ext}")
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=50, loop=0)
    loaded, fps, info, _ = video.load(path)
    assert loaded.shape == images.shape and fps == pytest.approx(20)
    assert psnr(loaded, images) >= 25  # gif: 256 colours


def test_reads_a_folder_of_numbered_images_in_natural_order(clips, tmp_path):
    images, _ = clip_frames(clips, 11)
    for i, f in enumerate((images * 255).round().to(torch.uint8).numpy()):
        Image.fromarray(f).save(tmp_path / f"frame{i}.png")  # frame10 must come after frame9
    loaded, fps, info, _ = video.load(str(tmp_path))
    assert torch.equal(loaded, images) and fps == video.SEQUENCE_FPS
    loaded, fps, _, _ = video.load(str(tmp_path), video.LoadOptions(force_rate=8, frame_load_cap=4))
    assert torch.equal(loaded, images[:4]) and fps == 8  # an image folder plays at force_rate


@pytest.mark.parametrize("fmt", video.SAVE_FORMATS)
def test_round_trip_keeps_count_and_fps(clips, tmp_path, fmt):
    images, fps = clip_frames(clips)
    path = str(tmp_path / ("out" if fmt == "png" else f"out.{fmt}"))
    video.save(images, path, fmt, fps)
    loaded, loaded_fps, _, _ = video.load(path)
    assert loaded.shape == images.shape
    assert loaded_fps == pytest.approx(fps)
    assert psnr(loaded, images) >= {"mp4": 35, "webm": 35, "gif": 25, "webp": 30, "png": 99}[fmt]
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(path)]  # no temporary left behind


def test_round_trip_mp4_psnr_on_each_clip(clips, tmp_path):
    for name in ("carphone_pristine.mp4", "bigbuckbunny.mp4"):
        images, fps, _, _ = video.load(clips[name], video.LoadOptions(frame_load_cap=10))
        path = str(tmp_path / f"{name}.mp4")
        video.save(images, path, "mp4", fps)
        loaded, loaded_fps, _, _ = video.load(path)
        n, h, w = images.shape[:3]  # carphone shows 193 wide (non-square pixels): yuv420p pads to 194
        assert loaded.shape == (n, h + h % 2, w + w % 2, 3) and loaded_fps == pytest.approx(fps)
        assert psnr(loaded[:, :h, :w], images) >= 35, name


def test_odd_sizes_are_padded_for_yuv420(tmp_path):
    images = torch.rand(3, 15, 21, 3)
    for fmt in ("mp4", "webm"):
        loaded, _, _, _ = video.load(video.save(images, str(tmp_path / f"odd.{fmt}"), fmt, 10))
        assert loaded.shape == (3, 16, 22, 3)
    loaded, _, _, _ = video.load(video.save(images, str(tmp_path / "odd.gif"), "gif", 10))
    assert loaded.shape == (3, 15, 21, 3)


def test_metadata_is_embedded_where_the_format_allows(clips, tmp_path):
    images, fps = clip_frames(clips, 3)
    meta = {"prompt": '{"1": {"class_type": "TA_LoadVideo"}}', "workflow": '{"nodes": []}'}
    for fmt in ("mp4", "webm"):
        path = video.save(images, str(tmp_path / f"m.{fmt}"), fmt, fps, metadata=meta)
        with av.open(path) as c:
            tags = {k.lower(): v for k, v in c.metadata.items()}
        assert tags["prompt"] == meta["prompt"] and tags["workflow"] == meta["workflow"], fmt
    with Image.open(video.save(images, str(tmp_path / "m.webp"), "webp", fps, metadata=meta)) as im:
        exif = im.getexif()
    assert exif[0x0110] == "prompt:" + meta["prompt"] and exif[0x010F] == "workflow:" + meta["workflow"]
    folder = video.save(images, str(tmp_path / "m_png"), "png", fps, metadata=meta)
    with Image.open(os.path.join(folder, "00001.png")) as im:
        assert im.info["prompt"] == meta["prompt"] and im.info["workflow"] == meta["workflow"]


def test_failed_save_leaves_nothing_behind(clips, tmp_path):
    images, fps = clip_frames(clips, 6)

    def interrupt(done, total):
        if done == 3:
            raise KeyboardInterrupt("stop")

    for fmt in ("mp4", "png"):
        with pytest.raises(KeyboardInterrupt):
            video.save(images, str(tmp_path / f"x.{fmt}"), fmt, fps, progress=interrupt)
    assert os.listdir(tmp_path) == []


def test_load_reports_progress_and_can_be_interrupted(clips):
    calls = []
    video.load(clips["carphone_pristine.mp4"], video.LoadOptions(frame_load_cap=5),
               progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, 5) for i in range(1, 6)]

    def interrupt(done, total):
        if done == 2:
            raise InterruptedError("cancel")

    with pytest.raises(InterruptedError):
        video.load(clips["carphone_pristine.mp4"], progress=interrupt)


# ---- safe paths ----------------------------------------------------------------------------------

def test_resolve_path_confines_to_the_roots(tmp_path):
    root, other = tmp_path / "input", tmp_path / "elsewhere"
    root.mkdir(), other.mkdir()
    (root / "a.mp4").write_bytes(b"x")
    (other / "secret.mp4").write_bytes(b"x")
    assert video.resolve_path("a.mp4", [str(root)]) == str((root / "a.mp4").resolve())
    assert video.resolve_path(str(root / "a.mp4"), [str(root)]) == str((root / "a.mp4").resolve())
    os.symlink(other / "secret.mp4", root / "link.mp4")
    os.symlink(other, root / "linkdir")
    cases = {"../elsewhere/secret.mp4": "'..' is not allowed", "sub/../../elsewhere/secret.mp4": "'..'",
             "/etc/passwd": "outside the folders", str(other / "secret.mp4"): "outside the folders",
             "link.mp4": "outside the folders", "linkdir/secret.mp4": "outside the folders",
             "missing.mp4": "no such file", "  ": "no video given"}
    for given, message in cases.items():
        with pytest.raises(video.VideoError, match=message):
            video.resolve_path(given, [str(root)])
    # A second root is allowed too.
    assert video.resolve_path(str(other / "secret.mp4"), [str(root), str(other)]).endswith("secret.mp4")


def test_list_videos_filters_to_video_files(tmp_path):
    for name in ("b.mp4", "a.webm", "c.GIF", "notes.txt", "still.png"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "folder.mp4").mkdir()
    assert video.list_videos(str(tmp_path)) == ["a.webm", "b.mp4", "c.GIF"]


def test_fingerprint_follows_content_and_options(tmp_path):
    path = tmp_path / "a.mp4"
    path.write_bytes(b"one")
    first = video.fingerprint(str(path), 1)
    assert video.fingerprint(str(path), 1) == first
    assert video.fingerprint(str(path), 2) != first
    path.write_bytes(b"two")
    assert video.fingerprint(str(path), 1) != first


# ---- bad input -----------------------------------------------------------------------------------

def test_a_text_file_renamed_mp4_is_named_as_not_a_video(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("shopping list\n" * 50)
    with pytest.raises(video.VideoError, match=r"notes\.mp4: not a video file.*renamed"):
        video.load(str(path))


def test_an_empty_file_is_named(tmp_path):
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    with pytest.raises(video.VideoError, match=r"empty\.mp4: the file is empty"):
        video.load(str(path))


def whole_file(clips, tmp_path, kind):
    if kind == "camera mp4":
        return clips["bikes.mp4"]  # its index (moov) comes last
    images, fps, _, _ = video.load(clips["carphone_pristine.mp4"], video.LoadOptions(frame_load_cap=60))
    if kind == "faststart mp4":
        return video.save(images, str(tmp_path / "whole.mp4"), "mp4", fps)  # index first
    path = str(tmp_path / "whole.avi")
    write_with_pyav(path, "avi", "mpeg4", (images * 255).round().to(torch.uint8).numpy(), fps, "yuv420p")
    return path


# FFmpeg reports a cut-off stream differently across PyAV versions (PyAV 13 raises while decoding a
# faststart mp4, PyAV 18 ends the stream early): the message names the file and the fault either way.
@pytest.mark.parametrize("kind,message", [
    ("camera mp4", r"cut\.mp4: the video is damaged or truncated .*Download or export it again"),
    ("faststart mp4", r"cut\.mp4: the video is damaged or truncated .*(decoding failed after \d+ frames|"
                      r"index lists 60 frames but only \d+ could be decoded).*Download or export it again"),
    ("avi", r"cut\.avi: the video is damaged or truncated .*index lists 60 frames but only \d+ could be "
            r"decoded.*Download or export it again"),
])
def test_a_truncated_video_is_named(clips, tmp_path, kind, message):
    whole = whole_file(clips, tmp_path, kind)
    with open(whole, "rb") as f:
        data = f.read()
    path = tmp_path / ("cut" + os.path.splitext(whole)[1])
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(video.VideoError, match=message):
        video.load(str(path))


def test_a_video_without_frames_is_named(tmp_path):
    path = tmp_path / "noframes.gif"
    path.write_bytes(b"GIF89a" + bytes([16, 0, 16, 0, 0, 0, 0]) + b";")  # header and trailer only
    with pytest.raises(video.VideoError, match=r"noframes\.gif: no frames could be decoded"):
        video.load(str(path))


def test_skipping_past_the_end_says_so(clips):
    with pytest.raises(video.VideoError, match=r"carphone_pristine\.mp4: no frames to load.*120 frames"
                                               r".*skip_first_frames=500.*Lower skip_first_frames"):
        video.load(clips["carphone_pristine.mp4"], video.LoadOptions(skip_first_frames=500))


def test_memory_estimate_refuses_before_decoding(clips):
    with pytest.raises(video.VideoError, match=r"bigbuckbunny\.mp4: loading 132 frames at 1280x720 "
                                               r"needs 1\.36 GiB .* only 100\.0 MiB .*frame_load_cap to 9 "
                                               r"or less.*custom_width"):
        video.load(clips["bigbuckbunny.mp4"], available_bytes=100 * 2**20)
    images, _, _, _ = video.load(clips["bigbuckbunny.mp4"], video.LoadOptions(frame_load_cap=9),
                              available_bytes=100 * 2**20)
    assert len(images) == 9
    with pytest.raises(video.VideoError, match=r"Not one frame fits: make the frames smaller"):
        video.load(clips["bigbuckbunny.mp4"], available_bytes=2**20)


def test_an_image_folder_without_images_is_named(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(video.VideoError, match="holds no images"):
        video.load(str(tmp_path))


def test_a_damaged_image_in_a_folder_is_named(tmp_path):
    for i in range(3):
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    data = (tmp_path / "2.png").read_bytes()
    (tmp_path / "2.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(video.VideoError, match=r"2\.png: not a readable image"):
        video.load(str(tmp_path))


def test_invalid_options_are_refused(tmp_path):
    with pytest.raises(video.VideoError, match="select_every_nth"):
        video.LoadOptions(select_every_nth=0)
    with pytest.raises(video.VideoError, match="unknown format"):
        video.save(torch.zeros(1, 8, 8, 3), str(tmp_path / "x.avi"), "avi", 10)
