"""Streamed video decoding and encoding (PyAV), frame selection, memory estimate, safe paths.

Decoding streams frame by frame into one preallocated float32 array that is filled in place and
trimmed at the end, so a decoded clip is never held twice. Frame selection follows
VideoHelperSuite's options, applied in this order:

    force_rate (resample to a new rate: drop or repeat frames)
    -> skip_first_frames -> select_every_nth -> frame_load_cap -> resize (custom width/height)

Sources: any container FFmpeg reads (mp4, webm, mov, mkv, avi, gif), animated or still webp and
still images (Pillow: FFmpeg cannot decode animated webp), and a folder of numbered images.
Encoding: mp4 (h264), webm (vp9) through PyAV; animated gif and webp and PNG sequences through
Pillow (an adaptive palette per gif frame, and the host's metadata conventions for webp and PNG).
Pillow comes with every ComfyUI host (and with matplotlib).
"""
import hashlib
import importlib
import math
import os
import re
from dataclasses import asdict, dataclass
from fractions import Fraction

import av
import cv2
import numpy as np
import torch
from PIL import Image, ImageSequence
from PIL.PngImagePlugin import PngInfo

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


# ---- sources: (time, av.VideoFrame) streams with their metadata -------------------------------

@dataclass(frozen=True)
class VideoInfo:
    """What the source says about itself (frame_count is estimated when the container has no index)."""
    path: str
    fps: float
    frame_count: int
    duration: float
    width: int
    height: int
    codec: str

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


class _ContainerSource:
    """Any container FFmpeg demuxes; decodes the first video stream with frame threads."""

    def __init__(self, path):
        self.path = path
        try:
            self.container = av.open(path)
        except av.error.FFmpegError as e:
            raise _describe_failure(path, e) from None
        if not self.container.streams.video:
            self.container.close()
            raise VideoError(f"{os.path.basename(path)}: has no video stream (audio only?)")
        self.stream = stream = self.container.streams.video[0]
        stream.thread_type = "AUTO"
        if stream.duration:
            duration = float(stream.duration * stream.time_base)
        else:
            duration = (self.container.duration or 0) / av.time_base
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        self.exact = bool(stream.frames)
        count = stream.frames or round(duration * fps)
        fps = fps or (count / duration if duration else SEQUENCE_FPS)
        ctx = stream.codec_context
        self.info = VideoInfo(path, fps, int(count), duration or count / fps, ctx.width, ctx.height,
                              ctx.name)
        self.decoded = 0
        self.finished = False

    def frames(self):
        try:
            for frame in self.container.decode(self.stream):
                yield (frame.time if frame.time is not None else self.decoded / self.info.fps), frame
                self.decoded += 1
        except av.error.FFmpegError as e:
            raise VideoError(f"{os.path.basename(self.path)}: decoding failed after {self.decoded} frames "
                             f"(damaged or truncated file): {e}. Export it again") from None
        self.finished = True

    def close(self):
        self.container.close()


class _PillowSource:
    """Animated or still webp, a still image, or a folder of numbered images (one frame each)."""

    def __init__(self, path, force_rate):
        self.path = path
        self.files = _sequence_files(path) if os.path.isdir(path) else [path]
        if not self.files:
            raise VideoError(f"{os.path.basename(path)}: the folder holds no images "
                             f"({', '.join(IMAGE_EXTENSIONS)}); put numbered frames in it")
        first = self._open(self.files[0])
        with first:
            # one file: its own frames and durations; a folder: one frame a file
            self.timed = len(self.files) == 1 and getattr(first, "n_frames", 1) > 1
            count = first.n_frames if self.timed else len(self.files)
            total_ms = 0
            for frame in ImageSequence.Iterator(first) if self.timed else ():
                frame.load()
                total_ms += frame.info.get("duration", 0)
            stored = float(first.info.get("fps", 0)) if not self.timed else 0
            fps = count * 1000.0 / total_ms if total_ms else force_rate or stored or SEQUENCE_FPS
            kind = first.format.lower() if len(self.files) == 1 else "image sequence"
            self.info = VideoInfo(path, fps, count, count / fps, first.width, first.height, kind)
        self.exact = True
        self.decoded = 0
        self.finished = False

    @staticmethod
    def _unreadable(name, error):
        return VideoError(f"{os.path.basename(name)}: not a readable image ({error}); replace or remove it")

    def _open(self, name):
        try:
            return Image.open(name)
        except (OSError, SyntaxError) as e:
            raise self._unreadable(name, e) from None

    def frames(self):
        for name in self.files:
            with self._open(name) as image:
                for frame in ImageSequence.Iterator(image):
                    try:
                        rgb = np.asarray(frame.convert("RGB"))
                    except (OSError, SyntaxError) as e:
                        raise self._unreadable(name, e) from None
                    stamp = frame.info.get("timestamp") if self.timed else None
                    t = stamp / 1000.0 if stamp is not None else self.decoded / self.info.fps
                    yield t, av.VideoFrame.from_ndarray(rgb, format="rgb24")
                    self.decoded += 1
        self.finished = True

    def close(self):
        pass


