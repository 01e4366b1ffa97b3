"""adapter_core.video on footage as people bring it (issue 16): every file of shared/cases/video with
its right value, and the other variants of each kind made here: every display-matrix and EXIF
orientation, bit depths and colour modes, alpha, unknown length, frame timing, mixed and rounded
sizes, resize modes, huge images, and the saver's one-pass conversion and small preview."""
import math
import os
import struct
import zlib
from fractions import Fraction

import av
import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from temporal_adapter.adapter_core import metrics, video


def psnr(a, b):
    mse = float(((torch.as_tensor(a, dtype=torch.float64) - torch.as_tensor(b, dtype=torch.float64)) ** 2).mean())
    return 10 * math.log10(1.0 / mse) if mse else float("inf")


def pattern(height, width, seed=0):
    """Smooth, asymmetric uint8 RGB content: any flip or turn changes it a lot."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([x / width * 255, y / height * 255, (x + 2 * y) % 64 * 4], -1)
    rgb[: height // 3, : width // 4] = (255, 255, 0)  # a block in the top-left corner
    return np.clip(rgb + seed, 0, 255).astype(np.uint8)


def write_video(path, frames, fps=25, codec="libx264", pix_fmt="yuv444p", options=None, container_format=None,
                sample_aspect=None):
    with av.open(path, "w", format=container_format) as out:
        stream = out.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = pix_fmt
        if sample_aspect is not None:
            stream.codec_context.sample_aspect_ratio = sample_aspect
        stream.options = options if options is not None else {"qp": "0"}
        source = "rgba" if frames[0].shape[2] == 4 else "rgb24"
        for rgb in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format=source)))
        out.mux(stream.encode())
    return path


# ---- rotation -----------------------------------------------------------------------------------

def test_rot90_case_loads_upright_like_opencv_and_saves_upright(case, tmp_path):
    path = case("video/rot90.mp4")
    images, fps, info, mask = video.load(path)
    assert images.shape == (8, 64, 48, 3)  # 48 wide, 64 tall, as the phone showed it
    assert (info.width, info.height, info.rotation, info.mirrored) == (48, 64, 90, False)
    # OpenCV's FFmpeg backend turns frames by the display matrix's angle too (an independent reader).
    capture = cv2.VideoCapture(path)
    reference = []
    while (read := capture.read())[0]:
        reference.append(cv2.cvtColor(read[1], cv2.COLOR_BGR2RGB))
    assert np.stack(reference).shape == (8, 64, 48, 3)
    assert psnr(images, np.stack(reference) / 255.0) > 40
    saved = video.save(images, str(tmp_path / "edit.mp4"), "mp4", fps)
    again = video.load(saved)
    assert again.images.shape == (8, 64, 48, 3) and again.info.rotation == 0
    assert psnr(again.images, images) > 35


def set_display_matrix(path, matrix):
    """Write a 3x3 display matrix into the mp4's video track header (tkhd), as phones do."""
    data = bytearray(open(path, "rb").read())
    at = data.index(b"tkhd")
    offset = at + 4 + 4 + (20 if data[at + 4] == 0 else 32) + 8 + 8  # past version, times, id, volume
    data[offset:offset + 36] = struct.pack(">9i", *matrix)
    open(path, "wb").write(data)


def displayed(stored, a, b, c, d):
    """What the display matrix's definition shows (libavutil/display.h: a stored pixel at column p,
    row q goes to column a p + c q, row b p + d q, shifted into the frame), computed per pixel."""
    h, w = stored.shape[:2]
    q, p = np.mgrid[0:h, 0:w]
    col, row = a * p + c * q, b * p + d * q
    col, row = col - col.min(), row - row.min()
    out = np.zeros((row.max() + 1, col.max() + 1) + stored.shape[2:], stored.dtype)
    out[row, col] = stored[q, p]
    return out


ORIENTATIONS = {  # (a, b, c, d) of the matrix: (rotation clockwise, mirrored) as loaded
    (1, 0, 0, 1): (0, False), (-1, 0, 0, 1): (0, True), (1, 0, 0, -1): (180, True),
    (-1, 0, 0, -1): (180, False), (0, 1, -1, 0): (90, False), (0, -1, 1, 0): (270, False),
    (0, 1, 1, 0): (90, True), (0, -1, -1, 0): (270, True),
}


