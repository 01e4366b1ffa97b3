"""Decode throughput and peak memory of the video loader against bare PyAV loops on the same file.

    .cache/venv/bin/python benchmarks/video_io.py [--clip PATH] [--repeats N]

Every measurement runs in its own fresh subprocess (alternating, N times each), so the peak
resident set size (getrusage ru_maxrss) belongs to that one decode. Each child imports numpy, av
and torch first; "peak over baseline" is ru_maxrss at the end minus ru_maxrss right after those
imports, i.e. the memory the decode itself added. Throughput counts from opening the file to the
last frame. The contenders:

  bare-uint8   for frame in decode(): frame.to_ndarray("rgb24")  (decoded frames dropped at once)
  bare-tensor  the same loop keeping the frames, then np.stack / 255 -> torch (the usual loader)
  loader       adapter_core.video.load: what TA_LoadVideo runs, without the host's progress bar

All use PyAV with frame threads (thread_type AUTO), as the loader does.
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
CONTENDERS = ("bare-uint8", "bare-tensor", "loader")


def maxrss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def child(kind, clip):
    import av
    import numpy as np
    import torch
    sys.path.insert(0, REPO)
    from adapter_core import video

    baseline = maxrss_bytes()
    start = time.perf_counter()
    if kind == "loader":
        images = video.load(clip)[0]
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
    tensor_bytes = images.numel() * images.element_size() if kind != "bare-uint8" else 0
    print(json.dumps({"kind": kind, "frames": count, "seconds": seconds, "baseline": baseline,
                      "peak": maxrss_bytes(), "tensor_bytes": tensor_bytes}))


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

    runs = {kind: [] for kind in CONTENDERS}
    for _ in range(args.repeats):
        for kind in CONTENDERS:
            runs[kind].append(measure(kind, clip))
    mib = 2**20
    tensor = runs["loader"][0]["tensor_bytes"]
    print(f"clip {os.path.basename(clip)}: {runs['loader'][0]['frames']} frames; output tensor "
          f"{tensor / mib:.0f} MiB (float32); {os.cpu_count()} CPUs; {args.repeats} runs each, "
          "each in a fresh process")
    print(f"{'contender':12s} {'fps median':>10s} {'fps runs':>28s} {'peak RSS':>10s} {'over baseline':>14s} "
          f"{'/ tensor':>9s}")
    fps = {}
    for kind, results in runs.items():
        rates = [r["frames"] / r["seconds"] for r in results]
        fps[kind] = statistics.median(rates)
        peak = statistics.median(r["peak"] for r in results)
        added = statistics.median(r["peak"] - r["baseline"] for r in results)
        print(f"{kind:12s} {fps[kind]:10.1f} {' '.join(f'{v:.0f}' for v in rates):>28s} "
              f"{peak / mib:8.0f} M {added / mib:12.0f} M {added / tensor:9.2f}")
    print(f"throughput ratio loader / bare-uint8:  {fps['loader'] / fps['bare-uint8']:.2f}")
    print(f"throughput ratio loader / bare-tensor: {fps['loader'] / fps['bare-tensor']:.2f}")


if __name__ == "__main__":
    main()