def open_source(path, force_rate=0.0):
    """A decoder for `path` with `.info`, `.frames()` and `.close()`.

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

    def __post_init__(self):
        if self.force_rate < 0 or self.skip_first_frames < 0 or self.frame_load_cap < 0:
            raise VideoError("force_rate, skip_first_frames and frame_load_cap must be 0 or more")
        if self.select_every_nth < 1:
            raise VideoError("select_every_nth must be 1 or more")
        if self.width < 0 or self.height < 0:
            raise VideoError("custom width and height must be 0 (keep) or more")


def output_size(width, height, custom_width=0, custom_height=0):
    """Output (width, height): the source size, or the custom size (a missing side keeps the
    aspect ratio) rounded to a multiple of 8."""
    if not custom_width and not custom_height:
        return width, height
    w = custom_width or width * custom_height / height
    h = custom_height or height * custom_width / width
    snap = lambda v: max(SIZE_MULTIPLE, math.floor(v / SIZE_MULTIPLE + 0.5) * SIZE_MULTIPLE)
    return snap(w), snap(h)


def expected_count(frame_count, fps, options):
    """How many frames `options` select from a clip of `frame_count` frames at `fps`."""
    n = frame_count
    if options.force_rate:
        n = math.ceil(frame_count * options.force_rate / fps - _EPS)
    n = math.ceil(max(0, n - options.skip_first_frames) / options.select_every_nth)
    return min(n, options.frame_load_cap) if options.frame_load_cap else n


def resample(frames, fps, rate):
    """The frame on screen at each tick k / rate, from (time, frame) pairs at `fps`.

    Frames between ticks are dropped; a frame spanning several ticks repeats. The last frame lasts
    1 / fps. Times are taken relative to the first frame.
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
        while k * tick < last + 1.0 / fps - _EPS:
            yield previous
            k += 1


def select_frames(frames, fps, options):
    """The frames to load from (time, frame) pairs, in order: force_rate, skip, nth, cap.

    Stops pulling from `frames` as soon as the cap is reached.
    """
    stream = resample(frames, fps, options.force_rate) if options.force_rate else (f for _, f in frames)
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


