"""The PyAV features adapter_core.video relies on, tested on whatever PyAV is installed: every PyAV
from 13.1 to 18.1.1 is supported, and their side data APIs differ (iterating frame.side_data gives
SideData items up to 18.1.0, a mapping's Type keys from 18.1.1). Clips are made here.

Tested through video.load in test_video_footage.py, and not repeated here:
    display matrix, all 8 turns and mirror images: test_every_display_matrix_rotation_and_flip_loads_as_defined
    a phone's rotated clip: test_rot90_case_loads_upright_like_opencv_and_saves_upright
    alpha (VP9 alpha_mode=1 through libvpx, ProRes 4444, RGBA in png/qtrle mov and png files):
        test_vp9_alpha_case_gives_the_alpha_as_a_mask, test_alpha_of_each_kind_of_source_becomes_the_mask
    bits per component (format.components): test_ten_bit_video_keeps_its_levels
    frame timing (pts and time_base, frames of their own durations): test_variable_rate_mp4_resamples_by_timestamps,
        test_frames_with_their_own_durations_resample_like_a_fixed_rate_resampler,
        test_vardur_gif_case_at_25_fps_is_12_frames
Here: the side data and rotation of decoded frames themselves.
"""
import io
from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image
from test_video_footage import ORIENTATIONS, pattern, psnr, set_display_matrix, write_video

from temporal_adapter.adapter_core import video


def first_frame(path):
    with av.open(path) as container:
        return next(container.decode(video=0))


TURNS = {abcd: turn for abcd, (turn, mirrored) in ORIENTATIONS.items() if not mirrored}


@pytest.mark.parametrize("abcd", TURNS, ids=lambda m: "_".join(map(str, m)))
def test_display_matrix_of_a_decoded_frame_and_pyavs_own_rotation_agree(tmp_path, abcd):
    """frame_orientation reads the matrix from the frame's side data (beside x264's SEI_UNREGISTERED);
    PyAV 14 on also says the angle as frame.rotation, counterclockwise: the fallback's convention."""
    path = write_video(str(tmp_path / "phone.mp4"), [pattern(24, 40)] * 2, options={"crf": "0"})
    a, b, c, d = abcd
    set_display_matrix(path, [a << 16, b << 16, 0, c << 16, d << 16, 0, 0, 0, 1 << 30])
    frame = first_frame(path)
    orientation = video.frame_orientation(frame)
    assert (orientation.rotation, orientation.mirrored) == (TURNS[abcd], False)
    if hasattr(frame, "rotation"):
        assert -frame.rotation % 360 == TURNS[abcd]


class SideDataPyAVCannotList:
    """A frame as PyAV 14 to 18.1.0 give one that carries a kind of side data their enum lacks."""

    def __init__(self, rotation):
        self.rotation = rotation

    @property
    def side_data(self):
        raise ValueError("31 is not a valid Type")


@pytest.mark.parametrize("rotation,clockwise", [(0, 0), (-90, 90), (180, 180), (-180, 180), (90, 270)])
def test_a_frame_whose_side_data_pyav_cannot_list_is_turned_by_its_rotation(rotation, clockwise):
    orientation = video.frame_orientation(SideDataPyAVCannotList(rotation))
    assert (orientation.rotation, orientation.mirrored) == (clockwise, False)


def write_mjpeg(path, jpegs, width, height):
    """A camera's MJPEG AVI: the JPEG files themselves as its packets."""
    with av.open(path, "w", format="avi") as out:
        stream = out.add_stream("mjpeg", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuvj444p"
        for i, jpeg in enumerate(jpegs):
            packet = av.Packet(jpeg)
            packet.stream, packet.pts, packet.time_base = stream, i, Fraction(1, 25)
            out.mux(packet)
    return path


SHOWN = {6: lambda stored: np.rot90(stored, -1), 5: lambda stored: stored.swapaxes(0, 1)}  # EXIF's definitions


@pytest.mark.parametrize("tag", SHOWN, ids=["turned", "turned and mirrored"])
def test_mjpeg_frames_with_exif_load_as_ffmpeg_turns_them(tmp_path, tag):
    """FFmpeg turns each JPEG frame's EXIF orientation into a display matrix; the FFmpeg of PyAV 17.1
    on also gives the frames the EXIF itself, a kind of side data that PyAV 17.1 to 18.1.0 cannot list."""
    exif = Image.Exif()
    exif[0x0112] = tag
    stored, jpegs = [pattern(24, 40, seed=20 * i) for i in range(3)], []
    for rgb in stored:
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, "JPEG", quality=95, subsampling=0, exif=exif.tobytes())
        jpegs.append(buffer.getvalue())
    path = write_mjpeg(str(tmp_path / "camera.avi"), jpegs, 40, 24)
    try:
        first_frame(path).side_data
        shown = tag
    except ValueError:  # only frame.rotation is left: the mirror image is lost
        shown = 6
    images, _, info, _ = video.load(path)
    assert (info.rotation, info.mirrored, info.width, info.height) == (90, shown == 5, 24, 40)
    assert psnr(images, np.stack([SHOWN[shown](rgb) for rgb in stored]) / 255.0) > 35
