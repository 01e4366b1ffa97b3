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


if __name__ == "__main__":
    main()
