"""Decode throughput and peak memory of the video loader against bare PyAV and OpenCV loops;
with --part save, the save node's time against a bare PyAV encode loop.

    python3 scripts/ta.py run benchmarks/video_io.py [--clip PATH] [--repeats N]
    python3 scripts/ta.py run benchmarks/video_io.py --part save [--clip PATH] [--repeats N] [--format mp4|webm]

Every measurement runs in its own fresh subprocess (alternating, N times each), so the peak
resident set size (getrusage ru_maxrss) belongs to that one decode. Each child imports numpy, av,
cv2, torch and the loader first; "peak over baseline" is ru_maxrss at the end minus ru_maxrss right after those
imports, i.e. the memory the decode itself added. Throughput counts from opening the file to the
last frame. The contenders:

  bare-uint8   PyAV: for frame in decode(): frame.to_ndarray("rgb24")  (frames dropped at once)
  bare-cv2     OpenCV: while cap.read()[0] with cv2.VideoCapture's defaults (FFmpeg backend, its
               default decoder threads, BGR uint8 out; frames dropped at once): VideoHelperSuite's
               decoder
  bare-tensor  the PyAV loop keeping the frames, then np.stack / 255 -> torch (the usual loader)
  loader       adapter_core.video.load: what TA_LoadVideo runs, without the host's progress bar
  loader-huge  the same with numpy's transparent-huge-page hint left on for the output array
  output-only  the loader's output array and float conversion with no decoding: one constant
               uint8 frame written into every slot (the cost of producing the IMAGE tensor alone)

The PyAV ones use frame threads (thread_type AUTO), as the loader does.

--part save runs in one process with the host imported (its default torch threads): the clip is
loaded once as an IMAGE batch, then alternately, --repeats times each:

  bare-encode  the floor: the batch converted to uint8 in one torch expression, then a bare PyAV
               loop (VideoFrame.from_ndarray rgb24 -> stream.encode -> mux) with the saver's codec,
               crf, preset and pixel format
  encode-only  the same loop on frames already converted to uint8 (outside the timing): the
               encoder alone, a floor no saver that takes an IMAGE batch can reach
  save-node    TA_SaveVideo.save: conversion, encode, metadata and the animated preview

and prints the medians and the ratios save-node / bare-encode (goal <= 1.15) and save-node /
encode-only, plus the PSNR of each file against the batch (the node's output must not change).
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONTENDERS = ("bare-uint8", "bare-cv2", "bare-tensor", "loader", "loader-huge", "output-only")
BASELINES = ("bare-uint8", "bare-cv2", "bare-tensor")


def maxrss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def child(kind, clip):
    import av
    import cv2
    import numpy as np
    import torch
    sys.path.insert(0, REPO)
    from adapter_core import video

    extra = {}
    if kind == "loader-huge":
        video._uninitialised = lambda shape: np.empty(shape, np.float32)  # numpy's default hint
    if kind == "output-only":
        source = video.open_source(clip)  # the loader's own frame count and size
        count, height, width = source.info.frame_count, source.info.height, source.info.width
        source.close()
        constant = np.full((height, width, 3), 128, np.uint8)

    baseline = maxrss_bytes()
    start = time.perf_counter()
    if kind in ("loader", "loader-huge"):
        images = video.load(clip)[0]
    elif kind == "output-only":
        buffer = video._FrameBuffer(count, height, width)
        for _ in range(count):
            buffer.append(constant)
        images = buffer.finish()[0]
    elif kind == "bare-cv2":
        capture = cv2.VideoCapture(clip)
        extra = {"backend": capture.getBackendName(), "threads": capture.get(cv2.CAP_PROP_N_THREADS)}
        images = []
        while True:
            ok, _ = capture.read()
            if not ok:
                break
            images.append(None)
        capture.release()
    else:
        frames = []
        with av.open(clip) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                rgb = frame.to_ndarray(format="rgb24")
                frames.append(rgb if kind == "bare-tensor" else None)
        images = torch.from_numpy(np.stack(frames).astype(np.float32) / 255) if kind == "bare-tensor" \
            else frames
    seconds = time.perf_counter() - start
    count = len(images)
    tensor_bytes = images.numel() * images.element_size() if torch.is_tensor(images) else 0
    print(json.dumps({"kind": kind, "frames": count, "seconds": seconds, "baseline": baseline,
                      "peak": maxrss_bytes(), "tensor_bytes": tensor_bytes, **extra}))


def measure(kind, clip):
    out = subprocess.run([sys.executable, __file__, "--child", kind, "--clip", clip],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def bare_encode(images, path, fmt, fps, crf):
    """The floor: one torch conversion of the batch (IMAGE in), then PyAV's plain encode loop; with
    a uint8 numpy batch, the encode loop alone."""
    import av
    import numpy as np
    import torch
    from fractions import Fraction
    from temporal_adapter.adapter_core import video

    frames = images if isinstance(images, np.ndarray) else \
        images.mul(255).round().clamp(0, 255).to(torch.uint8).numpy()
    container_format, codec, options = video._AV_FORMATS[fmt]
    with av.open(path, "w", format=container_format, options=options) as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = video._codec_options(fmt, crf)
        for rgb in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())


def save_part(args):
    """Save node against the bare PyAV encode loop, alternating in one process."""
    import tempfile

    import torch
    from common import import_host

    import_host(args.comfyui)
    import folder_paths
    from temporal_adapter.adapter_core import video
    from temporal_adapter.nodes import video_nodes

    scratch = tempfile.mkdtemp(prefix="ta_bench_save_")
    folder_paths.set_output_directory(os.path.join(scratch, "output"))
    folder_paths.set_temp_directory(os.path.join(scratch, "temp"))
    images, fps, _, _ = video.load(args.clip)
    node = video_nodes.TA_SaveVideo()
    prompt, extra = {"1": {"class_type": "TA_SaveVideo", "inputs": {}}}, {"workflow": {"nodes": []}}
    uint8 = images.mul(255).round().clamp(0, 255).to(torch.uint8).numpy()
    times = {"bare-encode": [], "encode-only": [], "save-node": []}
    outputs = {}
    for i in range(args.repeats + 1):  # the first round warms up and is not counted
        for kind in times:
            start = time.perf_counter()
            if kind != "save-node":
                path = os.path.join(scratch, f"{kind}_{i}.{args.format}")
                bare_encode(images if kind == "bare-encode" else uint8, path, args.format, fps, video.DEFAULT_CRF)
            else:
                with torch.inference_mode():
                    path = node.save(images, fps, "bench/clip", args.format, video.DEFAULT_CRF,
                                     prompt, extra)["result"][0]
            elapsed = time.perf_counter() - start
            if i:
                times[kind].append(elapsed)
            outputs[kind] = path
    medians = {kind: statistics.median(values) for kind, values in times.items()}
    ratios = {base: [n / b for n, b in zip(times["save-node"], times[base])]
              for base in ("bare-encode", "encode-only")}
    print(f"clip {os.path.basename(args.clip)}: {len(images)} frames {images.shape[2]}x{images.shape[1]}, "
          f"{args.format} crf {video.DEFAULT_CRF}; torch threads {torch.get_num_threads()}; "
          f"{os.cpu_count()} CPUs; {args.repeats} alternating runs each after a warm-up; 1-min load "
          f"{os.getloadavg()[0]:.1f} at the end")
    for kind, values in times.items():
        psnr = _psnr(video.load(outputs[kind]).images, images)
        print(f"{kind:12s} median {medians[kind]:6.2f} s  runs {' '.join(f'{v:.2f}' for v in values)}  "
              f"PSNR {psnr:.2f} dB")
    for base, values in ratios.items():
        print(f"ratio save-node / {base}: {medians['save-node'] / medians[base]:.3f} (medians); per "
              f"alternating round {' '.join(f'{r:.2f}' for r in values)}, median {statistics.median(values):.3f}")


def _psnr(a, b):
    import math
    mse = float(((a.double() - b.double()) ** 2).mean())
    return 10 * math.log10(1 / mse) if mse else float("inf")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("load", "save"), default="load")
    parser.add_argument("--clip", default=None, help="video file (default: bigbuckbunny.mp4 from the cache "
                                                     "to load, bikes.mp4 to save)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--format", choices=("mp4", "webm"), default="mp4", help="--part save: the format")
    parser.add_argument("--comfyui", default=None, help="--part save: the host (default: the cache's)")
    parser.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    from comfy_client import load_manifest
    if args.part == "save":
        args.clip = args.clip or load_manifest()["clips"]["bikes.mp4"]
        args.comfyui = args.comfyui or load_manifest()["comfyui"]
        return save_part(args)
    clip = args.clip or load_manifest()["clips"]["bigbuckbunny.mp4"]
    if args.child:
        return child(args.child, clip)

    load_start = os.getloadavg()[0]
    runs = {kind: [] for kind in CONTENDERS}
    for _ in range(args.repeats):
        for kind in CONTENDERS:
            runs[kind].append(measure(kind, clip))
    mib = 2**20
    tensor = runs["loader"][0]["tensor_bytes"]
    cv2_run = runs["bare-cv2"][0]
    print(f"clip {os.path.basename(clip)}: {runs['loader'][0]['frames']} frames; output tensor "
          f"{tensor / mib:.0f} MiB (float32); {os.cpu_count()} CPUs; {args.repeats} runs each, "
          f"each in a fresh process; cv2 backend {cv2_run['backend']}, CAP_PROP_N_THREADS "
          f"{cv2_run['threads']:g}; 1-min load average {load_start:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end")
    print(f"{'contender':12s} {'fps median':>10s} {'fps runs':>36s} {'peak RSS':>10s} {'over baseline':>14s} "
          f"{'/ tensor':>9s}")
    fps = {}
    for kind, results in runs.items():
        rates = [r["frames"] / r["seconds"] for r in results]
        fps[kind] = statistics.median(rates)
        peak = statistics.median(r["peak"] for r in results)
        added = statistics.median(r["peak"] - r["baseline"] for r in results)
        print(f"{kind:12s} {fps[kind]:10.1f} {' '.join(f'{v:.0f}' for v in rates):>36s} "
              f"{peak / mib:8.0f} M {added / mib:12.0f} M {added / tensor:9.2f}")
    for kind in ("loader", "output-only"):
        print(f"throughput ratio {kind} / " + ", ".join(
            f"{base}: {fps[kind] / fps[base]:.2f}" for base in BASELINES))


if __name__ == "__main__":
    main()
