"""Temporal-consistency sampler (issue 7), in one run on the same model, frames and steps:

1. mechanism x metric table: bikes.mp4 (first `--frames` frames, default 24) inverted, then edited
   (cfg 4, another prompt) with all mechanisms off, each one alone, and all on; adjacent-frame cosine
   of the output latents, and warp error / warped SSIM of the decoded output along the source's
   optical flow (adapter_core.metrics.warp_metrics). The adapter is trained on the clip first
   (TA_TrainAdapter, `--adapter-steps` steps).
2. timing: all off vs ComfyUI's own KSamplerAdvanced (ddim, ddim_uniform, same noise and sigmas),
   all on vs all off, and the share of the time spent outside UNet forwards (the UNet's forward is
   timed by a wrapper on this process's model).
3. memory: the sampler over 32 and 128 frames in chunks of 16 (overlap 4, all mechanisms but the
   adapter on), each in a fresh subprocess: peak resident set size during sampling (sampled every
   millisecond) minus the resident size just before it.
4. attention (only when asked): keyframe attention's kernel on CPU, the host's own attention function
   vs torch SDPA on plain and keyframe-extended keys (time and peak memory of one call).

Run from the repo root:  python3 scripts/ta.py run benchmarks/sampler.py [--part table|timing|memory|attention|all]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from common import CHECKPOINTS, CLIPS, PeakRSS, import_host, seconds

SOURCE, EDIT = "people riding bikes on a street", "people riding horses on a street, oil painting"
OFF = dict(use_adapter=False, temporal_filter=False, keyframe_attention=False, inject_source=False)
MECHANISMS = {"all off": {}, "adapter": {"use_adapter": True}, "temporal filter": {"temporal_filter": True},
              "keyframe attention": {"keyframe_attention": True}, "source injection": {"inject_source": True},
              "all on": {k: True for k in OFF}}


def frames(count, width, height):
    """The first `count` frames of bikes.mp4 at width x height, through the plugin's own loader."""
    from temporal_adapter.adapter_core.video import LoadOptions, load
    return load(CLIPS["bikes.mp4"], LoadOptions(frame_load_cap=count, width=width, height=height))[0]


class Setup:
    def __init__(self, args):
        import_host(host_args=args.host_args.split())
        import folder_paths
        import nodes
        folder_paths.set_temp_directory(tempfile.mkdtemp(prefix="ta-bench-"))
        folder_paths.add_model_folder_path("checkpoints", CHECKPOINTS)
        from temporal_adapter.nodes import adapter_nodes, inversion_nodes, sampler_nodes
        self.nodes, self.args = nodes, args
        self.inverter, self.sampler = inversion_nodes.BilateralDDIMInversion(), sampler_nodes.ConsistencySampler()
        self.trainer = adapter_nodes.TA_TrainAdapter()
        with torch.inference_mode():
            self.model, clip, self.vae = nodes.CheckpointLoaderSimple().load_checkpoint(args.checkpoint)[:3]
            self.source, self.edit, self.negative = (nodes.CLIPTextEncode().encode(clip, t)[0]
                                                     for t in (SOURCE, EDIT, ""))

    def clip(self, count):
        self.images = frames(count, self.args.width, self.args.height)
        with torch.inference_mode():
            self.latent = self.nodes.VAEEncode().encode(self.vae, self.images)[0]
            self.noise, self.inversion, _ = self.inverter.invert(
                self.model, self.source, self.latent, self.args.steps, "off", 5, 1.0, 1.0, False, "", 0, 16)

    def sample(self, chunk=16, adapter=None, **switches):
        with torch.inference_mode():
            return self.sampler.sample(self.model, self.edit, self.negative, self.args.steps, 4.0, 0,
                                       **{**OFF, **switches}, keyframes=3, keyframe_stride=0,
                                       attention_fraction=0.5, feature_fraction=0.8, frames_per_chunk=chunk,
                                       chunk_overlap=4, inversion=self.inversion, adapter=adapter)[0]["samples"]

    def train(self):
        with torch.inference_mode():
            return self.trainer.train(self.model, self.source, self.latent, self.args.adapter_steps, "auto", "adamw",
                                      1.0, "adjacent", "frame", "auto", 0.2, 0, 4, 4, 2, 4, 4.0, "auto", 900, 1000,
                                      unique_id="bench")["result"][0]


