"""Video loader and saver nodes: files in, IMAGE batches out, and back to browser-playable files."""
import json
import os

from ..adapter_core import video as core
from . import checks, host

CATEGORY = "Temporal Adapter/video"
ORDER = "force_rate -> skip_first_frames -> select_every_nth -> frame_load_cap -> resize"


def _source_path(video, path):
    """The file or folder to read: the typed path (inside the allowed roots) when set, else the
    chosen file of the input folder."""
    if path and path.strip():
        return core.resolve_path(path, host.allowed_roots())
    return core.resolve_path(video, [host.input_directory()])


@checks.checked_inputs
class TA_LoadVideo:
    DESCRIPTION = ("Loads a video (mp4/h264, webm/vp9, mov, mkv, avi, animated gif or webp) or a folder "
                   "of numbered images as an IMAGE batch, streaming the decode, as a player shows it: "
                   "phone rotation (display matrix), EXIF orientation and non-square pixels (sample "
                   "aspect ratio) applied, 10-bit video and "
                   "16-bit images scaled from their own range, transparency as a MASK. Frame options "
                   f"apply in this order: {ORDER}. A clip too large for free memory is refused before "
                   "decoding.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("IMAGE", "FLOAT", "INT", "TA_VIDEO_INFO", "STRING", "MASK")
    RETURN_NAMES = ("images", "fps", "frame_count", "video_info", "info", "mask")
    OUTPUT_TOOLTIPS = ("The loaded frames [N, H, W, 3], float 0..1, upright.",
                       "Frame rate of the loaded frames: force_rate (or the source rate) divided by "
                       "select_every_nth, so they play in the source's real time.",
                       "Number of loaded frames.",
                       "Source fps, frame count, duration, upright width and height, codec, rotation "
                       "(clockwise degrees) and mirroring applied, alpha and bit depth, pixel aspect "
                       "(the stored pixels' width over height: 1 unless the footage is anamorphic), and the loaded "
                       "frames' fps, count and size.",
                       "The same facts as one line of text.",
                       "1 - alpha [N, H, W] as ComfyUI's Load Image gives it (1 = transparent) for a "
                       "source with an alpha channel (VP8/VP9 alpha_mode=1 webm, ProRes 4444/PNG/QuickTime "
                       "RLE mov, gif, RGBA/LA/palette-transparent images); without one, [N, 64, 64] "
                       "zeros, Load Image's 'no mask'.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "video": (core.list_videos(host.input_directory()), {
                "tooltip": "A video in ComfyUI's input folder (mp4, m4v, webm, mov, mkv, avi, gif, webp); "
                           "the upload button adds one. Ignored when 'path' is set."}),
            "path": ("STRING", {
                "default": "",
                "tooltip": "Optional: a video file or a folder of numbered images (frame1.png, "
                           "frame2.png, ...), inside ComfyUI's input, output or temp folder or a folder "
                           "listed in TEMPORAL_ADAPTER_ALLOWED_ROOTS. Relative paths start in the input "
                           "folder; '..' is refused. When set, it replaces 'video'. An image folder "
                           "plays at force_rate, else at the rate our saver stored, else 24 fps. Its "
                           "images must all have one size (after EXIF rotation): a folder of mixed sizes "
                           "is refused, naming the first odd image, unless custom_width and custom_height "
                           "are set (then every image is fitted to them by resize_mode)."}),
            "force_rate": ("FLOAT", {
                "default": 0.0, "min": 0.0, "max": 240.0, "step": 0.001,
                "tooltip": f"Applied 1st ({ORDER}). 0 keeps the source rate; otherwise the clip is "
                           "resampled to this rate by dropping or repeating frames: each tick takes the "
                           "frame on screen at that moment (as FFmpeg's fps filter), and the last frame "
                           "lasts its own duration (gif, webp and variable-rate frames keep their "
                           "timing). VideoHelperSuite's Load Video takes the next frame at or after each "
                           "tick instead, so the two can pick frames one source frame apart."}),
            "skip_first_frames": ("INT", {
                "default": 0, "min": 0, "max": 1_000_000,
                "tooltip": f"Applied 2nd ({ORDER}): frames skipped at the start, counted after "
                           "force_rate."}),
            "select_every_nth": ("INT", {
                "default": 1, "min": 1, "max": 1000,
                "tooltip": f"Applied 3rd ({ORDER}): keep the first frame after the skip and every "
                           "nth one after it. The fps output is divided by n."}),
            "frame_load_cap": ("INT", {
                "default": 0, "min": 0, "max": 1_000_000,
                "tooltip": f"Applied 4th ({ORDER}): load at most this many frames (0 = all); decoding "
                           "stops there."}),
            "custom_width": ("INT", {
                "default": 0, "min": 0, "max": 8192, "step": 8,
                "tooltip": f"Applied last ({ORDER}). 0 with custom_height 0 keeps the source size "
                           "exactly (the VAE then centre-crops sides that are not a multiple of 8, e.g. "
                           "65x49 -> 64x48, and the metrics compare that common area); 0 with a height "
                           "keeps the aspect ratio. A resized size is rounded to a multiple of 8 "
                           "(latents are 1/8 of the image); resize_mode says how the frame meets it."}),
            "custom_height": ("INT", {
                "default": 0, "min": 0, "max": 8192, "step": 8,
                "tooltip": f"Applied last ({ORDER}). 0 keeps the aspect ratio from custom_width (or the "
                           "source size when both are 0); rounded to a multiple of 8."}),
        }, "optional": {  # optional: API prompts written before it existed still run
            "resize_mode": (list(core.RESIZE_MODES), {
                "default": "crop",
                "tooltip": "When the output size (custom_width x custom_height, after rounding to 8) has "
                           "another aspect ratio than the frames: crop (default, as VideoHelperSuite) "
                           "scales to cover and cuts the centre; pad scales to fit and adds black "
                           "borders (transparent in the mask when the source has alpha); stretch scales "
                           "each side on its own and distorts. Frames are never stretched unless you "
                           "choose stretch."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, video, path):
        if video is None or path is None:
            return True  # linked from another node: known only at run time
        try:
            _source_path(video, path)
        except core.VideoError as e:
            return str(e)
        return True

    @classmethod
    def IS_CHANGED(cls, video, path, **options):
        try:
            return core.fingerprint(_source_path(video, path), sorted(options.items()))
        except core.VideoError as e:
            return str(e)

    def load(self, video, path, force_rate, skip_first_frames, select_every_nth, frame_load_cap,
             custom_width, custom_height, resize_mode="crop"):
        source = _source_path(video, path)
        options = core.LoadOptions(force_rate, skip_first_frames, select_every_nth, frame_load_cap,
                                   custom_width, custom_height, resize_mode)
        progress = host.Progress(1)
        images, fps, info, mask = core.load(source, options, progress.callback, host.available_memory())
        count, height, width = images.shape[:3]
        details = {**info.as_dict(), "loaded_fps": fps, "loaded_frame_count": count,
                   "loaded_width": width, "loaded_height": height}
        turned = [f"rotated {info.rotation}\u00b0 clockwise"] if info.rotation else []
        turned += ["mirrored"] if info.mirrored else []
        extras = turned + (["alpha -> mask"] if info.alpha else []) + \
            ([f"{info.bit_depth}-bit"] if info.bit_depth > 8 else []) + \
            ([f"pixel aspect {info.pixel_aspect:.4g}"] if info.pixel_aspect != 1 else [])
        text = (f"{os.path.basename(source)}: {info.width}x{info.height} {info.codec}"
                f"{''.join(', ' + e for e in extras)}, {info.fps:.3f} fps, {info.frame_count} frames, "
                f"{info.duration:.2f} s -> loaded {count} frames {width}x{height} at {fps:.3f} fps")
        return images, fps, count, details, text, mask


@checks.checked_inputs
class TA_SaveVideo:
    DESCRIPTION = ("Saves an IMAGE batch as a browser-playable file in the output folder: mp4 (h264, "
                   "yuv420p), webm (vp9), animated gif or webp, or a folder of PNG frames. Written "
                   "atomically, with the workflow embedded where the format allows, and shown as an "
                   f"animated preview in the node (a webp of at most {core.PREVIEW_FRAMES} frames spread "
                   f"over the clip, at most {core.PREVIEW_SIDE} px, playing in real time; gif and webp "
                   "show the saved file itself).")
    CATEGORY = CATEGORY
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    OUTPUT_TOOLTIPS = ("Full path of the saved file (or PNG folder).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The frames to save, in order."}),
                "fps": ("FLOAT", {
                    "default": 24.0, "min": 0.01, "max": 240.0, "step": 0.001,
                    "tooltip": "Frame rate of the file; connect the loader's fps to keep the source "
                               "timing. gif stores delays in 1/100 s and webp in 1/1000 s, so other "
                               "rates come out rounded there (30 fps gif plays at 33.3). Players show "
                               f"frames of 10 ms or less for 100 ms, so gif plays at most "
                               f"{core.fastest_played_rate('gif')} fps and webp {core.fastest_played_rate('webp')} "
                               "fps: a faster rate is refused for them (mp4 and webm take any rate)."}),
                "filename_prefix": ("STRING", {
                    "default": "TemporalAdapter/video",
                    "tooltip": "Name in the output folder; '/' makes subfolders. A counter is added: "
                               "TemporalAdapter/video_00001_.mp4. %width% and %height% are replaced."}),
                "format": (list(core.SAVE_FORMATS), {
                    "default": "mp4",
                    "tooltip": "mp4: h264 yuv420p (plays everywhere); webm: vp9; gif: 256 colours a "
                               "frame; webp: animated, lossy quality 90; png: a folder of lossless "
                               "numbered frames. mp4/webm frames of odd width or height are padded by "
                               "one repeated edge pixel to even sizes. gif and webp encoders merge "
                               "identical consecutive frames into one longer frame. The workflow is "
                               "embedded in mp4, webm, webp and png (gif has no room for it)."}),
                "crf": ("INT", {
                    "default": core.DEFAULT_CRF, "min": 0, "max": 63,
                    "tooltip": "Constant rate factor of mp4 and webm: lower is better and larger. mp4 "
                               "(x264) uses 0-51 (higher values act as 51; 0 is lossless in yuv420p), "
                               "webm (vp9) 0-63. Ignored by gif, webp and png."}),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    def save(self, images, fps, filename_prefix, format, crf, prompt=None, extra_pnginfo=None):
        height, width = images.shape[1:3]
        folder, filename, counter, subfolder = host.save_location(filename_prefix, width, height)
        name = f"{filename}_{counter:05}_" + ("png" if format == "png" else f".{format}")
        target = os.path.join(folder, name)
        metadata = {}
        if host.metadata_enabled():
            if prompt is not None:
                metadata["prompt"] = json.dumps(prompt)
            metadata.update({key: json.dumps(value) for key, value in (extra_pnginfo or {}).items()})
        progress = host.Progress(len(images))
        if format in ("gif", "webp"):  # the saved file is its own preview
            core.save(images, target, format, fps, crf, metadata, progress.callback)
            preview = {"filename": name, "subfolder": subfolder, "type": "output"}
        else:
            folder, filename, counter, subfolder = host.save_location(
                filename_prefix, width, height, directory=host.temp_directory())
            name = f"{filename}_{counter:05}_.webp"
            core.save(images, target, format, fps, crf, metadata, progress.callback,
                      preview=os.path.join(folder, name))
            preview = {"filename": name, "subfolder": subfolder, "type": "temp"}
        return {"ui": {"images": [preview], "animated": (True,)}, "result": (target,)}


NODE_CLASS_MAPPINGS = {"TA_LoadVideo": TA_LoadVideo, "TA_SaveVideo": TA_SaveVideo}
NODE_DISPLAY_NAME_MAPPINGS = {
    "TA_LoadVideo": "Load Video (Temporal Adapter)",
    "TA_SaveVideo": "Save Video (Temporal Adapter)",
}
