"""Cost of the bilateral filters (issue 3), printed as ratios.

1. temporal_bilateral on an SD1.5-sized attn1 output of output blocks 9/10: 16 frames × 4096
   tokens × 320 channels, float32, kernel 5;
2. spatial_bilateral vs cv2.bilateralFilter on a 512×512 3-channel image (cv2 run per 8-bit plane,
   the same definition as ours; ours on float32);
3. the temporal filter as a fraction of one SD1.5 UNet forward over the same 16 frames (goal < 5%),
   the UNet built by ComfyUI from the generated full-size SD1.5 checkpoint. A 16-frame forward is
   slow on a small CPU, so by default a forward of `--unet-frames` frames is timed and scaled
   linearly to 16 (printed as such).

Run from the repo root:  python3 scripts/ta.py run benchmarks/bilateral.py
"""
import argparse
import os

import cv2
import numpy as np
import torch

from common import CHECKPOINTS, DEFAULT_COMFYUI, import_host, register_package, seconds
FRAMES, TOKENS, CHANNELS = 16, 4096, 320


def core_bilateral():
    """adapter_core.bilateral, imported as the package `temporal_adapter` without its host __init__."""
    register_package()
    from temporal_adapter.adapter_core import bilateral
    return bilateral


def unet_forward_seconds(checkpoint, comfy_dir, frames, repeats):
    """Median time of one SD1.5 UNet forward (apply_model) on `frames` 64×64 latents, CPU."""
    sd = import_host(comfy_dir)
    patcher = sd.load_checkpoint_guess_config(checkpoint, output_vae=False, output_clip=False)[0]
    model = patcher.model
    g = torch.Generator().manual_seed(0)
    x = torch.randn(frames, 4, 64, 64, generator=g)
    sigma = torch.full((frames,), 5.0)
    context = torch.randn(frames, 77, 768, generator=g)
    with torch.inference_mode():
        return seconds(lambda: model.apply_model(x, sigma, c_crossattn=context), repeats), model.get_dtype()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint",
                        default=os.path.join(CHECKPOINTS, "ta_full_sd15.safetensors"))
    parser.add_argument("--comfyui", default=DEFAULT_COMFYUI)
    parser.add_argument("--unet-frames", type=int, default=1, help="frames per timed UNet forward (scaled to 16)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch and OpenCV threads for the whole run (0: their defaults); on shared cores "
                             "1 thread avoids stalls at every parallel op")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)
    bilateral = core_bilateral()
    print(f"machine: {os.cpu_count()} CPU cores, torch {torch.__version__} with {torch.get_num_threads()} threads, "
          f"OpenCV {cv2.__version__} with {cv2.getNumThreads()} threads; load average at start "
          f"{os.getloadavg()[0]:.1f} (the cores are shared: timings are medians of --repeats runs)")

    g = torch.Generator().manual_seed(0)
    attn1 = torch.randn(FRAMES, TOKENS, CHANNELS, generator=g)
    temporal = seconds(lambda: bilateral.temporal_bilateral(attn1), args.repeats)
    print(f"temporal_bilateral [{FRAMES}, {TOKENS}, {CHANNELS}] float32, kernel 5: {temporal * 1e3:.1f} ms")

    image = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    planes = [np.ascontiguousarray(image[:, :, c]) for c in range(3)]
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    for diameter, sigma_color, sigma_space in ((9, 75.0, 75.0), (5, 20.0, 2.0)):
        ours = seconds(lambda: bilateral.spatial_bilateral(tensor, diameter, sigma_color, sigma_space), args.repeats)
        cv = seconds(lambda: [cv2.bilateralFilter(p, diameter, sigma_color, sigma_space) for p in planes], args.repeats)
        print(f"spatial_bilateral 512x512x3 d={diameter}: ours {ours * 1e3:.1f} ms, cv2 per plane {cv * 1e3:.2f} ms, "
              f"ratio ours/cv2 = {ours / cv:.1f}")

    if not os.path.exists(args.checkpoint):
        print(f"UNet comparison skipped: no checkpoint at {args.checkpoint}")
        return
    forward, dtype = unet_forward_seconds(args.checkpoint, args.comfyui, args.unet_frames, max(1, args.repeats // 2))
    forward16 = forward * FRAMES / args.unet_frames
    print(f"SD1.5 UNet forward ({dtype}), {args.unet_frames} frame(s) at 64x64: {forward:.2f} s "
          f"-> {forward16:.1f} s for {FRAMES} frames (scaled linearly from {args.unet_frames})")
    print(f"temporal filter / UNet forward: one block {temporal / forward16:.3%}, "
          f"both filtered blocks (output 9 and 10) {2 * temporal / forward16:.3%} (goal < 5%)")


if __name__ == "__main__":
    main()
