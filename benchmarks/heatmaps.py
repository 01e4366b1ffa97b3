"""Cost of the cross-attention heatmap capture (issue 8), in one run:

1. plain DDIM sampling (`adapter_core.ddim.sample_ddim` through the host's sampling, as the heatmap node's
   "sample" mode runs it) on the generated full-size SD1.5 checkpoint;
2. the same sampling on a clone with the capture patch on the default blocks (decoder blocks 4-11) that
   records the default timesteps (the two schedule steps nearest 932 and 941);
3. the same with every step recorded (the worst case: `timesteps = all`).
Runs alternate, each variant `--repeats` times; times are medians. Each run's output is compared with
the plain one bit for bit. Peak memory: the process's resident set size sampled every millisecond
during each run; "extra" is the variant's peak minus the plain run's peak (same process, same inputs),
plus the recorder's retained state (the aggregate it keeps).

Run from the repo root:  python3 scripts/ta.py run benchmarks/heatmaps.py
"""
import argparse
import os
import statistics
import time

import torch

from common import CHECKPOINTS, DEFAULT_COMFYUI, PeakRSS, import_host


def import_plugin(comfy_dir):
    """The host (in-process, --cpu) and the modules this benchmark uses."""
    sd = import_host(comfy_dir)
    from temporal_adapter.adapter_core import ddim, heatmaps, layout
    from temporal_adapter.nodes import host
    return sd, ddim, heatmaps, layout, host


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint",
                        default=os.path.join(CHECKPOINTS, "ta_full_sd15.safetensors"))
    parser.add_argument("--comfyui", default=DEFAULT_COMFYUI)
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--size", type=int, default=16, help="latent side (pixels / 8)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--words", type=int, default=3, help="recorded context tokens")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sd, ddim, heatmaps, layout, host = import_plugin(args.comfyui)
    print(f"machine: {os.cpu_count()} CPU cores, torch {torch.__version__} with {torch.get_num_threads()} threads; "
          f"load average at start {os.getloadavg()[0]:.1f}")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.frames, 4, args.size, args.size, generator=g)
    with torch.inference_mode():
        model, clip = sd.load_checkpoint_guess_config(args.checkpoint, output_vae=False, output_clip=True)[:2]
        cond = [[clip.encode_from_tokens(clip.tokenize("a man driving a car on a road")), {}]]
        model_sigmas = host.model_sigmas(model)
        sigmas = ddim.schedule(model_sigmas, args.steps)
        schedule = ddim.timesteps_for(model_sigmas, sigmas[:-1]).tolist()
        blocks, note = layout.choose_blocks("auto", host.unet_layout(model), "decoder_attention_blocks")
        chosen = heatmaps.choose_timesteps("auto", schedule)
        start = x * float(sigmas[0])
        print(f"model {host.model_family(model)}; blocks {', '.join(f'{k} {i}' for k, i in blocks)}"
              f"{' (' + note + ')' if note else ''}; {args.frames} frames of {args.size}x{args.size} latents, "
              f"{args.steps} steps {schedule}; default timesteps {chosen}; {args.words} recorded tokens")
        tokens = list(range(2, 2 + args.words))
        variants = {"plain": None, "capture (default timesteps)": chosen, "capture (every step)": schedule}
        times = {name: [] for name in variants}
        peaks = {name: [] for name in variants}
        state = {}
        reference = None
        host.run_sampler(model, ddim.sample_ddim, sigmas[-2:], cond, None, x)  # warm-up: load the model
        for _ in range(args.repeats):
            for name, timesteps in variants.items():
                run_model = model
                if timesteps is not None:
                    recorder = heatmaps.CrossAttentionRecorder(tokens, x.shape[-2:], timesteps, model_sigmas)
                    run_model = host.with_attn2_capture(model, blocks, recorder)
                with PeakRSS() as peak:
                    t0 = time.perf_counter()
                    out = host.run_sampler(run_model, ddim.sample_ddim, sigmas, cond, None, start)
                    times[name].append(time.perf_counter() - t0)
                peaks[name].append(peak.peak)
                if reference is None:
                    reference = out
                elif not torch.equal(out, reference):
                    raise SystemExit(f"{name}: output differs from plain sampling")
                if timesteps is not None:
                    kept = recorder.sum.numel() * 4 + sum(t.numel() * 4 for t, _ in recorder.delta.values())
                    state[name] = (recorder.calls, kept)
    plain = statistics.median(times["plain"])
    plain_peak = max(peaks["plain"])
    print("every run's output equals plain sampling bit for bit")
    for name in variants:
        median = statistics.median(times[name])
        line = f"{name:<28} {median:8.2f} s  ratio {median / plain:5.3f}  peak RSS {max(peaks[name]) / 2**20:8.1f} MiB"
        if name in state:
            calls, kept = state[name]
            line += (f"  extra peak {(max(peaks[name]) - plain_peak) / 2**20:+7.1f} MiB, recorded calls {calls}, "
                     f"retained state {kept / 2**10:.1f} KiB")
        print(line)
    print(f"goal: capture (default timesteps) / plain <= 1.25; probabilities are computed in chunks of at most "
          f"{heatmaps.CHUNK_BYTES >> 20} MiB")


if __name__ == "__main__":
    main()
