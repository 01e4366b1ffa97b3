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
    ap.add_argument("--out", default=os.path.join(REPO, ".cache", "main_job"), help="work folder")
    ap.add_argument("--pictures", help="also write the README pictures (frame strip, loss curve, heatmap "
                    "grid, metrics plot) into this folder")
    args = ap.parse_args()
    with open(os.environ["TA_MANIFEST"]) as f:
        manifest = json.load(f)

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


def readme_pictures(output_dir, clip, frames, folder):
    """Frame strip (source row over edit row) and copies of the run's loss curve, heatmap grid and
    metrics plot, as PNGs in `folder`."""
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
    for prefix, name in (("TemporalAdapter/edit_loss_curve", "loss_curve.png"),
                         ("TemporalAdapter/edit_heatmap_grid", "heatmap_grid.png"),
                         ("TemporalAdapter/edit_metrics_plot", "metrics_plot.png")):
        image = Image.open(newest(prefix)).convert("RGB")
        image.thumbnail((1600, 1600))  # keep the committed pictures small
        image.save(os.path.join(folder, name))
    print(f"README pictures written to {folder}")


if __name__ == "__main__":
    main()