@pytest.mark.parametrize("abcd", ORIENTATIONS, ids=lambda m: "_".join(map(str, m)))
def test_every_display_matrix_rotation_and_flip_loads_as_defined(tmp_path, abcd):
    stored = pattern(24, 40)
    path = write_video(str(tmp_path / "phone.mp4"), [stored] * 2, options={"crf": "0"})
    a, b, c, d = abcd
    set_display_matrix(path, [a << 16, b << 16, 0, c << 16, d << 16, 0, 0, 0, 1 << 30])
    images, _, info, _ = video.load(path)
    expected = displayed(stored, a, b, c, d)
    assert images.shape[1:] == expected.shape
    assert psnr(images[0], expected / 255.0) > 40
    assert (info.rotation, info.mirrored) == ORIENTATIONS[abcd]
    assert (info.width, info.height) == (expected.shape[1], expected.shape[0])


@pytest.mark.parametrize("turned", [False, True], ids=["upright", "turned 90"])
def test_non_square_pixels_load_as_a_player_shows_them(tmp_path, turned):
    """Anamorphic footage stores pixels wider (or taller) than square, with a sample aspect ratio
    that players apply: stored 32x24 at 2:1 shows 64x24; a display matrix turns the shown picture."""
    stored = pattern(24, 32)
    path = write_video(str(tmp_path / "wide.mp4"), [stored] * 2, sample_aspect=Fraction(2, 1))
    shown = cv2.resize(stored, (64, 24), interpolation=cv2.INTER_CUBIC)
    if turned:
        set_display_matrix(path, [0, 1 << 16, 0, -1 << 16, 0, 0, 0, 0, 1 << 30])
        shown = displayed(shown, 0, 1, -1, 0)
    images, _, info, _ = video.load(path)
    assert images.shape[1:] == shown.shape and (info.width, info.height) == (shown.shape[1], shown.shape[0])
    assert info.pixel_aspect == (0.5 if turned else 2.0)
    assert psnr(images[0], shown / 255.0) > 35
    # a custom square size keeps the shown aspect: the centre square of the shown picture
    side = min(shown.shape[:2])
    square = video.load(path, video.LoadOptions(width=side, height=side)).images[0]
    y, x = (shown.shape[0] - side) // 2, (shown.shape[1] - side) // 2
    assert psnr(square, shown[y:y + side, x:x + side] / 255.0) > 30


def test_the_sample_clip_with_non_square_pixels_is_193_wide(clips):
    # carphone_pristine.mp4: 176x144 stored, sample aspect ratio 128/117, shown 193x144 by browsers
    images, _, info, _ = video.load(clips["carphone_pristine.mp4"], video.LoadOptions(frame_load_cap=2))
    assert images.shape == (2, 144, 193, 3) and info.pixel_aspect == pytest.approx(128 / 117)


def test_orientation_of_a_display_matrix_between_quarter_turns_snaps_to_the_nearest():
    angle = math.radians(80)  # about a quarter turn clockwise: the phone's sensor was tilted
    m = [round(math.cos(angle) * 65536), round(math.sin(angle) * 65536), 0,
         round(-math.sin(angle) * 65536), round(math.cos(angle) * 65536), 0, 0, 0, 1 << 30]
    assert video.Orientation.from_display_matrix(m).rotation == 90


def exif_image(path, tag, size=(40, 24)):
    image = Image.fromarray(pattern(size[1], size[0]))
    exif = Image.Exif()
    exif[0x0112] = tag
    image.save(path, exif=exif)
    return path


@pytest.mark.parametrize("tag", range(1, 9))
def test_every_exif_orientation_loads_as_comfyuis_load_image_shows_it(tmp_path, tag):
    path = exif_image(str(tmp_path / f"photo{tag}.png"), tag)
    images, _, info, _ = video.load(path)
    with Image.open(path) as image:
        expected = np.array(ImageOps.exif_transpose(image).convert("RGB"))  # Load Image's way
    assert images.shape == (1,) + expected.shape
    assert torch.equal(images[0], torch.from_numpy(expected).float() / 255)
    assert (info.rotation, info.mirrored) == (video.Orientation.from_exif(tag).rotation,
                                              video.Orientation.from_exif(tag).mirrored)