def table(s):
    from temporal_adapter.adapter_core.metrics import warp_metrics
    from temporal_adapter.adapter_core.temporal_loss import cosine_similarity_adjacent
    s.clip(s.args.frames)
    adapter = s.train()
    rows = []
    for name, switches in MECHANISMS.items():
        start = time.perf_counter()
        out = s.sample(chunk=0, adapter=adapter, **switches)
        seconds = time.perf_counter() - start
        with torch.inference_mode():
            decoded = s.vae.decode(out).clamp(0, 1)
        warp = warp_metrics(s.images, decoded)
        rows.append((name, float(cosine_similarity_adjacent(out).mean()), float(np.nanmean(warp["warp_error"])),
                     float(np.nanmean(warp["warped_ssim"])), seconds))
    source_warp = float(np.nanmean(warp["source_warp_error"]))
    print(f"\n{s.args.frames} frames of bikes.mp4 at {s.args.width}x{s.args.height}, {s.args.steps} steps, cfg 4, "
          f"adapter trained {s.args.adapter_steps} steps; source clip's own warp error {source_warp:.3e}")
    print("| mechanism | adjacent latent cosine | warp error | warped SSIM | seconds |")
    print("| --- | --- | --- | --- | --- |")
    off = rows[0]
    for name, cos, err, ssim, sec in rows:
        better = ("cosine up" if cos > off[1] else "cosine down", "warp down" if err < off[2] else "warp up")
        mark = "" if name == "all off" else f" ({', '.join(better)})"
        print(f"| {name}{mark} | {cos:.5f} | {err:.3e} | {ssim:.4f} | {sec:.1f} |")


def timing(s):
    s.clip(s.args.timing_frames)
    unet = s.model.model.diffusion_model
    spent = [0.0]
    forward = unet.forward

    def timed(*a, **k):
        start = time.perf_counter()
        try:
            return forward(*a, **k)
        finally:
            spent[0] += time.perf_counter() - start
    unet.forward = timed

    def ksampler():
        with torch.inference_mode():
            s.nodes.KSamplerAdvanced().sample(s.model, "disable", 0, s.args.steps, 4.0, "ddim", "ddim_uniform", s.edit,
                                              s.negative, s.noise, 0, 10000, "disable")
    from temporal_adapter.adapter_core.adapter import Adapter
    from temporal_adapter.nodes import host
    # Sampling cost does not depend on the adapter's values: a fresh one (default window 900-1000).
    adapter = Adapter.create(host.text_width(s.model), s.args.timing_frames, host.attention_linears(s.model),
                             family=host.model_family(s.model))
    runs = {"KSampler (ddim)": ksampler, **{name: (lambda sw=switches: s.sample(chunk=0, adapter=adapter, **sw))
                                           for name, switches in MECHANISMS.items()}}
    times, inside = {k: [] for k in runs}, {k: [] for k in runs}
    for fn in runs.values():
        fn()  # warm-up
    for _ in range(s.args.repeats):
        for name, fn in runs.items():
            spent[0] = 0.0
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
            inside[name].append(spent[0])
    unet.forward = forward
    print(f"\ntiming: {s.args.timing_frames} frames at {s.args.width}x{s.args.height}, {s.args.steps} steps, cfg 4, "
          f"median of {s.args.repeats}")
    print("| run | seconds | vs all off | outside UNet forwards |\n| --- | --- | --- | --- |")
    base = statistics.median(times["all off"])
    for name in runs:
        t = statistics.median(times[name])
        outside = statistics.median(1 - i / w for i, w in zip(inside[name], times[name]))
        print(f"| {name} | {t:.2f} | {t / base:.3f}x | {outside:.1%} |")


