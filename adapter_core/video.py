"""Streamed video decoding and encoding (PyAV), frame selection, memory estimate, safe paths.

Decoding streams frame by frame into one preallocated float32 array that is filled in place and
trimmed at the end, so a decoded clip is never held twice. Frame selection follows
VideoHelperSuite's options, applied in this order:

    force_rate (resample to a new rate: drop or repeat frames)
    -> skip_first_frames -> select_every_nth -> frame_load_cap -> resize (custom width/height)

Sources: any container FFmpeg reads (mp4, webm, mov, mkv, avi, gif), animated or still webp and
still images (Pillow: FFmpeg cannot decode animated webp), and a folder of numbered images.
Frames come out as a player shows them: turned upright by the container's display matrix or the
images' EXIF orientation, deeper than 8 bits scaled from their own range, with the alpha channel
(when there is one) as a mask.
Encoding: mp4 (h264), webm (vp9) through PyAV; animated gif and webp and PNG sequences through
Pillow (an adaptive palette per gif frame, and the host's metadata conventions for webp and PNG).
Pillow comes with every ComfyUI host (and with matplotlib).
"""
import hashlib
import importlib
import math
import os
import re
import struct
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import NamedTuple

import av
import cv2
import numpy as np
import torch
from av.sidedata.sidedata import SideData
from PIL import Image, ImageOps, ImageSequence
from PIL.PngImagePlugin import PngInfo

from .atomic import atomic_path

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".webm", ".mov", ".mkv", ".avi", ".gif", ".webp")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
PILLOW_EXTENSIONS = (".webp",) + IMAGE_EXTENSIONS
SEQUENCE_FPS = 24.0  # an image folder's rate: force_rate, else the "fps" our PNGs store, else this
SIZE_MULTIPLE = 8  # custom sizes are rounded to it: latents are 1/8 of the image
SAVE_FORMATS = ("mp4", "webm", "gif", "webp", "png")
DEFAULT_CRF = 19
_EPS = 1e-6  # seconds: timestamps closer than this are the same instant


class VideoError(ValueError):
    """A video cannot be loaded or saved; the message names the file, the reason and the fix."""


# ---- paths --------------------------------------------------------------------------------------

def resolve_path(path, roots):
    """The real path of a user-typed file or folder, which must lie inside one of `roots`.

    Relative paths are taken from the first root. `..` components are refused outright, and the
    symlink-resolved path must stay inside a root, so a link cannot escape either.
    """
    text = (path or "").strip().strip('"').strip("'").strip()
    if not text:
        raise VideoError("no video given: choose a file in the input folder or type a path")
    if ".." in re.split(r"[\\/]+", text):
        raise VideoError(f"{text}: '..' is not allowed in a video path; give a path inside "
                         "the input folder instead")
    roots = [os.path.realpath(r) for r in roots]
    real = os.path.realpath(os.path.join(roots[0], text))
    if not any(os.path.commonpath([real, root]) == root for root in roots):
        raise VideoError(f"{text}: outside the folders videos may be read from ({', '.join(roots)}); "
                         "copy it into the input folder")
    if not os.path.exists(real):
        raise VideoError(f"{text}: no such file or folder ({real}); upload the video or fix the name")
    return real


def list_videos(directory):
    """Names of the video files directly in `directory`, sorted (for a combo list)."""
    if not os.path.isdir(directory):
        return []
    return sorted(f for f in os.listdir(directory)
                  if f.lower().endswith(VIDEO_EXTENSIONS) and os.path.isfile(os.path.join(directory, f)))