def move_png_exif_after_pixels(path):
    """Rewrite a PNG with its eXIf chunk just before IEND, after the image data (PNG 1.5 allows it)."""
    data = open(path, "rb").read()
    chunks, at = [], 8
    while at < len(data):
        length = struct.unpack(">I", data[at:at + 4])[0]
        chunks.append(data[at:at + 12 + length])
        at += 12 + length
    exif = [c for c in chunks if c[4:8] == b"eXIf"]
    rest = [c for c in chunks if c[4:8] != b"eXIf"]
    assert len(exif) == 1 and rest[-1][4:8] == b"IEND"
    open(path, "wb").write(data[:8] + b"".join(rest[:-1] + exif + rest[-1:]))


@pytest.mark.parametrize("tag", [6, 8])
def test_png_exif_after_the_pixels_turns_the_image_and_its_size(tmp_path, tag):
    """The header pass must see EXIF that follows the image data, as Load Image does: it once saw
    64x48 upright while each frame was turned, and the turned frames were cropped back to 64x48."""
    folder = tmp_path / "late_exif"
    folder.mkdir()
    for i in range(2):
        move_png_exif_after_pixels(exif_image(str(folder / f"f{i}.png"), tag, size=(64, 48)))
    with Image.open(folder / "f0.png") as image:
        assert "exif" not in image.info  # Pillow has not seen it before decoding
        expected = np.array(ImageOps.exif_transpose(image).convert("RGB"))  # Load Image's way
    images, _, info, _ = video.load(str(folder))
    assert expected.shape == (64, 48, 3) and images.shape == (2, 64, 48, 3)
    assert (info.width, info.height, info.rotation) == (48, 64, video.Orientation.from_exif(tag).rotation)
    assert torch.equal(images[0], torch.from_numpy(expected).float() / 255)


@pytest.mark.parametrize("mode", ["I;16", "L", "RGB"])
@pytest.mark.parametrize("compression", ["tiff_lzw", "raw"])
def test_oriented_tiff_loads_as_load_image_shows_it(tmp_path, mode, compression):
    """Pillow turns some TIFFs itself while decoding (which, and the size it reports before, differ
    between Pillow 10 and 13): turning them again by the EXIF tag gave a wrong picture."""
    stored = pattern(48, 64)
    image = Image.fromarray(stored) if mode == "RGB" else \
        Image.fromarray(stored[..., 0].astype(np.uint16) * 257 if mode == "I;16" else stored[..., 0])
    exif = Image.Exif()
    exif[0x0112] = 6
    path = str(tmp_path / "scan.tif")
    image.save(path, exif=exif, compression=compression)
    with Image.open(path) as opened:
        expected = ImageOps.exif_transpose(opened)  # Load Image's way
        expected = np.asarray(expected.convert("RGB")) / 255.0 if mode != "I;16" else \
            np.repeat(np.asarray(expected, np.float64)[..., None] / 65535, 3, -1)
    images, _, info, _ = video.load(path)
    assert images.shape == (1,) + expected.shape and info.rotation == 90
    assert torch.allclose(images[0].double(), torch.from_numpy(expected), atol=1e-6)
    if compression == "tiff_lzw":  # the picture a viewer shows: stored turned 90 degrees clockwise
        upright = np.rot90(stored if mode == "RGB" else stored[..., :1].repeat(3, -1), -1) / 255.0
        assert torch.allclose(images[0].double(), torch.from_numpy(upright.copy()), atol=1e-6)


def test_a_picture_decoded_at_another_size_than_its_header_is_refused(tmp_path, monkeypatch):
    path = exif_image(str(tmp_path / "photo.png"), 6)
    monkeypatch.setattr(video, "_picture", lambda image: np.zeros((24, 40, 3), np.uint8))  # not turned
    with pytest.raises(video.VideoError, match=r"photo\.png: decoded at 40x24 but its header says 24x40"):
        video.load(path)


def test_exif_rotated_case_loads_as_load_image_shows_it(case):
    folder = case("video/exif_rotated_seq")
    images, _, info, _ = video.load(folder)
    assert images.shape == (3, 64, 48, 3) and info.rotation == 90
    for frame, name in zip(images, sorted(os.listdir(folder))):
        with Image.open(os.path.join(folder, name)) as image:
            expected = np.array(ImageOps.exif_transpose(image).convert("RGB"))
        assert torch.equal(frame, torch.from_numpy(expected).float() / 255), name


# ---- bit depth and colour modes -----------------------------------------------------------------