def frame_bytes(width, height):
    """Bytes of one IMAGE frame: float32 RGB."""
    return width * height * 3 * 4


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
    """A float32 [capacity, H, W, 3] array filled in place.

    The array is allocated uninitialised, so each frame's memory is first touched by the one
    write that converts the frame to float (no zero-fill pass over the whole clip: writing the
    output is the loader's main cost). Sizing goes through realloc (`ndarray.resize`), which remaps
    large blocks instead of copying them, so growing past the estimate (the added frames are
    zero-filled) or trimming to the frames read never holds the clip twice.
    """

    def __init__(self, capacity, height, width):
        self.array = _uninitialised((max(capacity, 1), height, width, 3))
        self.count = 0

    def _resize(self, frames):
        self.array.resize((frames,) + self.array.shape[1:], refcheck=False)

    def _reserve(self):
        if self.count == len(self.array):
            self._resize(self.count + max(self.count // 4, 8))

    def append(self, rgb):
        """Add one uint8 [H, W, 3] frame."""
        self._reserve()
        np.divide(rgb, np.float32(255), out=self.array[self.count])
        self.count += 1

    def repeat(self):
        """Add a copy of the last frame."""
        self._reserve()
        self.array[self.count] = self.array[self.count - 1]
        self.count += 1

    def finish(self):
        if self.count != len(self.array):
            self._resize(self.count)
        return torch.from_numpy(self.array)


def load(path, options=LoadOptions(), progress=None, available_bytes=None):
    """Decode `path` into IMAGE frames.

    Returns (images [N, H, W, 3] float32 0..1, fps of the loaded frames, VideoInfo of the source).
    `progress(done, total)` is called per loaded frame (it may raise to interrupt). With
    `available_bytes`, a clip whose frames would not fit is refused before anything is decoded.
    """
    name = os.path.basename(path)
    source = open_source(path, options.force_rate)
    try:
        info = source.info
        width, height = output_size(info.width, info.height, options.width, options.height)
        expected = expected_count(info.frame_count, info.fps, options)
        need = expected * frame_bytes(width, height)
        if available_bytes is not None and need > available_bytes:
            fit = available_bytes // frame_bytes(width, height)
            cap = f"Set frame_load_cap to {fit} or less, or make" if fit else "Not one frame fits: make"
            raise VideoError(
                f"{name}: loading {expected} frames at {width}x{height} needs {format_bytes(need)} "
                f"(float32), but only {format_bytes(available_bytes)} of memory is free. {cap} the "
                "frames smaller with custom_width/custom_height (or use select_every_nth / force_rate)")
        shrink = width * height < info.width * info.height
        convert = dict(width=width, height=height, format="rgb24",
                       interpolation="AREA" if shrink else "BICUBIC")
        buffer = _FrameBuffer(expected, height, width)
        previous = None
        for frame in select_frames(source.frames(), info.fps, options):
            if frame is previous:
                buffer.repeat()
            else:
                buffer.append(frame.to_ndarray(src_color_range=frame.color_range, **convert))
            previous = frame
            if progress is not None:
                progress(buffer.count, max(expected, buffer.count))
        images = buffer.finish()
        missing = info.frame_count - source.decoded
        if source.finished and source.exact and missing > max(2, info.frame_count // 100):
            raise VideoError(f"{name}: the video is truncated: its index lists {info.frame_count} frames "
                             f"but only {source.decoded} could be decoded. Download or export it again")
    finally:
        source.close()
    if not len(images) and not options.skip_first_frames:
        raise VideoError(f"{name}: no frames could be decoded (an empty or damaged video). "
                         "Export it again")
    if not len(images):
        available = expected_count(info.frame_count, info.fps, LoadOptions(force_rate=options.force_rate))
        raise VideoError(f"{name}: no frames to load: the clip has {available} frames (at "
                         f"{options.force_rate or info.fps:g} fps) and skip_first_frames="
                         f"{options.skip_first_frames} skips past its end. Lower skip_first_frames")
    return images, (options.force_rate or info.fps) / options.select_every_nth, info


# ---- saving -------------------------------------------------------------------------------------

def uint8_frames(images, even=False, max_side=0):
    """Each IMAGE frame as uint8 [H, W, 3] (rounded), one at a time.

    even: pad the right/bottom edge by one repeated pixel to even sizes (yuv420p needs them).
    max_side: shrink (keeping aspect) so that neither side exceeds it.
    """
    for image in images:
        rgb = image.detach().mul(255).round_().clamp_(0, 255).to("cpu", torch.uint8).numpy()
        h, w = rgb.shape[:2]
        if max_side and max(h, w) > max_side:
            scale = max_side / max(h, w)
            h, w = max(1, round(h * scale)), max(1, round(w * scale))
            rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
        if even and (h % 2 or w % 2):
            rgb = np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        yield rgb


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


def _write_pillow(frames, path, fmt, fps, crf, metadata):
    images = (Image.fromarray(rgb) for rgb in frames)
    first = next(images)
    options = dict(save_all=True, append_images=images, duration=round(1000 / fps), loop=0)
    if fmt == "webp":
        options.update(format="WEBP", quality=90, method=4, exif=_webp_exif(metadata))
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


def save(images, path, fmt, fps, crf=DEFAULT_CRF, metadata=None, progress=None, max_side=0):
    """Encode IMAGE frames [N, H, W, 3] to `path` (a folder of numbered PNGs for "png").

    Written atomically: to a hidden temporary name in the same folder, then renamed. `metadata`
    maps keys to strings (mp4/webm tags, webp EXIF, PNG text; gif has no room for it). mp4 and
    webm frames with an odd size are padded by one edge pixel. Returns `path`.
    """
    if fmt not in _WRITERS:
        raise VideoError(f"unknown format {fmt!r}; choose one of {', '.join(SAVE_FORMATS)}")
    if not len(images):
        raise VideoError(f"{os.path.basename(path)}: no frames to save (the image batch is empty)")
    if not fps > 0:
        raise VideoError(f"{os.path.basename(path)}: fps must be above 0, got {fps}")
    folder, base = os.path.split(path)
    temporary = os.path.join(folder, f".{base}.{os.getpid()}.part")
    frames = _counted(uint8_frames(images, even=fmt in _AV_FORMATS, max_side=max_side), len(images), progress)
    try:
        _WRITERS[fmt](frames, temporary, fmt, fps, crf, dict(metadata or {}))
        os.replace(temporary, path)
    finally:
        _remove(temporary)
    return path


def _remove(path):
    if os.path.isdir(path):
        for name in os.listdir(path):
            os.remove(os.path.join(path, name))
        os.rmdir(path)
    elif os.path.exists(path):
        os.remove(path)
