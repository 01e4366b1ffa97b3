"""Decode throughput and peak memory of the video loader against bare PyAV and OpenCV loops.

    .cache/venv/bin/python benchmarks/video_io.py [--clip PATH] [--repeats N]

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
        images = buffer.finish()
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


def default_clip():
    with open(os.path.join(REPO, ".cache", "manifest.json")) as f:
        return json.load(f)["clips"]["bigbuckbunny.mp4"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", default=None, help="video file (default: bigbuckbunny.mp4 from the cache)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    clip = args.clip or default_clip()
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