def attention_kernels(args):
    """Keyframe attention's kernel on CPU: the host's own attention function against torch SDPA (the host's
    `attention_pytorch`, which `host.long_key_attention` runs on CPU) for one frame's CFG pair at one UNet
    level: `--kernel-tokens` query tokens, 320 channels, 8 heads (SD1.5's top level), keys 1x (plain
    self-attention) and 4x (3 keyframes). Median time, and the resident memory one call adds at its peak."""
    import gc

    import psutil
    import_host(host_args=args.host_args.split())
    import comfy.ldm.modules.attention as attention
    from temporal_adapter.nodes import host
    kernels = {f"host ({attention.optimized_attention.__name__})": host.host_attention(),
               "torch SDPA (attention_pytorch)": host.host_attention("attention_pytorch")}
    g, tokens, options = torch.Generator().manual_seed(0), args.kernel_tokens, {"n_heads": 8}
    q = torch.randn(2, tokens, 320, generator=g)
    print(f"\nattention kernels: batch 2 (one frame, CFG), {tokens} query tokens, 320 channels, 8 heads, "
          f"{torch.get_num_threads()} thread(s), median of {args.repeats}")
    print("| keys | kernel | ms per call | peak added (MiB) |\n| --- | --- | --- | --- |")
    for keys in (tokens, 4 * tokens):
        k, v = torch.randn(2, 2, keys, 320, generator=g)
        for name, attend in kernels.items():
            with torch.inference_mode():
                ms = seconds(lambda: attend(q, k, v, options), args.repeats) * 1000
                gc.collect()
                before = psutil.Process().memory_info().rss
                with PeakRSS() as peak:
                    attend(q, k, v, options)
            print(f"| {keys} | {name} | {ms:.1f} | {(peak.peak - before) / 2**20:.0f} |")


def memory_child(s, count):
    """Sample `count` frames from a synthetic inversion (random trajectory: memory does not depend on
    the values) and print the resident set size before and at peak, as JSON."""
    import psutil

    from temporal_adapter.adapter_core import ddim
    from temporal_adapter.adapter_core.inversion import Inversion
    from temporal_adapter.nodes import host
    with torch.inference_mode():
        sigmas = ddim.schedule(host.model_sigmas(s.model), s.args.steps)
        g = torch.Generator().manual_seed(0)
        trajectory = torch.randn(len(sigmas), count, 4, s.args.height // 8, s.args.width // 8, generator=g)
        s.inversion = Inversion(trajectory, sigmas, {"filter": "off"}, "bench", host.model_fingerprint(s.model))
    before = psutil.Process().memory_info().rss
    with PeakRSS() as peak:
        s.sample(chunk=16, **{**MECHANISMS["all on"], "use_adapter": False})
    print(json.dumps({"frames": count, "before": before, "peak": peak.peak}))


def memory(args):
    rows = []
    for count in (32, 128):
        cmd = [sys.executable, __file__, "--part", "memory-child", "--count", str(count), "--steps", str(args.steps),
               f"--host-args={args.host_args}", "--threads", str(args.threads),
               "--width", str(args.width), "--height", str(args.height), "--checkpoint", args.checkpoint]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
    print(f"\nmemory: chunks of 16 (overlap 4, 3 keyframes, filter + keyframes + injection), "
          f"{args.width}x{args.height}, "
          f"{args.steps} steps")
    print("| frames | RSS before sampling (MiB) | peak (MiB) | peak - before (MiB) |\n| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['frames']} | {r['before'] / 2**20:.0f} | {r['peak'] / 2**20:.0f} | "
              f"{(r['peak'] - r['before']) / 2**20:.0f} |")
    grow = [(r["peak"] - r["before"]) for r in rows]
    print(f"128 vs 32 frames: peak {rows[1]['peak'] / rows[0]['peak']:.3f}x, "
          f"added by sampling {grow[1] / grow[0]:.3f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", default="all", choices=["all", "table", "timing", "memory", "memory-child", "attention"])
    parser.add_argument("--checkpoint", default="ta_tiny_sd15.safetensors")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--timing-frames", type=int, default=8)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--adapter-steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--count", type=int, default=32)
    parser.add_argument("--kernel-tokens", type=int, default=1024, help="query tokens for --part attention")
    parser.add_argument("--host-args", default="", help='extra host flags, e.g. "--use-pytorch-cross-attention" '
                        "(the host's attention on CPU is otherwise sub-quadratic attention)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default); one thread "
                        "gives reproducible ratios on a shared machine")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.part == "memory":
        return memory(args)
    if args.part == "attention":
        return attention_kernels(args)
    s = Setup(args)
    if args.part == "memory-child":
        return memory_child(s, args.count)
    import comfy.ldm.modules.attention as attention
    print(f"host attention: {attention.optimized_attention.__name__}")
    print(f"machine: {os.cpu_count()} CPU cores, torch {torch.__version__} with {torch.get_num_threads()} threads; "
          f"load average at start {os.getloadavg()[0]:.1f}; checkpoint {args.checkpoint}")
    if args.part in ("all", "table"):
        table(s)
    if args.part in ("all", "timing"):
        timing(s)
    if args.part == "all":
        memory(args)


if __name__ == "__main__":
    main()