def fingerprint(path, *extra):
    """sha256 of a file's (or an image folder's) content plus `extra` values."""
    h = hashlib.sha256(repr(extra).encode())
    files = _sequence_files(path) if os.path.isdir(path) else [path]
    for name in files:
        h.update(os.path.basename(name).encode())
        with open(name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _sequence_files(folder):
    """Image files of a folder in natural order (frame2 before frame10)."""
    names = [f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS)]
    key = lambda n: [int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", n)]
    return [os.path.join(folder, n) for n in sorted(names, key=key)]


# ---- orientation and pictures -------------------------------------------------------------------

@dataclass(frozen=True)
class Orientation:
    """How a player turns stored frames upright: transpose (swap rows and columns) first, then
    reverse the rows (flip top to bottom) and/or the columns (flip left to right).

    The eight combinations are the rotations by quarter turns with and without a mirror image.
    """
    transpose: bool = False
    flip_rows: bool = False
    flip_columns: bool = False

    @classmethod
    def from_display_matrix(cls, matrix):
        """From a display matrix (FFmpeg's AV_FRAME_DATA_DISPLAYMATRIX: 9 int32 in row order
        a b u / c d v / x y w, which maps a stored pixel (p, q) to (a p + c q + x, b p + d q + y),
        libavutil/display.h). Angles between quarter turns snap to the nearest one."""
        a, b, _, c, d = (int(v) for v in matrix[:5])
        if abs(a) + abs(d) < abs(b) + abs(c):  # stored columns become rows
            return cls(True, flip_rows=b < 0, flip_columns=c < 0)
        return cls(False, flip_rows=d < 0, flip_columns=a < 0)

    @classmethod
    def from_exif(cls, tag):
        """From an EXIF orientation tag (0x0112, values 1-8; anything else is upright)."""
        return _EXIF_ORIENTATIONS.get(tag, cls())

    def apply(self, array):
        """The upright view of a stored [H, W, ...] array (no copy)."""
        if self.transpose:
            array = array.swapaxes(0, 1)
        return array[::-1 if self.flip_rows else 1, ::-1 if self.flip_columns else 1]

    def size(self, width, height):
        """The upright (width, height) of a stored width x height frame."""
        return (height, width) if self.transpose else (width, height)

    @property
    def rotation(self):
        """Clockwise degrees of the turn (applied before the mirror image, if any)."""
        if self.transpose:
            return 270 if self.flip_rows else 90
        return 180 if self.flip_rows else 0

    @property
    def mirrored(self):
        """Whether the upright frame is also flipped left to right (after the rotation)."""
        return self.transpose ^ self.flip_rows ^ self.flip_columns


_EXIF_ORIENTATIONS = {2: Orientation(flip_columns=True), 3: Orientation(False, True, True),
                      4: Orientation(flip_rows=True), 5: Orientation(True), 6: Orientation(True, False, True),
                      7: Orientation(True, True, True), 8: Orientation(True, True, False)}


def frame_orientation(frame):
    """The Orientation a decoded frame's display matrix asks for (upright when it has none).

    The matrix is the frame's DISPLAYMATRIX side data, read as each PyAV documents frame.side_data:
    iterating it gives the SideData items (each with its .type) up to PyAV 18.1.0, and the keys
    (av.sidedata.sidedata.Type) of a mapping to them from 18.1.1 on. A kind of side data PyAV has no
    name for is a plain int in PyAV 13 and named UNKNOWN_<n> from 18.1.1, but PyAV 14 to 18.1.0 raise
    ValueError for it (the FFmpeg in PyAV 17.1 to 18.1.0 attaches the EXIF of JPEG frames so: an
    MJPEG clip). Then the matrix is unreachable and frame.rotation (PyAV 14 on: degrees
    counterclockwise) gives its angle alone: a mirror image in the matrix is lost.
    """
    try:
        side_data = frame.side_data
    except ValueError:
        return Orientation.from_exif((1, 6, 3, 8)[round(-frame.rotation / 90) % 4])  # quarter turns clockwise
    for entry in side_data:
        data = entry if isinstance(entry, SideData) else side_data[entry]
        if getattr(data.type, "name", None) == "DISPLAYMATRIX" and len(matrix := bytes(data)) >= 36:
            return Orientation.from_display_matrix(np.frombuffer(matrix[:36], np.int32))
    return Orientation()


RESIZE_MODES = ("crop", "pad", "stretch")


def fit(picture, width, height, mode="crop", pixel_aspect=1.0):
    """A [H, W, C] uint8/uint16 picture at width x height (square pixels).

    crop: scale to cover the target and cut the centre (keeps the aspect, loses edges);
    pad: scale to fit inside and add black, transparent borders (keeps the aspect and every pixel);
    stretch: scale each side on its own (changes the aspect).
    pixel_aspect: the width of the picture's pixels over their height as a player shows them (a
    video's sample aspect ratio, e.g. 128/117 for 176x144 shown as 193x144): aspects are those of
    the shown picture. Shrinking uses area averaging, enlarging bicubic interpolation (OpenCV).
    """
    h, w = picture.shape[:2]
    if (w, h) == (width, height) and pixel_aspect == 1:
        return picture
    if mode not in RESIZE_MODES:
        raise VideoError(f"resize_mode must be one of {', '.join(RESIZE_MODES)}, got {mode!r}")
    inner = (width, height)
    shown = w * pixel_aspect  # the picture's width in square pixels
    if mode == "crop":
        scale = max(width / shown, height / h)
        cw = min(w, max(1, round(width / scale / pixel_aspect)))
        ch = min(h, max(1, round(height / scale)))
        x, y = (w - cw) // 2, (h - ch) // 2
        picture = picture[y:y + ch, x:x + cw]
    elif mode == "pad":
        scale = min(width / shown, height / h)
        inner = (min(width, max(1, round(shown * scale))), min(height, max(1, round(h * scale))))
    shrink = inner[0] * inner[1] < picture.shape[0] * picture.shape[1]
    scaled = cv2.resize(np.ascontiguousarray(picture), inner,
                        interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    scaled = scaled.reshape(inner[1], inner[0], -1)
    if inner == (width, height):
        return scaled
    canvas = np.zeros((height, width, scaled.shape[2]), scaled.dtype)
    x, y = (width - inner[0]) // 2, (height - inner[1]) // 2
    canvas[y:y + inner[1], x:x + inner[0]] = scaled
    return canvas


# ---- sources: (time, picture) streams with their metadata ---------------------------------------

@dataclass(frozen=True)
class VideoInfo:
    """What the source says about itself, upright (width and height as a player shows them).

    frame_count is estimated when the container has no index; duration runs from the first frame
    to the end of the last one. rotation (clockwise degrees) and mirrored tell how the stored frames
    were turned upright; alpha whether frames carry transparency; bit_depth the bits per channel;
    pixel_aspect the stored pixels' width over height as shown (a video's sample aspect ratio: not 1
    for anamorphic footage, whose width and height here are the shown ones).
    """
    path: str
    fps: float
    frame_count: int
    duration: float
    width: int
    height: int
    codec: str
    rotation: int = 0
    mirrored: bool = False
    alpha: bool = False
    bit_depth: int = 8
    pixel_aspect: float = 1.0

    def as_dict(self):
        return asdict(self)


def _describe_failure(path, error):
    """Why FFmpeg could not open `path`: an incomplete video, or not a video at all."""
    name = os.path.basename(path)
    with open(path, "rb") as f:
        head = f.read(12)
    if not head:
        return VideoError(f"{name}: the file is empty (0 bytes); upload or export it again")
    if head[4:8] == b"ftyp" or head[:4] in (b"\x1aE\xdf\xa3", b"RIFF", b"GIF8"):
        return VideoError(f"{name}: the video is damaged or truncated (incomplete download or copy?): "
                          f"FFmpeg says {error}. Download or export it again")
    return VideoError(f"{name}: not a video file: its content is no known video format (a renamed "
                      f"file?). FFmpeg says {error}. Export it as mp4 or webm")


def _truncated(name, detail):
    return VideoError(f"{name}: the video is damaged or truncated (incomplete download or copy?): "
                      f"{detail}. Download or export it again")


def shown_duration_ms(duration_ms):
    """How long a player shows a frame of an animated image that asks for `duration_ms` (ms).

    Players show a frame of 10 ms or less (0 or unset: tools that write no timing) for 100 ms:
    WebKit's ImageDecoderCG::frameDurationAtIndex, "following Firefox's behavior". Applied to
    animated webp, PNG and GIF; FFmpeg's GIF demuxer turns only a 0 delay into 100 ms and keeps 10 ms,
    Pillow's timestamps put 0 ms frames all at 0 s (a force_rate of them repeated the last frame).
    """
    return duration_ms if duration_ms and duration_ms > 10 else 100


# The shortest frame (ms) each animated-image format plays as asked: players show frames of 10 ms or less
# for 100 ms (shown_duration_ms), and GIF stores delays in 1/100 s.
SHORTEST_FRAME_MS = {"gif": 20, "webp": 11}


def fastest_played_rate(fmt):
    """The highest whole fps at which an animated `fmt` ("gif", "webp") plays as asked (gif 51, webp 95),
    None for other formats: its frames, stored as round(1000 / fps) ms, are then SHORTEST_FRAME_MS long."""
    shortest = SHORTEST_FRAME_MS.get(fmt)
    return int(1000 / (shortest - 0.5)) if shortest else None


def check_played_rate(fmt, fps):
    """Raise VideoError naming `fps` when it is above fastest_played_rate(fmt): faster, an animated gif or
    webp has frames (stored as round(1000 / fps) ms; GIF: whole 1/100 s) of 10 ms or less, shown for 100 ms
    each (a 60 fps GIF plays at 10 fps). Other formats have no limit."""
    fastest = fastest_played_rate(fmt)
    if fastest is not None and fps > fastest:
        stored = round(1000 / fps) // 10 * 10 if fmt == "gif" else round(1000 / fps)
        raise VideoError(f"fps: {fps:g} is faster than {fmt} plays: its frames would last {stored} ms, and players "
                         f"show frames of 10 ms or less for 100 ms (it would play at 10 fps). Use "
                         f"{fastest} fps or less for {fmt}, or save mp4 or webm")


class _ContainerSource:
    """The first video stream of any container FFmpeg demuxes, decoded with frame threads.

    The first frame is decoded on opening: it tells the orientation (display matrix), the
    transparency and the bit depth. VP8/VP9 with an alpha channel (WebM `alpha_mode=1`) is decoded
    by libvpx, which reads the alpha that FFmpeg's own decoder drops.
    """

    def __init__(self, path):
        self.path = path
        name = os.path.basename(path)
        self.container = self._open()
        try:
            if not self.container.streams.video:
                raise VideoError(f"{name}: has no video stream (audio only?)")
            stream = self.container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0)
            count, duration = stream.frames, 0.0
            if stream.duration:
                duration = float(stream.duration * stream.time_base)
            elif self.container.duration:
                duration = self.container.duration / av.time_base
            self.exact = bool(count)
            self.end_time = self.shown_starts = None
            gif = stream.codec_context.name == "gif"
            # a GIF: its frame delays, timed below; a live recording: no index and no duration
            if gif or (not count and not duration):
                times = self._packet_times(stream)
                self.container.close()
                self.container = self._open()
                stream = self.container.streams.video[0]
                self.exact, count = True, len(times)
                if gif and times:  # shown as players show them: see shown_duration_ms
                    ends = np.cumsum([shown_duration_ms(round(d * 1000)) / 1000 for _, d in times])
                    self.shown_starts = [times[0][0]] + list(times[0][0] + ends[:-1])
                    self.end_time = times[0][0] + float(ends[-1])
                elif times:
                    self.end_time = max(t + d for t, d in times)
            count = count or round(duration * fps)
            self.decoded = 0
            self._decoder = self._decode(stream)
            try:
                first = next(self._decoder, None)
            except VideoError:
                first = None
            if first is None:
                raise VideoError(f"{name}: no frames could be decoded (an empty or damaged video). "
                                 "Export it again")
            self._first = first
            components = first.format.components
            self.alpha = any(c.is_alpha for c in components)
            bits = max(c.bits for c in components)
            self.format = ("rgba" if self.alpha else "rgb24") if bits <= 8 else \
                ("rgba64le" if self.alpha else "rgb48le")
            self.orientation = frame_orientation(first)
            start = first.time or 0.0
            if self.end_time is None and stream.duration:
                self.end_time = float(((stream.start_time or 0) + stream.duration) * stream.time_base)
            duration = (self.end_time - start) if self.end_time is not None else duration
            if self.shown_starts is not None:
                fps = count / duration  # the mean rate of the shown timing, as for animated webp
            fps = fps or (count / duration if duration else SEQUENCE_FPS)
            if not duration > 0:
                duration = count / fps
            ctx = stream.codec_context
            sar = stream.sample_aspect_ratio or ctx.sample_aspect_ratio
            sar = Fraction(sar) if sar and sar > 0 else Fraction(1)
            # stored pixels w:h = sar; turned upright by a transpose they are 1/sar
            self.pixel_aspect = float(1 / sar if self.orientation.transpose else sar)
            shown = (round(first.width * sar), first.height) if sar >= 1 else (first.width, round(first.height / sar))
            width, height = self.orientation.size(*shown)
            self.info = VideoInfo(path, fps, int(count), duration, width, height, ctx.name,
                                  self.orientation.rotation, self.orientation.mirrored, self.alpha,
                                  min(bits, 16), self.pixel_aspect)
        except BaseException:
            self.container.close()
            raise
        self.finished = False

    def _open(self):
        try:
            return av.open(self.path)
        except av.error.FFmpegError as e:
            raise _describe_failure(self.path, e) from None

    def _packet_times(self, stream):
        """(start, duration) in s of each packet of the stream, read without decoding (for a
        stream whose container gives no length, and for GIF timing)."""
        times = []
        try:
            for packet in self.container.demux(stream):
                if packet.size and packet.pts is not None:
                    times.append((float(packet.pts * packet.time_base),
                                  float((packet.duration or 0) * packet.time_base)))
        except av.error.FFmpegError:
            pass  # a cut-off tail: count what was read; decoding says the rest
        return times

    def _decode(self, stream):
        codec = stream.codec_context.name
        if stream.metadata.get("alpha_mode") == "1" and codec in ("vp8", "vp9"):
            decoder = av.CodecContext.create(f"libvpx-{codec}", "r")
        else:
            decoder = stream.codec_context
        decoder.thread_type = "AUTO"
        name = os.path.basename(self.path)
        try:
            for packet in self.container.demux(stream):
                for frame in decoder.decode(packet):
                    yield frame
        except av.error.FFmpegError as e:
            raise _truncated(name, f"decoding failed after {self.decoded} frames ({e})") from None

    def frames(self):
        """(time in s, upright [H, W, C] uint8 or uint16 picture) for every frame."""
        frame = self._first
        while frame is not None:
            if self.shown_starts is not None and self.decoded < len(self.shown_starts):
                t = self.shown_starts[self.decoded]
            else:
                t = frame.time if frame.time is not None else self.decoded / self.info.fps
            array = frame.to_ndarray(format=self.format, src_color_range=frame.color_range)
            self.decoded += 1
            yield t, self.orientation.apply(array)
            frame = next(self._decoder, None)
        self.finished = True

    def close(self):
        self.container.close()


@dataclass(frozen=True)
class _ImageHeader:
    """What an image file's header says: upright size, transparency, bit depth, orientation and
    how many frames it holds (animated webp/PNG, multi-page TIFF)."""
    name: str
    width: int
    height: int
    alpha: bool
    bit_depth: int
    orientation: Orientation
    frames: int = 1


_SIXTEEN_BIT_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _png_exif_follows_pixels(path):
    """Whether a PNG file has an eXIf chunk after its image data (PNG 1.5 allows it there; Pillow
    reads such a chunk only once it has decoded the whole image). Reads the chunk headers only."""
    with open(path, "rb") as f:
        f.seek(8)  # the PNG signature
        while len(header := f.read(8)) == 8:
            length, kind = struct.unpack(">I4s", header)
            if kind in (b"eXIf", b"IEND"):
                return kind == b"eXIf"
            f.seek(length + 4, os.SEEK_CUR)  # the data and its CRC
    return False


def _has_alpha(image):
    return "A" in image.getbands() or (image.mode == "P" and "transparency" in image.info)


def _picture(image):
    """A Pillow image as an upright [H, W, 3 or 4] uint8/uint16 array, as ComfyUI's Load Image
    reads it: EXIF orientation applied (ImageOps.exif_transpose, which knows the TIFFs that Pillow
    turns itself while decoding), palette and CMYK converted to RGB, the alpha of RGBA/LA/palette
    transparency kept; 16-bit grey keeps its 16 bits, float (F) is taken as 0..1."""
    image = ImageOps.exif_transpose(image)
    if image.mode in _SIXTEEN_BIT_GREY or image.mode == "F":
        grey = np.asarray(image)
        if image.mode == "F":
            grey = np.clip(grey, 0, 1) * 65535 + 0.5
        grey = np.clip(grey, 0, 65535).astype(np.uint16)
        return np.broadcast_to(grey[..., None], grey.shape + (3,))
    return np.asarray(image.convert("RGBA" if _has_alpha(image) else "RGB"))


class _PillowSource:
    """Animated or still webp, a still image, or a folder of numbered images (one frame each).

    Every file's header is read on opening (sizes, EXIF orientation, transparency), so a folder of
    mixed sizes or a huge image is named before anything is decoded.
    """

    def __init__(self, path, force_rate):
        self.path = path
        self.files = _sequence_files(path) if os.path.isdir(path) else [path]
        if not self.files:
            raise VideoError(f"{os.path.basename(path)}: the folder holds no images "
                             f"({', '.join(IMAGE_EXTENSIONS)}); put numbered frames in it")
        self.headers = [self._header(name) for name in self.files]
        animated = next((h for h in self.headers if h.frames > 1), None)
        if len(self.files) > 1 and animated:
            raise VideoError(f"{os.path.basename(path)}: {animated.name} holds {animated.frames} frames, but a "
                             "folder is read as one frame per image. Load that file on its own, or save "
                             "its frames as separate images")
        first = self._open(self.files[0])
        with first:
            # one file: its own frames and durations; a folder: one frame a file
            self.timed = len(self.files) == 1 and self.headers[0].frames > 1
            count = self.headers[0].frames if self.timed else len(self.files)
            self.starts_ms = [0]  # when each frame of an animated file appears
            for frame in ImageSequence.Iterator(first) if self.timed else ():
                frame.load()
                self.starts_ms.append(self.starts_ms[-1] + shown_duration_ms(frame.info.get("duration", 0)))
            total_ms = self.starts_ms[-1]
            stored = float(first.info.get("fps", 0)) if not self.timed else 0
            kind = first.format.lower() if len(self.files) == 1 else "image sequence"
        fps = count * 1000.0 / total_ms if total_ms else force_rate or stored or SEQUENCE_FPS
        self.end_time = total_ms / 1000.0 if total_ms else count / fps
        head = self.headers[0]
        self.pixel_aspect = 1.0
        self.alpha = any(h.alpha for h in self.headers)
        self.info = VideoInfo(path, fps, count, self.end_time, head.width, head.height, kind,
                              head.orientation.rotation, head.orientation.mirrored, self.alpha,
                              max(h.bit_depth for h in self.headers))
        self.exact = True
        self.decoded = 0
        self.finished = False

    @staticmethod
    def _unreadable(name, error):
        return VideoError(f"{os.path.basename(name)}: not a readable image ({error}); replace or remove it")

    def _open(self, name):
        try:
            return Image.open(name)
        except Image.DecompressionBombError:
            limit = 2 * Image.MAX_IMAGE_PIXELS
            raise VideoError(
                f"{os.path.basename(name)}: the image has more than {limit / 1e6:.0f} megapixels, more "
                f"than the image decoder (Pillow) opens (its guard against decompression bombs); one such "
                f"frame would need over {format_bytes(frame_bytes(limit, 1))} as float32. Scale the "
                "images down before loading them") from None
        except (OSError, SyntaxError) as e:
            raise self._unreadable(name, e) from None

    def _header(self, name):
        with self._open(name) as image:
            # Pillow decodes a whole PNG to look for EXIF after the pixels: only when there is some.
            if image.format == "PNG" and "exif" not in image.info and not _png_exif_follows_pixels(name):
                exif = {}
            else:
                exif = image.getexif()
            orientation = Orientation.from_exif(exif.get(0x0112))
            if image.format == "TIFF" and orientation != Orientation():
                # Pillow turns some TIFFs while decoding them (which and when differ between its
                # versions): the upright size is what Load Image's exif_transpose gives
                width, height = ImageOps.exif_transpose(image).size
            else:
                width, height = orientation.size(*image.size)
            deep = image.mode in _SIXTEEN_BIT_GREY or image.mode == "F"
            # an MPO (a camera JPEG with a second picture: depth map, preview) is one photo, as Load Image reads it
            frames = 1 if image.format == "MPO" else getattr(image, "n_frames", 1)
            return _ImageHeader(os.path.basename(name), width, height, _has_alpha(image),
                                16 if deep else 8, orientation, frames)

    def check_sizes(self):
        """Refuse a folder whose images differ in (upright) size, naming the first odd one."""
        first = self.headers[0]
        for odd in self.headers[1:]:
            if (odd.width, odd.height) != (first.width, first.height):
                raise VideoError(
                    f"{os.path.basename(self.path)}: the images differ in size: {first.name} is "
                    f"{first.width}x{first.height} but {odd.name} is {odd.width}x{odd.height} (as shown, "
                    "after EXIF rotation). Set custom_width and custom_height to load every image at that "
                    "size (fitted by resize_mode), or make the images the same size")

    def largest(self):
        return max(self.headers, key=lambda h: h.width * h.height)

    def frames(self):
        """(time in s, upright picture). A picture whose size is not the one its header gave (the
        size checked and reserved on opening) is refused, never fitted."""
        for name, header in zip(self.files, self.headers):
            with self._open(name) as image:
                for frame in ImageSequence.Iterator(image) if self.timed else [image]:
                    try:
                        picture = _picture(frame)
                    except (OSError, SyntaxError) as e:
                        raise self._unreadable(name, e) from None
                    if picture.shape[:2] != (header.height, header.width):
                        raise VideoError(
                            f"{header.name}: decoded at {picture.shape[1]}x{picture.shape[0]} but its header "
                            f"says {header.width}x{header.height} (after EXIF orientation). Save it again "
                            "(e.g. as PNG) and load that")
                    t = self.starts_ms[self.decoded] / 1000.0 if self.timed else self.decoded / self.info.fps
                    self.decoded += 1
                    yield t, picture
        self.finished = True

    def close(self):
        pass


def open_source(path, force_rate=0.0):
    """A decoder for `path` with `.info`, `.frames()` (time, upright picture) and `.close()`.

    Image folders play at force_rate when given (nothing is dropped), else at their stored rate.
    """
    if os.path.isdir(path) or path.lower().endswith(PILLOW_EXTENSIONS):
        return _PillowSource(path, force_rate)
    return _ContainerSource(path)


# ---- frame selection ----------------------------------------------------------------------------

@dataclass(frozen=True)
class LoadOptions:
    """VideoHelperSuite's loader options, applied in the order of the fields."""
    force_rate: float = 0.0       # 0 = source rate; otherwise drop/repeat frames to this rate
    skip_first_frames: int = 0    # counted after force_rate
    select_every_nth: int = 1     # 1 = every frame
    frame_load_cap: int = 0       # 0 = no cap; counts loaded frames
    width: int = 0                # 0 with height 0 = source size; 0 with a height = keep aspect
    height: int = 0
    resize_mode: str = "crop"     # how a frame meets an output size of another aspect: RESIZE_MODES

    def __post_init__(self):
        if self.force_rate < 0 or self.skip_first_frames < 0 or self.frame_load_cap < 0:
            raise VideoError("force_rate, skip_first_frames and frame_load_cap must be 0 or more")
        if self.select_every_nth < 1:
            raise VideoError("select_every_nth must be 1 or more")
        if self.width < 0 or self.height < 0:
            raise VideoError("custom width and height must be 0 (keep) or more")
        if self.resize_mode not in RESIZE_MODES:
            raise VideoError(f"resize_mode must be one of {', '.join(RESIZE_MODES)}, got {self.resize_mode!r}")


def output_size(width, height, custom_width=0, custom_height=0):
    """Output (width, height): the source size, or the custom size (a missing side keeps the
    aspect ratio) rounded to a multiple of 8."""
    if not custom_width and not custom_height:
        return width, height
    w = custom_width or width * custom_height / height
    h = custom_height or height * custom_width / width
    snap = lambda v: max(SIZE_MULTIPLE, math.floor(v / SIZE_MULTIPLE + 0.5) * SIZE_MULTIPLE)
    return snap(w), snap(h)


def expected_count(info, options):
    """How many frames `options` select from a source described by `info` (VideoInfo).

    With force_rate, one frame per tick from the first frame's time to the end of the last one
    (info.duration), so a last frame that lasts its own time gives exactly its ticks.
    """
    n = info.frame_count
    if options.force_rate:
        n = math.ceil(info.duration * options.force_rate - _EPS)
    n = math.ceil(max(0, n - options.skip_first_frames) / options.select_every_nth)
    return min(n, options.frame_load_cap) if options.frame_load_cap else n


def resample(frames, fps, rate, end=None):
    """The frame on screen at each tick k / rate, from (time, frame) pairs at `fps`.

    Frames between ticks are dropped; a frame spanning several ticks repeats. Times are taken
    relative to the first frame. The last frame lasts until `end` (the source's end time, in the
    frames' clock) when it is given and after that frame, else 1 / fps.
    """
    tick = 1.0 / rate
    k, start, previous, last = 0, None, None, 0.0
    for t, frame in frames:
        if start is None:
            start = t
        last = t - start
        while previous is not None and k * tick < last - _EPS:
            yield previous
            k += 1
        previous = frame
    if previous is not None:
        stop = end - start if end is not None and end - start > last + _EPS else last + 1.0 / fps
        while k * tick < stop - _EPS:
            yield previous
            k += 1


def select_frames(frames, fps, options, end=None):
    """The frames to load from (time, frame) pairs, in order: force_rate, skip, nth, cap.

    `end` is the source's end time (see `resample`). Stops pulling from `frames` as soon as the
    cap is reached.
    """
    if options.force_rate:
        stream = resample(frames, fps, options.force_rate, end)
    else:
        stream = (f for _, f in frames)
    loaded = 0
    for index, frame in enumerate(stream):
        kept = index - options.skip_first_frames
        if kept < 0 or kept % options.select_every_nth:
            continue
        yield frame
        loaded += 1
        if loaded == options.frame_load_cap:
            return


# ---- loading ------------------------------------------------------------------------------------

def format_bytes(n):
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def frame_bytes(width, height, alpha=False):
    """Bytes of one loaded frame: float32 RGB IMAGE, plus a float32 MASK frame with alpha."""
    return width * height * (4 if alpha else 3) * 4


def _uninitialised(shape):
    """np.empty(shape, float32) without numpy's huge-page hint.

    numpy asks the kernel for transparent huge pages on every array of 4 MiB or more. Huge pages
    come from the kernel's largest free blocks, which a VM with free page reporting (virtio
    balloon) has handed back to its host, so their first touch can cost several times more than
    small pages: the 720p benchmark's loader ran at 33-44 frames/s with the hint and 79-97 without
    (benchmarks/README.md). The hint is a process-wide switch, turned off for this one allocation.
    """
    switch = None
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):  # numpy 2, numpy 1
        try:
            switch = importlib.import_module(module)._set_madvise_hugepage
            break
        except (ImportError, AttributeError):
            continue
    previous = switch(False) if switch else None
    try:
        return np.empty(shape, np.float32)
    finally:
        if switch:
            switch(previous)