def test_grey16_case_scales_to_its_own_range(case):
    images = video.load(case("video/grey16_seq")).images
    assert images.shape == (1, 48, 64, 3)
    assert float(images.mean()) == pytest.approx(80.4 / 255, abs=0.002)  # not 1.0 (clipped)


def test_sixteen_bit_grey_and_rgb_pngs_keep_their_levels(tmp_path):
    grey = (np.arange(48 * 64).reshape(48, 64) * 21).astype(np.uint16)  # 0 .. 64491
    rgb = np.stack([grey, 65535 - grey, np.full_like(grey, 30000)], -1)
    (tmp_path / "grey").mkdir(), (tmp_path / "rgb").mkdir()
    assert cv2.imwrite(str(tmp_path / "grey" / "1.png"), grey)
    assert cv2.imwrite(str(tmp_path / "rgb" / "1.png"), rgb[..., ::-1])  # OpenCV writes BGR
    loaded = video.load(str(tmp_path / "grey"))
    assert loaded.info.bit_depth == 16
    assert torch.allclose(loaded.images[0, ..., 0], torch.from_numpy(grey / 65535).float(), atol=1e-6)
    loaded = video.load(str(tmp_path / "rgb"))
    assert float((loaded.images[0] - torch.from_numpy(rgb / 65535)).abs().max()) <= 1 / 255  # Pillow keeps 8 bits


