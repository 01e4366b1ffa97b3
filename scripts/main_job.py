"""The main job: run the example workflow on a real sample clip in a live ComfyUI and say where the
results are. Started by `python3 scripts/ta.py main` inside the provisioned venv.

Uses the host and weights of the provisioning manifest ($TA_MANIFEST): the embedded 2024 ComfyUI
with generated random SD1.5 weights, or the user's ComfyUI named by $COMFYUI_PATH. The weights are
random, so the output shows the pipeline working, not editing quality.
"""
import argparse
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from comfy_client import ComfyServer, set_inputs, ui_to_api  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOW = "edit_video.json"
# The generated weights run on 2 CPU cores: the tiny model and short schedules keep the job to minutes.
FAST = {("CheckpointLoaderSimple", "ckpt_name"): "ta_tiny_sd15.safetensors",
        ("TA_BilateralDDIMInversion", "steps"): 10, ("TA_BilateralDDIMInversion", "blocks"): "output 0, output 1",
        ("TA_ConsistencySampler", "steps"): 10, ("TA_TrainAdapter", "steps"): 10, ("TA_LoadVideo", "custom_width"): 256}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workflow", default=WORKFLOW, help="file in example_workflows/")
    ap.add_argument("--clip", default="carphone_pristine.mp4", help="sample clip name (see the manifest)")
    ap.add_argument("--frames", type=int, default=8, help="frames to load from the clip")
    ap.add_argument("--out", help="work folder (default: main_job/ in the provisioning cache, .cache/ or $TA_CACHE)")
    ap.add_argument("--pictures", help="also write the README pictures (frame strip, loss curve, heatmap "
                    "grid, metrics plot) into this folder")
    args = ap.parse_args()
    with open(os.environ["TA_MANIFEST"]) as f:
        manifest = json.load(f)
    args.out = args.out or os.path.join(manifest["cache"], "main_job")

    t0 = time.time()
    shutil.rmtree(args.out, ignore_errors=True)
    server = ComfyServer(manifest["python"], manifest["comfyui"], args.out,
                         extra_model_paths=manifest["extra_model_paths"])
    server.start()
    try:
        shutil.copy(manifest["clips"][args.clip], os.path.join(server.input_dir, args.clip))
        with open(os.path.join(REPO, "example_workflows", args.workflow)) as f:
            graph = ui_to_api(json.load(f), server.object_info)
        set_inputs(graph, {**FAST, ("TA_LoadVideo", "video"): args.clip, ("TA_LoadVideo", "frame_load_cap"): args.frames})
        if args.pictures:
            add_latent_taps(graph)
            # random weights make the eps field rough: plain DDIM inversion then misses the source by a
            # first-order error, which fixed-point refinement removes (tests/host/test_inversion_nodes.py)
            set_inputs(graph, {("TA_BilateralDDIMInversion", "refine"): PICTURE_REFINE})
        entry = server.run(graph, timeout=900)
    except Exception:
        print(server.log_tail(), file=sys.stderr)
        raise
    finally:
        server.stop()
    print(f"\n{args.workflow} ran on {args.clip} ({args.frames} frames) in {time.time() - t0:.1f}s.")
    for node_id, out in sorted(entry.get("outputs", {}).items()):
        for text in out.get("text", []):
            print(f"\n[{graph[node_id]['class_type']}]\n{text}")
    print(f"\nFiles written under {server.output_dir}:")
    for folder, _, files in sorted(os.walk(server.output_dir)):
        for name in sorted(files):
            print("  " + os.path.relpath(os.path.join(folder, name), server.output_dir))
    print(f"  server log: {server.log_path}")
    if args.pictures:
        readme_pictures(server.output_dir, manifest["clips"][args.clip], args.frames, args.pictures)


PICTURE_REFINE = 3  # fixed-point refinements per inversion step in the README pictures' run
LATENT_TAPS = {"1001": ("VAEEncode", "TemporalAdapter/latents_source"),
               "1002": ("TA_InversionReconstruct", "TemporalAdapter/latents_round_trip")}


def add_latent_taps(graph):
    """Save the clip's encoded latents and their inversion round trip (the readout's reconstruction)
    with the host's SaveLatent, for the README's latent-space picture."""
    for tap, (kind, prefix) in LATENT_TAPS.items():
        source = next(node_id for node_id, node in graph.items() if node["class_type"] == kind)
        graph[tap] = {"class_type": "SaveLatent", "inputs": {"samples": [source, 0], "filename_prefix": prefix}}


def latent_round_trip_picture(source_path, round_trip_path, count, scale=8):
    """Latent channels 0-2 as RGB (one shared scale per channel), source frames over their DDIM
    inversion round trip: an image of what the readout's latent PSNR measures."""
    import numpy as np
    from PIL import Image
    from safetensors.torch import load_file
    source, round_trip = (load_file(p)["latent_tensor"][:count, :3].float() for p in (source_path, round_trip_path))
    lo = source.amin(dim=(0, 2, 3), keepdim=True)
    hi = source.amax(dim=(0, 2, 3), keepdim=True)
    rows = [((x - lo) / (hi - lo)).clamp(0, 1) for x in (source, round_trip)]
    grid = np.concatenate([np.concatenate(list(r.permute(0, 2, 3, 1).numpy()), axis=1) for r in rows], axis=0)
    image = Image.fromarray((grid * 255).round().astype(np.uint8))
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST)


def readme_pictures(output_dir, clip, frames, folder):
    """Frame strip (source row over edit row), the latent round trip (source latents over their
    inversion round trip) and copies of the run's loss curve, heatmap grid and metrics plot, as PNGs
    in `folder`."""
    import av
    from PIL import Image

    def newest(prefix):
        base, name = os.path.split(os.path.join(output_dir, prefix))
        return os.path.join(base, sorted(f for f in os.listdir(base) if f.startswith(name))[-1])

    def first_frames(path, count, size=None):
        with av.open(path) as container:
            out = []
            for frame in container.decode(video=0):
                image = frame.to_image()
                out.append(image.resize(size) if size else image)
                if len(out) == count:
                    return out
        return out

    os.makedirs(folder, exist_ok=True)
    edit = first_frames(newest("TemporalAdapter/edit_0"), 4)
    source = first_frames(clip, 4, edit[0].size)
    w, h = edit[0].size
    strip = Image.new("RGB", (4 * w, 2 * h))
    for i, (a, b) in enumerate(zip(source, edit)):
        strip.paste(a, (i * w, 0))
        strip.paste(b, (i * w, h))
    strip.save(os.path.join(folder, "frames_source_vs_edit.png"))
    latent_round_trip_picture(*(newest(prefix) for _, prefix in LATENT_TAPS.values()), count=4).save(
        os.path.join(folder, "latent_round_trip.png"))
    for prefix, name in (("TemporalAdapter/edit_loss_curve", "loss_curve.png"),
                         ("TemporalAdapter/edit_heatmap_grid", "heatmap_grid.png"),
                         ("TemporalAdapter/edit_metrics_plot", "metrics_plot.png")):
        image = Image.open(newest(prefix)).convert("RGB")
        image.thumbnail((1600, 1600))  # keep the committed pictures small
        image.save(os.path.join(folder, name))
    print(f"README pictures written to {folder}")


if __name__ == "__main__":
    main()
