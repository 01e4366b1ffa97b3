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
WORKFLOW = "load_and_save.json"


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workflow", default=WORKFLOW, help="file in example_workflows/")
    ap.add_argument("--clip", default="bikes.mp4", help="sample clip name (see the manifest)")
    ap.add_argument("--frames", type=int, default=16, help="frames to load from the clip")
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
        set_inputs(graph, {("TA_LoadVideo", "video"): args.clip,
                           ("TA_LoadVideo", "frame_load_cap"): args.frames,
                           ("CheckpointLoaderSimple", "ckpt_name"): "ta_twolevel_sd15.safetensors"})
        entry = server.run(graph, timeout=900)
    except Exception:
        print(server.log_tail(), file=sys.stderr)
        raise
    finally:
        server.stop()
    print(f"\n{args.workflow} ran on {args.clip} in {time.time() - t0:.1f}s. Results:")
    for node_id, out in entry.get("outputs", {}).items():
        kind = graph[node_id]["class_type"]
        for key, items in out.items():
            for item in items if isinstance(items, list) else []:
                if isinstance(item, dict) and "filename" in item:
                    path = os.path.join(server.output_dir, item.get("subfolder", ""), item["filename"])
                    print(f"  {kind} ({key}): {path}")
    print(f"  server log: {server.log_path}")


if __name__ == "__main__":
    main()