def test_ten_bit_video_keeps_its_levels(tmp_path):
    ramp = (np.arange(32 * 48).reshape(32, 48) * 40 % 65536).astype(np.uint16)
    rgb = np.stack([ramp, ramp // 2, 65535 - ramp], -1)
    path = str(tmp_path / "ten.mkv")
    with av.open(path, "w") as out:
        stream = out.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv444p10le"
        for _ in range(2):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb48le")))
        out.mux(stream.encode())
    loaded = video.load(path)
    assert loaded.info.bit_depth == 10
    # 10-bit YUV holds each level to ~1/1000; an 8-bit conversion is off by up to 2/255 here.
    assert float((loaded.images[0] - torch.from_numpy(rgb / 65535)).abs().max()) < 1 / 255


@pytest.mark.parametrize("mode", ["P", "P-transparent", "LA", "CMYK", "1", "RGBA"])
def test_colour_modes_load_as_load_image_reads_them(tmp_path, mode):
    rgba = np.dstack([pattern(24, 40), np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (24, 1))])
    image = Image.fromarray(rgba)
    if mode == "P":
        image = image.convert("RGB").convert("P", palette=Image.ADAPTIVE)
    elif mode == "P-transparent":
        image = image.convert("RGB").convert("P", palette=Image.ADAPTIVE)
        image.info["transparency"] = image.getpixel((0, 0))
    elif mode != "RGBA":
        image = image.convert(mode)
    name = "image.jpg" if mode == "CMYK" else "image.png"
    image.save(tmp_path / name, **({"transparency": image.info["transparency"]} if mode == "P-transparent" else {}))
    images, _, info, mask = video.load(str(tmp_path / name))
    with Image.open(tmp_path / name) as saved:  # ComfyUI's Load Image, step by step
        colour = np.asarray(saved.convert("RGB")) / 255.0
        if "A" in saved.getbands() or (saved.mode == "P" and "transparency" in saved.info):
            expected_mask = 1 - np.asarray(saved.convert("RGBA").getchannel("A")) / 255.0
        else:
            expected_mask = np.zeros((64, 64))
    assert torch.allclose(images[0], torch.from_numpy(colour).float(), atol=1e-6)
    assert mask.shape == (1,) + expected_mask.shape
    assert torch.allclose(mask[0], torch.from_numpy(expected_mask).float(), atol=1e-6)
    assert info.alpha == (mode in ("P-transparent", "LA", "RGBA"))


# ---- alpha --------------------------------------------------------------------------------------

def test_vp9_alpha_case_gives_the_alpha_as_a_mask(case):
    path = case("video/vp9_alpha.webm")
    images, _, info, mask = video.load(path)
    assert images.shape == (4, 48, 64, 3) and mask.shape == (4, 48, 64) and info.alpha
    with av.open(path) as container:  # the alpha plane as libvpx decodes it
        decoder = av.CodecContext.create("libvpx-vp9", "r")
        alpha = [f.to_ndarray(format="rgba")[..., 3] for p in container.demux(video=0) for f in decoder.decode(p)]
    assert torch.allclose(mask, 1 - torch.from_numpy(np.stack(alpha) / 255.0).float(), atol=1e-6)
    assert 0.2 < float(mask.mean()) < 0.8  # neither all opaque nor all transparent


def rgba_frames(count=3, height=48, width=64):
    # 64 wide: PyAV 13's VideoFrame.from_ndarray("rgba") corrupts the heap when encoding 40-wide
    # yuva420p frames (seen with MALLOC_CHECK_=3; PyAV 18 is fine); this is only the test's writer.
    frames = []
    for i in range(count):
        alpha = np.tile(np.linspace(0, 255, width).astype(np.uint8), (height, 1))
        alpha[:, : 4 * (i + 1)] = 255
        frames.append(np.dstack([pattern(height, width, seed=20 * i), alpha]))
    return frames


MOV_ALPHA = {"png in mov": ("png", "rgba", {}), "qtrle mov": ("qtrle", "argb", {}),
             "prores 4444 mov": ("prores_ks", "yuva444p10le", {"profile": "4"})}


@pytest.mark.parametrize("kind", ["rgba png folder", *MOV_ALPHA, "vp9 webm", "no alpha"])
def test_alpha_of_each_kind_of_source_becomes_the_mask(tmp_path, kind):
    frames = rgba_frames()
    if kind == "rgba png folder":
        for i, rgba in enumerate(frames):
            Image.fromarray(rgba).save(tmp_path / f"{i}.png")
        path, exact = str(tmp_path), True
    elif kind in MOV_ALPHA:
        codec, pix_fmt, options = MOV_ALPHA[kind]
        path = write_video(str(tmp_path / "a.mov"), frames, codec=codec, pix_fmt=pix_fmt, options=options)
        exact = codec != "prores_ks"
    elif kind == "vp9 webm":
        path = write_video(str(tmp_path / "a.webm"), frames, codec="libvpx-vp9", pix_fmt="yuva420p",
                           options={"crf": "4", "b": "0"})
        exact = False
    else:
        path = write_video(str(tmp_path / "a.mp4"), [f[..., :3] for f in frames])
        images, _, info, mask = video.load(path)
        assert not info.alpha and torch.equal(mask, torch.zeros(3, 64, 64))  # Load Image's "no mask"
        return
    images, _, info, mask = video.load(path)
    expected = 1 - torch.from_numpy(np.stack([f[..., 3] for f in frames]) / 255.0).float()
    assert info.alpha and mask.shape == (3, 48, 64)
    assert float((mask - expected).abs().max()) <= (1e-6 if exact else 0.06)
    colour = torch.from_numpy(np.stack([f[..., :3] for f in frames]) / 255.0).float()
    # vp9: lossy yuv 4:2:0 of a sharp pattern; prores: 12-bit yuv 4:4:4
    assert psnr(images, colour) > {"vp9 webm": 24, "prores 4444 mov": 40}.get(kind, 99)


# ---- unknown length -----------------------------------------------------------------------------

def test_live_recording_without_length_is_refused_before_decoding(case):
    path = case("video/live_noduration.webm")
    calls = []
    with pytest.raises(video.VideoError, match=r"live_noduration\.webm: loading 60 frames at 64x48 needs "
                                               r"2\.1 MiB .*only 0\.2 MiB .*frame_load_cap to 5 or less"):
        video.load(path, available_bytes=200_000, progress=lambda *a: calls.append(a))
    assert calls == []  # refused before any frame was decoded
    loaded = video.load(path)
    assert len(loaded.images) == 60 and loaded.info.frame_count == 60
    assert loaded.info.duration == pytest.approx(2.4)


def test_a_clip_longer_than_its_container_said_stops_at_the_memory_limit(case, monkeypatch):
    # A container that under-reports its length (here: the packet count made to say 5 of 60):
    # the check while decoding stops at what memory allows, with the same message.
    monkeypatch.setattr(video._ContainerSource, "_packet_times",
                        lambda self, stream: [(i / 25, 1 / 25) for i in range(5)])
    path = case("video/live_noduration.webm")
    calls = []
    with pytest.raises(video.VideoError, match=r"live_noduration\.webm: loading 11 frames \(at least: the "
                                               r"container did not say how many\) at 64x48 .*only 0\.4 MiB"):
        video.load(path, available_bytes=10 * 64 * 48 * 12, progress=lambda *a: calls.append(a))
    assert len(calls) == 10  # the frames that fit were decoded, not one more


# ---- frame timing -------------------------------------------------------------------------------

DURATIONS_MS = [40, 120, 40, 200, 40, 40]  # frames shown at 0, .04, .16, .20, .40, .44 s; 0.48 s long
ON_SCREEN_AT_25 = [0, 1, 1, 1, 2, 3, 3, 3, 3, 3, 4, 5]  # ticks 0, .04 ... .44: the frame shown then


def check_resampled(path):
    frames = video.load(path).images
    ticked = video.load(path, video.LoadOptions(force_rate=25)).images
    assert len(ticked) == 12  # not 13: the last frame lasts its own 40 ms
    for k, i in enumerate(ON_SCREEN_AT_25):
        assert torch.equal(ticked[k], frames[i]), f"tick {k} should show frame {i}"


def test_vardur_gif_case_at_25_fps_is_12_frames(case):
    check_resampled(case("video/vardur.gif"))


@pytest.mark.parametrize("ext", ["gif", "webp"])
def test_frames_with_their_own_durations_resample_like_a_fixed_rate_resampler(tmp_path, ext):
    pictures = [Image.fromarray(np.full((24, 32, 3), 30 * i + 10, np.uint8)) for i in range(6)]
    path = str(tmp_path / f"vardur.{ext}")
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=DURATIONS_MS, loop=0,
                     **({"lossless": True} if ext == "webp" else {}))
    check_resampled(path)
    assert video.load(path).info.duration == pytest.approx(0.48)