class _FrameBuffer:
    """A float32 [capacity, H, W, 3] array (and a [capacity, H, W] mask with alpha) filled in place.

    The arrays are allocated uninitialised, so each frame's memory is first touched by the one
    write that converts the frame to float (no zero-fill pass over the whole clip: writing the
    output is the loader's main cost). Sizing goes through realloc (`ndarray.resize`), which remaps
    large blocks instead of copying them, so growing past the estimate (the added frames are
    zero-filled) or trimming to the frames read never holds the clip twice. `limit` (frames)
    bounds the growth: past it `on_limit(frames)` is called, which raises.
    """

    def __init__(self, capacity, height, width, alpha=False, limit=None, on_limit=None):
        capacity = max(capacity, 1)
        self.array = _uninitialised((capacity, height, width, 3))
        self.mask = _uninitialised((capacity, height, width)) if alpha else None
        self.count = 0
        self.limit, self.on_limit = limit, on_limit

    def _resize(self, frames):
        for array in (self.array, self.mask):
            if array is not None:
                array.resize((frames,) + array.shape[1:], refcheck=False)

    def _reserve(self):
        if self.count == len(self.array):
            grow = self.count + max(self.count // 4, 8)
            if self.limit is not None and grow > self.limit:
                if self.count >= self.limit:
                    self.on_limit(self.count + 1)
                grow = self.limit
            self._resize(grow)

    def append(self, picture):
        """Add one [H, W, 3 or 4] uint8 or uint16 picture (the 4th channel is alpha)."""
        self._reserve()
        scale = np.float32(255 if picture.dtype == np.uint8 else 65535)
        np.divide(picture[..., :3], scale, out=self.array[self.count])
        if self.mask is not None:
            mask = self.mask[self.count]
            if picture.shape[2] == 4:  # MASK = 1 - alpha, as the host's Load Image
                np.divide(picture[..., 3], scale, out=mask)
                np.subtract(1, mask, out=mask)
            else:
                mask.fill(0)
        self.count += 1

    def repeat(self):
        """Add a copy of the last frame."""
        self._reserve()
        self.array[self.count] = self.array[self.count - 1]
        if self.mask is not None:
            self.mask[self.count] = self.mask[self.count - 1]
        self.count += 1

    def finish(self):
        """(images [N, H, W, 3], mask [N, H, W] or None) as tensors sharing the buffers."""
        if self.count != len(self.array):
            self._resize(self.count)
        mask = None if self.mask is None else torch.from_numpy(self.mask)
        return torch.from_numpy(self.array), mask


NO_ALPHA_MASK_SIDE = 64  # the host's Load Image gives a 64x64 zero mask for an image without alpha


class LoadedVideo(NamedTuple):
    images: torch.Tensor  # [N, H, W, 3] float32 0..1
    fps: float            # rate of the loaded frames
    info: VideoInfo       # the source, upright
    mask: torch.Tensor    # [N, H, W] float32 1 - alpha, or [N, 64, 64] zeros without alpha


def _memory_error(name, frames, width, height, alpha, available, extra=None, at_least=""):
    need = frames * frame_bytes(width, height, alpha)
    fit_frames = available // frame_bytes(width, height, alpha)
    cap = f"Set frame_load_cap to {fit_frames} or less, or make" if fit_frames else "Not one frame fits: make"
    what = "float32 IMAGE and MASK" if alpha else "float32"
    plus = f" plus {extra}" if extra else ""
    return VideoError(
        f"{name}: loading {frames} frames{at_least} at {width}x{height} needs {format_bytes(need)} ({what}){plus}, "
        f"but only {format_bytes(available)} of memory is free. {cap} the frames smaller with "
        "custom_width/custom_height (or use select_every_nth / force_rate)")


def load(path, options=LoadOptions(), progress=None, available_bytes=None):
    """Decode `path` into upright IMAGE frames (and a MASK from the alpha channel).

    Returns a LoadedVideo (images, fps of the loaded frames, VideoInfo of the source, mask).
    Frames are turned upright by the container's display matrix or the images' EXIF orientation;
    8-bit sources are scaled by 1/255, deeper ones (10-bit video, 16-bit PNG) by 1/65535.
    `progress(done, total)` is called per loaded frame (it may raise to interrupt). With
    `available_bytes`, a clip whose frames would not fit is refused before anything is decoded,
    and again while decoding if the clip turns out longer than its container said.
    Raises VideoError naming the file for bad files, bad options and memory shortage.
    """
    name = os.path.basename(path)
    source = open_source(path, options.force_rate)
    try:
        info = source.info
        width, height = output_size(info.width, info.height, options.width, options.height)
        if isinstance(source, _PillowSource) and not (options.width and options.height):
            source.check_sizes()  # one rule: mixed sizes load only at a size the user chose
        expected = expected_count(info, options)
        alpha = source.alpha
        limit = None
        if available_bytes is not None:
            extra, spare = None, available_bytes
            if isinstance(source, _PillowSource):
                big = source.largest()
                decode = 2 * big.width * big.height * (4 if big.alpha else 3) * (big.bit_depth // 8)
                extra = f"{format_bytes(decode)} to decode {big.name} ({big.width}x{big.height})"
                spare = available_bytes - decode
            if expected * frame_bytes(width, height, alpha) > spare:
                raise _memory_error(name, expected, width, height, alpha, max(spare, 0), extra)
            limit = spare // frame_bytes(width, height, alpha)
        buffer = _FrameBuffer(expected, height, width, alpha, limit,
                              lambda frames: _raise(_memory_error(
                                  name, frames, width, height, alpha, available_bytes,
                                  at_least=" (at least: the container did not say how many)")))
        previous = None
        for picture in select_frames(source.frames(), info.fps, options, source.end_time):
            if picture is previous:
                buffer.repeat()
            else:
                buffer.append(fit(picture, width, height, options.resize_mode, source.pixel_aspect))
            previous = picture
            if progress is not None:
                progress(buffer.count, max(expected, buffer.count))
        images, mask = buffer.finish()
        missing = info.frame_count - source.decoded
        if source.finished and source.exact and missing > max(2, info.frame_count // 100):
            raise _truncated(name, f"its index lists {info.frame_count} frames but only {source.decoded} "
                                   "could be decoded")
    finally:
        source.close()
    if not len(images) and not options.skip_first_frames:
        raise VideoError(f"{name}: no frames could be decoded (an empty or damaged video). "
                         "Export it again")
    if not len(images):
        available = expected_count(info, LoadOptions(force_rate=options.force_rate))
        raise VideoError(f"{name}: no frames to load: the clip has {available} frames (at "
                         f"{options.force_rate or info.fps:g} fps) and skip_first_frames="
                         f"{options.skip_first_frames} skips past its end. Lower skip_first_frames")
    if mask is None:
        mask = torch.zeros(len(images), NO_ALPHA_MASK_SIDE, NO_ALPHA_MASK_SIDE)
    return LoadedVideo(images, (options.force_rate or info.fps) / options.select_every_nth, info, mask)


def _raise(error):
    raise error


# ---- saving -------------------------------------------------------------------------------------

CONVERT_CHUNK = 16  # frames converted to uint8 per step (bounds the float32 copy of a GPU/half batch)
# OpenCV 5.1's vector loops multiply float32 by a scalar in float32 (4.x and 5.0: in float64), which
# rounds 0.2764706 * 255 = 70.5000034 to 70.5 and then to 70: to_uint8 gives it float64 frames there.
# 64 values fill a vector of any width.
_MULTIPLIES_FLOAT32_EXACTLY = bool(
    (cv2.multiply(np.full((1, 64), 0.2764706, np.float32), 255.0, dtype=cv2.CV_8U) == 71).all())


def to_uint8(images, even=False):
    """The IMAGE batch [N, H, W, 3] as one uint8 numpy array, converted before any encoding starts.

    Each value is x * 255 computed exactly (OpenCV multiplies float32 in float64; an OpenCV that
    multiplies it in float32, 5.1, is given float64 frames one at a time), rounded half to even and
    clamped to 0..255: bit-identical to `images.double().mul(255).round().clamp(0, 255)`. Torch's float32
    expression `images.mul(255).round()` differs from it by 1 in about 6 values per million, where its
    float32 product rounds onto a half (0.2764706 * 255 = 70.5000034 gives 70 there, 71 here). One
    OpenCV pass per chunk (multiply with saturation): 3-4x faster than the torch expression on the
    2-core benchmark machine (benchmarks/README.md), and with no float temporary (one float64 frame
    on OpenCV 5.1).
    even: pad the right/bottom edge by one repeated pixel to even sizes (yuv420p needs them).
    """
    count, h, w = images.shape[:3]
    ph, pw = h + (h % 2 if even else 0), w + (w % 2 if even else 0)
    out = np.empty((count, ph, pw, 3), np.uint8)
    step, dtype = (CONVERT_CHUNK, torch.float32) if _MULTIPLIES_FLOAT32_EXACTLY else (1, torch.float64)
    for lo in range(0, count, step):
        chunk = np.ascontiguousarray(images[lo:lo + step].detach().to("cpu", dtype).numpy())
        rows = chunk.reshape(-1, w * 3)  # one channel, so the scalar scales every value
        if (ph, pw) == (h, w):
            cv2.multiply(rows, 255.0, dst=out[lo:lo + len(chunk)].reshape(-1, w * 3), dtype=cv2.CV_8U)
        else:
            out[lo:lo + len(chunk), :h, :w] = cv2.multiply(rows, 255.0, dtype=cv2.CV_8U).reshape(chunk.shape)
    if pw != w:
        out[:, :h, w] = out[:, :h, w - 1]
    if ph != h:
        out[:, h] = out[:, h - 1]
    return out


def _counted(frames, total, progress):
    for i, frame in enumerate(frames, 1):
        yield frame
        if progress is not None:
            progress(i, total)


_AV_FORMATS = {
    "mp4": ("mp4", "libx264", {"movflags": "faststart+use_metadata_tags"}),
    "webm": ("webm", "libvpx-vp9", {}),
}


def _codec_options(fmt, crf):
    if fmt == "mp4":
        return {"crf": str(min(crf, 51)), "preset": "medium"}
    return {"crf": str(min(crf, 63)), "b": "0", "deadline": "good", "cpu-used": "5", "row-mt": "1"}


def _write_av(frames, path, fmt, fps, crf, metadata):
    container_format, codec, container_options = _AV_FORMATS[fmt]
    first = next(frames)
    with av.open(path, "w", format=container_format, options=container_options) as container:
        container.metadata.update(metadata)
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.height, stream.width = first.shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = _codec_options(fmt, crf)
        ctx = stream.codec_context
        # rgb24 -> yuv420p goes through swscale's default matrix (BT.601, limited range): say so,
        # so that players convert back with the same matrix.
        ctx.colorspace = ctx.color_primaries = ctx.color_trc = 6  # SMPTE 170M (BT.601)
        ctx.color_range = 1  # limited ("MPEG")
        for rgb in _prepend(first, frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())


def _prepend(first, rest):
    yield first
    yield from rest


def _webp_exif(metadata):
    """The host's webp convention: prompt in tag 0x0110, other keys from 0x010f downwards."""
    exif = Image.Exif()
    tag = 0x010F
    for key, value in metadata.items():
        if key == "prompt":
            exif[0x0110] = f"prompt:{value}"
        else:
            exif[tag] = f"{key}:{value}"
            tag -= 1
    return exif


def _write_pillow(frames, path, fmt, fps, crf, metadata, quality=90, method=4):
    images = (Image.fromarray(rgb) for rgb in frames)
    first = next(images)
    options = dict(save_all=True, append_images=images, duration=round(1000 / fps), loop=0)
    if fmt == "webp":
        options.update(format="WEBP", quality=quality, method=method, exif=_webp_exif(metadata))
    else:
        options.update(format="GIF")
    first.save(path, **options)


def _write_png_sequence(frames, path, fmt, fps, crf, metadata):
    os.makedirs(path)
    text = PngInfo()
    for key, value in {**metadata, "fps": repr(float(fps))}.items():
        text.add_text(key, value)
    for i, rgb in enumerate(frames, 1):
        Image.fromarray(rgb).save(os.path.join(path, f"{i:05}.png"), pnginfo=text, compress_level=4)


_WRITERS = {"mp4": _write_av, "webm": _write_av, "gif": _write_pillow, "webp": _write_pillow,
            "png": _write_png_sequence}


def save(images, path, fmt, fps, crf=DEFAULT_CRF, metadata=None, progress=None, preview=None):
    """Encode IMAGE frames [N, H, W, 3] to `path` (a folder of numbered PNGs for "png").

    The batch is converted to uint8 once (to_uint8). Written atomically: to a hidden temporary
    name in the same folder, then renamed. `metadata` maps keys to strings (mp4/webm tags, webp
    EXIF, PNG text; gif has no room for it). mp4 and webm frames with an odd size are padded by one
    edge pixel. `preview`, a path, also writes an animated webp preview (write_preview) from the
    same converted frames. Returns `path`.
    """
    if fmt not in _WRITERS:
        raise VideoError(f"unknown format {fmt!r}; choose one of {', '.join(SAVE_FORMATS)}")
    if not len(images):
        raise VideoError(f"{os.path.basename(path)}: no frames to save (the image batch is empty)")
    if not fps > 0:
        raise VideoError(f"{os.path.basename(path)}: fps must be above 0, got {fps}")
    check_played_rate(fmt, fps)
    height, width = images.shape[1:3]
    frames = to_uint8(images, even=fmt in _AV_FORMATS)
    _write_atomic(_counted(iter(frames), len(frames), progress), path, fmt, fps, crf, dict(metadata or {}))
    if preview:
        write_preview(frames[:, :height, :width], preview, fps)
    return path


PREVIEW_SIDE = 256     # longest side of the animated preview
PREVIEW_FRAMES = 48    # at most this many frames in it, evenly spread


def write_preview(frames, path, fps, max_side=PREVIEW_SIDE, max_frames=PREVIEW_FRAMES):
    """A small animated webp of uint8 frames [N, H, W, 3]: at most `max_frames` frames taken evenly
    (each shown for as long as the frames it stands for, so it plays in real time), shrunk so that
    neither side exceeds `max_side`, encoded at webp's fastest setting. Written atomically."""
    step = max(1, math.ceil(len(frames) / max_frames))
    frames = frames[::step]
    h, w = frames.shape[1:3]
    if max(h, w) > max_side:
        scale = max_side / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        frames = [cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames]
    _write_atomic(iter(frames), path, "webp", fps / step, 0, {}, quality=80, method=0)


def _write_atomic(frames, path, fmt, fps, crf, metadata, **options):
    with atomic_path(path) as temporary:
        _WRITERS[fmt](frames, temporary, fmt, fps, crf, metadata, **options)
