"""Adapter trainer cost (issue 6): time per training step against one forward pass of the same
batch in the same run, peak memory, trainable parameters, and the theory paper's Fig. 4 table
(adjacent-frame cosine of decoder features and predicted x0, untrained vs trained adapter).

The full-size random SD1.5 UNet from the generated checkpoint, loaded by the host's own loader;
carphone_pristine.mp4 at 256 px (32x32 latents), 4 frames per step, default adapter (S=4, U=2,
rank-4 LoRA on q/k/v/out of every attention, decoder blocks 4-11 for the temporal loss).

Run from the repo root:  python3 scripts/ta.py run benchmarks/trainer.py [--steps N]
"""
import argparse
import json
import os
import resource
import statistics
import time

import cv2
import numpy as np
import torch

from common import CHECKPOINTS, CLIPS, DEFAULT_COMFYUI, import_host
TIMESTEPS = (999, 975, 950, 925, 900)


def host_and_nodes(comfy_dir, checkpoints):
    """The 2024 host imported in-process (--cpu) and our package, without running its __init__."""
    import_host(comfy_dir)
    import folder_paths
    import nodes
    folder_paths.add_model_folder_path("checkpoints", checkpoints)
    from temporal_adapter.nodes import adapter_nodes, host
    return nodes, host, adapter_nodes


def frames_of(path, count, size):
    cap, out = cv2.VideoCapture(path), []
    while len(out) < count:
        ok, frame = cap.read()
        if not ok:
            raise SystemExit(f"{path} has fewer than {count} frames")
        out.append(cv2.resize(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), (size, size), interpolation=cv2.INTER_AREA))
    return torch.from_numpy(np.stack(out)).float() / 255.0


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="ta_full_sd15.safetensors")
    parser.add_argument("--checkpoints", default=CHECKPOINTS)
    parser.add_argument("--comfyui", default=DEFAULT_COMFYUI)
    parser.add_argument("--clip", default=CLIPS["carphone_pristine.mp4"])
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--size", type=int, default=256, help="frame size in pixels (latents are size/8)")
    parser.add_argument("--steps", type=int, default=4, help="timed training steps (the first is a warm-up)")
    args = parser.parse_args()

    nodes, host, adapter_nodes = host_and_nodes(args.comfyui, args.checkpoints)
    from temporal_adapter.adapter_core import training
    from temporal_adapter.adapter_core.layout import choose_blocks

    with torch.inference_mode():
        model, clip, vae = nodes.CheckpointLoaderSimple().load_checkpoint(args.checkpoint)[:3]
        cond = nodes.CLIPTextEncode().encode(clip, "a man talking on a phone in a car")[0]
        latent = nodes.VAEEncode().encode(vae, frames_of(args.clip, args.frames, args.size))[0]
    baseline = peak_rss_mib()
    features, note = choose_blocks("auto", host.unet_layout(model), "decoder_attention_blocks")
    settings = training.TrainSettings(steps=args.steps, frames_per_step=args.frames, shared_only_fraction=0.0)
    with torch.inference_mode(False):
        adapter = adapter_nodes.TA_TrainAdapter._new_adapter(model, host.model_family(model), args.frames, cond[0][0],
                                                             4, 2, 4, 4.0, "auto", (900, 1000), 0, None, None)
        untrained = adapter.copy()
    step_times = []
    with torch.inference_mode(), host.TrainingDenoiser(model, adapter, features) as denoise:
        latents = host.model_space(model, latent["samples"]).clone()
        text, sigmas = cond[0][0].clone(), host.model_sigmas(model)
        extra = host.adm_conditioning(model, cond, latent["samples"][:1])  # SDXL family: the ADM input y
        objective = training.Objective(adapter, denoise, latents, text, sigmas, settings, extra)
        batch = training.draw_batch(settings, 0, args.frames, latents.shape[1:], adapter.window)
        forward = []
        with torch.no_grad():
            for _ in range(3):
                t0 = time.perf_counter()
                objective(batch)
                forward.append(time.perf_counter() - t0)
        t_last = [time.perf_counter()]

        def progress(step, total, record):
            now = time.perf_counter()
            step_times.append(now - t_last[0])
            t_last[0] = now
        training.train(adapter, denoise, latents, text, sigmas, settings, progress, extra=extra)
        trained_rows = training.consistency_table(adapter, denoise, latents, text, sigmas, TIMESTEPS, extra=extra)
    with torch.inference_mode(), host.TrainingDenoiser(model, untrained, features) as denoise:
        untrained_rows = training.consistency_table(untrained, denoise, latents, text, sigmas, TIMESTEPS,
                                                    extra=extra)

    step = statistics.median(step_times[1:] or step_times)
    fwd = statistics.median(forward)
    lora = sum(p.numel() for p in adapter.lora_parameters())
    print(f"model {args.checkpoint}: {sum(p.numel() for p in model.model.diffusion_model.parameters()) / 1e6:.1f} M "
          f"UNet params; batch {args.frames} frames x {tuple(latents.shape[1:])} latents; feature blocks {features}")
    print(f"trainable parameters: {adapter.parameter_count():,} (LoRA {lora:,}, tokens "
          f"{adapter.parameter_count() - lora:,})")
    print(f"forward (same batch, no grad, median of 3): {fwd:.2f} s")
    print(f"training step (forward + backward + AdamW, median of {max(len(step_times) - 1, 1)}): {step:.2f} s "
          f"-> ratio {step / fwd:.2f}x (goal <= 3.5x); all steps {[round(s, 2) for s in step_times]}")
    print(f"peak RSS {peak_rss_mib():.0f} MiB (after loading the checkpoint and encoding: {baseline:.0f} MiB)")
    print(f"loss per step: {[round(r['total'], 5) for r in adapter.metadata['loss_history']]}")
    print("\n   t | features untrained | features trained | x0 untrained | x0 trained")
    for (t, fu, xu), (_, ft, xt) in zip(untrained_rows, trained_rows):
        print(f"{t:4d} | {fu:18.6f} | {ft:16.6f} | {xu:12.6f} | {xt:10.6f}")
    print(json.dumps({"step_s": step, "forward_s": fwd, "ratio": step / fwd, "peak_rss_mib": peak_rss_mib(),
                      "trainable": adapter.parameter_count(), "lora": lora}))


if __name__ == "__main__":
    main()