@pytest.mark.parametrize("ext", ["gif", "webp"])
def test_frames_of_10_ms_or_less_last_100_ms_as_players_show_them(tmp_path, ext):
    """Animation frames of 0 ms (no timing written) or 10 ms play for 100 ms in a browser."""
    pictures = [Image.fromarray(np.full((24, 32, 3), 30 * i + 10, np.uint8)) for i in range(6)]
    path = str(tmp_path / f"untimed.{ext}")
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=[0, 10, 0, 10, 0, 10], loop=0,
                     **({"lossless": True} if ext == "webp" else {}))
    frames = video.load(path)
    ticked = video.load(path, video.LoadOptions(force_rate=25)).images
    assert len(frames.images) == 6 and len(ticked) == 15  # 0.6 s at 25 fps
    assert frames.fps == pytest.approx(10) and frames.info.duration == pytest.approx(0.6)
    for k in range(15):
        i = math.floor(k * 0.04 / 0.1 + 1e-9)
        assert torch.equal(ticked[k], frames.images[i]), f"tick {k} should show frame {i}"


def test_variable_rate_mp4_resamples_by_timestamps(tmp_path):
    path = str(tmp_path / "vfr.mp4")
    starts_ms = np.cumsum([0] + DURATIONS_MS[:-1])
    with av.open(path, "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 32, 24, "yuv444p"
        stream.codec_context.time_base = Fraction(1, 1000)
        stream.options = {"qp": "0", "bf": "0"}
        for i, start in enumerate(starts_ms):
            frame = av.VideoFrame.from_ndarray(np.full((24, 32, 3), 30 * i + 10, np.uint8), format="rgb24")
            frame.pts, frame.time_base = int(start), Fraction(1, 1000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    loaded = video.load(path)
    ticked = video.load(path, video.LoadOptions(force_rate=25))
    assert len(loaded.images) == 6
    assert len(ticked.images) == math.ceil(loaded.info.duration * 25 - 1e-6)
    for k, i in enumerate(ON_SCREEN_AT_25[:11]):  # up to the last frame's start (its end is the muxer's)
        assert torch.equal(ticked.images[k], loaded.images[i]), f"tick {k} should show frame {i}"


# ---- sizes --------------------------------------------------------------------------------------

def test_an_animated_image_in_a_folder_is_refused_naming_it(tmp_path):
    """A folder is one frame per image: an animated file among them is named, not half-counted."""
    folder = tmp_path / "frames"
    folder.mkdir()
    pictures = [Image.fromarray(pattern(24, 32, seed)) for seed in (0, 40, 80)]
    pictures[0].save(folder / "f1.png")
    pictures[0].save(folder / "f2.webp", save_all=True, append_images=pictures[1:], duration=40, lossless=True)
    with pytest.raises(video.VideoError, match=r"frames: f2\.webp holds 3 frames, but a folder is read as "
                                               r"one frame per image"):
        video.load(str(folder))


def test_a_camera_mpo_jpeg_is_one_photo_as_load_image_reads_it(tmp_path):
    """Phones and cameras write JPEGs holding a second, smaller picture (MPO): one frame a file."""
    folder = tmp_path / "camera"
    folder.mkdir()
    for i in range(2):
        photo = Image.fromarray(pattern(48, 64, 40 * i))
        photo.save(folder / f"IMG_{i}.jpg", "MPO", save_all=True, append_images=[photo.resize((32, 24))])
    with Image.open(folder / "IMG_0.jpg") as image:
        assert image.format == "MPO" and image.n_frames == 2
        expected = np.array(image.convert("RGB"))
    images, _, info, _ = video.load(str(folder))
    assert images.shape == (2, 48, 64, 3) and info.frame_count == 2
    assert torch.equal(images[0], torch.from_numpy(expected).float() / 255)


def test_mixed_sizes_case_is_refused_naming_the_odd_image(case):
    folder = case("video/mixed_sizes_seq")
    with pytest.raises(video.VideoError, match=r"mixed_sizes_seq: the images differ in size: f1\.png is 64x48 "
                                               r"but f2\.png is 48x64 .*custom_width and custom_height"):
        video.load(folder)
    with pytest.raises(video.VideoError, match=r"f2\.png is 48x64"):  # one side set: still refused
        video.load(folder, video.LoadOptions(width=64))
    loaded = video.load(folder, video.LoadOptions(width=64, height=48))  # the stated way out
    assert loaded.images.shape == (3, 48, 64, 3)


def test_an_odd_size_clip_loads_as_is_and_metrics_compare_the_vae_crop(case):
    images = video.load(case("video/odd_65x49_444.mp4")).images
    assert images.shape == (6, 49, 65, 3)  # the source size is kept; the VAE crops to 64x48
    edited = images[:, :48, :64]  # ComfyUI's VAE encode: centre crop, offset (side % 8) // 2 = 0
    report = metrics.consistency_report(images, edited)
    assert (report["width"], report["height"]) == (64, 48)
    assert "64x48 area at x=0, y=0 of the 65x49 source" in report["compared"]
    assert report["warp_error"] == pytest.approx(report["source_warp_error"], abs=1e-6)


@pytest.mark.parametrize("mode", video.RESIZE_MODES)
def test_resize_modes_crop_pad_and_stretch(mode):
    # A 64x32 frame with a 16x16 black square in its centre, loaded at 32x32.
    frame = np.full((32, 64, 3), 255, np.uint8)
    frame[8:24, 24:40] = 0
    out = video.fit(frame, 32, 32, mode)
    assert out.shape == (32, 32, 3)
    dark = np.argwhere(out[..., 0] < 128)
    height, width = np.ptp(dark[:, 0]) + 1, np.ptp(dark[:, 1]) + 1
    if mode == "crop":  # the centre 32x32 at full scale: the square stays 16x16
        assert (height, width) == (16, 16) and out[0, 0, 0] == 255
    elif mode == "pad":  # scaled by 1/2 into a 32x16 band, black borders above and below
        assert out[0, 16, 0] == 0 and out[16, 0, 0] == 255
        assert width == 32 or np.ptp(np.argwhere(out[8:24, :, 0] < 128)[:, 1]) + 1 == 8
    else:  # stretch: the square becomes an 8 wide, 16 tall block
        assert (height, width) == (16, 8)


def test_custom_size_with_both_sides_keeps_the_aspect_by_default(clips):
    # bikes.mp4 is 640x272: at 256x256 the default crops the sides instead of squeezing.
    options = video.LoadOptions(frame_load_cap=1, width=256, height=256)
    cropped = video.load(clips["bikes.mp4"], options).images[0].numpy()
    full = video.load(clips["bikes.mp4"], video.LoadOptions(frame_load_cap=1)).images[0].numpy()
    centre = full[:, 184:456]  # the centre 272x272 of 640x272
    expected = cv2.resize(np.ascontiguousarray(centre), (256, 256), interpolation=cv2.INTER_AREA)
    assert psnr(cropped, expected) > 40
    stretched = video.load(clips["bikes.mp4"], video.LoadOptions(frame_load_cap=1, width=256, height=256,
                                                                  resize_mode="stretch")).images[0]
    assert psnr(stretched, expected) < 25


def huge_png(path, side=16384):
    """A PNG whose header says side x side (the pixel data is a stub: it is never decoded)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                + chunk(b"IEND", b""))


def test_huge_images_get_the_loaders_own_message_naming_the_file(tmp_path):
    Image.fromarray(pattern(24, 40)).save(tmp_path / "frame1.png")
    huge_png(str(tmp_path / "frame2.png"))
    with pytest.raises(video.VideoError, match=r"frame2\.png: the image has more than \d+ megapixels.*"
                                               r"decompression bombs.*would need over .* GiB.*Scale the images"):
        video.load(str(tmp_path))


def test_the_largest_image_of_a_folder_counts_in_the_memory_check(tmp_path):
    for i, side in enumerate((64, 64, 2048)):
        Image.fromarray(np.zeros((side, side, 3), np.uint8)).save(tmp_path / f"{i}.png")
    with pytest.raises(video.VideoError, match=r"loading 3 frames at 32x32 needs .* plus 24\.0 MiB to decode "
                                               r"2\.png \(2048x2048\), but only"):
        video.load(str(tmp_path), video.LoadOptions(width=32, height=32), available_bytes=20 * 2**20)


# ---- saving -------------------------------------------------------------------------------------

def exact_uint8(images):
    """x * 255 rounded half to even in float64, where the product of a float32 and 255 is exact."""
    return images.double().mul(255).round().clamp(0, 255).to(torch.uint8).numpy()


@pytest.fixture(params=["as installed", "float64 frames"])
def conversion(request, monkeypatch):
    """to_uint8 with the installed OpenCV, and as it runs where OpenCV multiplies float32 in float32 (5.1)."""
    if request.param == "float64 frames":
        monkeypatch.setattr(video, "_MULTIPLIES_FLOAT32_EXACTLY", False)


def test_uint8_conversion_is_the_exact_rounding_in_one_pass(conversion):
    images = torch.rand(37, 7, 9, 3) * 1.2 - 0.1  # out of range values too; 37 spans several chunks
    out = video.to_uint8(images, even=True)
    expected = exact_uint8(images)
    assert out.shape == (37, 8, 10, 3)
    assert np.array_equal(out[:, :7, :9], expected)
    assert np.array_equal(out[:, 7, :9], expected[:, 6]) and np.array_equal(out[:, :7, 9], expected[:, :, 8])
    assert np.array_equal(video.to_uint8(images[:, :6, :8]), expected[:, :6, :8])  # even: written in place
    assert np.array_equal(video.to_uint8(images.half()), exact_uint8(images.half()))


def test_uint8_conversion_rounds_the_exact_product_where_float32_lands_on_a_half(conversion):
    """Found by a fresh run (random frames): 0.2764706 * 255 is 70.5000034, which float32 rounds to 70.5 and
    then to even 70; the exact product rounds to 71. Values of this kind both ways, and 0.5, the one float32
    whose product is exactly a half (127.5: to even, 128)."""
    values = torch.tensor([0.2764706015586853, 0.970588207244873, 0.39411765336990356, 0.813725471496582, 0.5])
    images = values.view(1, 1, -1, 1).expand(1, 1, -1, 3).contiguous()
    assert video.to_uint8(images)[0, 0, :, 0].tolist() == exact_uint8(images)[0, 0, :, 0].tolist() == [
        71, 247, 101, 207, 128]


def test_preview_is_small_and_plays_in_real_time(tmp_path):
    first = pattern(136, 320)
    frames = np.stack([np.roll(first, 2 * i, axis=1) for i in range(250)])  # all different
    video.write_preview(frames, str(tmp_path / "p.webp"), 25)
    with Image.open(tmp_path / "p.webp") as preview:
        assert preview.n_frames <= video.PREVIEW_FRAMES and max(preview.size) == video.PREVIEW_SIDE
        total_ms = 0
        for frame in range(preview.n_frames):
            preview.seek(frame)
            preview.load()
            total_ms += preview.info["duration"]
    assert total_ms == pytest.approx(10_000, rel=0.03)  # 250 frames at 25 fps
    assert os.listdir(tmp_path) == ["p.webp"]
