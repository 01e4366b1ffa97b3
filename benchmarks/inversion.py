"""Cost of the bilateral DDIM inverter (issue 5), in one run on one model, frames and steps:

1. baseline: ComfyUI's own sampler over flipped sigmas (the usual "unsampler": `comfy.sample.sample_custom`
   with the host's "euler" KSAMPLER and FlipSigmas(ddim_uniform), cfg 1, no noise);
2. TA_BilateralDDIMInversion with the filter off;
3. the same with the temporal filter on (attn1 outputs of the two highest-resolution attention blocks).
The inverter's content cache is cleared before every run. Runs alternate; times are medians.
Then peak memory (resident set size, sampled every ms, minus the level before the run) of inverting
16 and 64 frames at frames_per_chunk 16 with the temporal filter, each in a fresh subprocess.
`--part fingerprint`: the model fingerprint (the inversion cache key and the sampler's model check,
computed on every run of the inverter, sampler, readout and heatmaps) as a fraction of one inversion
(filter off, cache cleared) of the same model in the same process; medians after a warm-up.

Run from the repo root:  python3 scripts/ta.py run benchmarks/inversion.py [--checkpoint NAME] [--frames N]
[--part all|timing|memory|fingerprint]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from common import CHECKPOINTS, DEFAULT_COMFYUI, PeakRSS, import_host, seconds


def setup(args):
    sd = import_host(args.comfyui)
    import folder_paths
    folder_paths.set_temp_directory(tempfile.mkdtemp(prefix="ta_bench_"))
    from temporal_adapter.adapter_core.layout import names
    from temporal_adapter.nodes import host, inversion_nodes
    with torch.inference_mode():  # the checkpoint's own text encoders: SDXL adds the pooled output
        model, clip = sd.load_checkpoint_guess_config(os.path.join(CHECKPOINTS, args.checkpoint), output_vae=False)[:2]
        tokens, pooled = clip.encode_from_tokens(clip.tokenize("a man driving a car on a road"), return_pooled=True)
    top_two = names(host.unet_layout(model).filter_blocks())
    cond = [[tokens, {"pooled_output": pooled}]]
    return model, cond, top_two, host, inversion_nodes


def latent(frames, size):
    return {"samples": torch.randn(frames, 4, size, size, generator=torch.Generator().manual_seed(0)) * 5}


def invert(nodes_mod, host, model, cond, lat, steps, filt, blocks, chunk):
    shutil.rmtree(host.inversion_cache_dir(), ignore_errors=True)
    return nodes_mod.BilateralDDIMInversion().invert(model, cond, lat, steps, filt, 5, 1.0, 1.0, False, blocks, 0,
                                                      chunk)[0]


def memory_child(args):
    model, cond, blocks, host, nodes_mod = setup(args)
    lat = latent(args.memory_frames, args.size)
    with torch.inference_mode():
        invert(nodes_mod, host, model, cond, latent(4, args.size), 1, "temporal", blocks, 16)  # load and warm up
        with PeakRSS() as base:
            pass
        with PeakRSS() as peak:
            invert(nodes_mod, host, model, cond, lat, args.memory_steps, "temporal", blocks, 16)
    print(json.dumps({"frames": args.memory_frames, "extra_mib": (peak.peak - base.peak) / 2**20}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="ta_twolevel_sd15.safetensors")
    ap.add_argument("--comfyui", default=DEFAULT_COMFYUI)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, default=32, help="latent side (pixels / 8)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--memory-steps", type=int, default=2)
    ap.add_argument("--part", choices=["all", "timing", "memory", "fingerprint"], default="all")
    ap.add_argument("--memory-frames", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_frames:
        return memory_child(args)
    if args.part == "fingerprint":
        return fingerprint(args)
    if args.part != "memory":
        timing(args)
    if args.part != "timing":
        memory(args)


def timing(args):
    model, cond, blocks, host, nodes_mod = setup(args)
    import comfy.sample
    import comfy.samplers
    from comfy_extras.nodes_custom_sampler import BasicScheduler, FlipSigmas
    lat = latent(args.frames, args.size)
    with torch.inference_mode():
        flipped = FlipSigmas().get_sigmas(BasicScheduler().get_sigmas(model, "ddim_uniform", args.steps, 1.0)[0])[0]
        euler = comfy.samplers.sampler_object("euler")
        runs = {
            "comfy unsampler (euler, flipped sigmas)": lambda: comfy.sample.sample_custom(
                model, torch.zeros_like(lat["samples"]), 1.0, euler, flipped, cond, cond, lat["samples"],
                disable_pbar=True),
            "ours, filter off": lambda: invert(nodes_mod, host, model, cond, lat, args.steps, "off", blocks, 0),
            f"ours, temporal filter ({blocks})": lambda: invert(nodes_mod, host, model, cond, lat, args.steps,
                                                                "temporal", blocks, 0),
        }
        times = {name: [] for name in runs}
        for fn in runs.values():
            fn()  # warm-up (model load)
        for _ in range(args.repeats):
            for name, fn in runs.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    base = statistics.median(times[next(iter(runs))])
    print(f"{args.checkpoint}, {args.frames} frames, {args.size}x{args.size} latents, {args.steps} steps, "
          f"{args.repeats} repeats, torch threads {torch.get_num_threads()}")
    for name, ts in times.items():
        print(f"  {name:45s} {statistics.median(ts):8.2f} s   {statistics.median(ts) / base:5.3f}x")


def fingerprint(args):
    model, cond, blocks, host, nodes_mod = setup(args)
    lat = latent(args.frames, args.size)
    unet = model.model.diffusion_model.state_dict()
    with torch.inference_mode():
        key = seconds(lambda: host.model_fingerprint(model), max(args.repeats, 9))
        inversion = seconds(lambda: invert(nodes_mod, host, model, cond, lat, args.steps, "off", blocks, 0),
                            args.repeats)
    print(f"{args.checkpoint} ({len(unet)} UNet tensors, {sum(t.numel() for t in unet.values()) / 1e6:.0f}M values), "
          f"torch threads {torch.get_num_threads()}: fingerprint {key * 1000:.1f} ms; inversion of {args.frames} "
          f"frames, {args.size}x{args.size} latents, {args.steps} steps {inversion:.2f} s; "
          f"ratio {key / inversion * 100:.3f} %")


def memory(args):
    peaks = {}
    for frames in (16, 64):
        out = subprocess.run([sys.executable, __file__, "--checkpoint", args.checkpoint, "--comfyui", args.comfyui,
                              "--size", str(args.size), "--memory-steps", str(args.memory_steps),
                              "--memory-frames", str(frames)], capture_output=True, text=True, check=True)
        peaks[frames] = json.loads(out.stdout.strip().splitlines()[-1])["extra_mib"]
    print(f"peak extra memory at frames_per_chunk 16 ({args.memory_steps} steps): 16 frames {peaks[16]:.0f} MiB, "
          f"64 frames {peaks[64]:.0f} MiB, ratio {peaks[64] / max(peaks[16], 1e-9):.2f}")


if __name__ == "__main__":
    main()
