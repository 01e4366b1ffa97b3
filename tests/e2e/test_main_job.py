"""The README's main-job command, on a smaller clip: it starts its own server, runs the full edit
workflow and lists the edited video, the reconstruction, the heatmaps and the metrics report."""
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_main_job_edits_a_sample_clip(provisioned, tmp_path):
    """Run as `ta.py main` runs it, with the provisioning cache moved ($TA_CACHE): the outputs go into
    that cache's main_job folder, not into the repo."""
    manifest = dict(provisioned, cache=str(tmp_path / "cache"))
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    env = dict(os.environ, TA_MANIFEST=str(tmp_path / "manifest.json"))
    r = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "main_job.py"), "--frames", "4",
                        "--pictures", str(tmp_path / "pictures")],
                       env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"Files written under {tmp_path / 'cache' / 'main_job'}" in r.stdout
    listed = r.stdout.split("Files written under", 1)[1]
    for name in ("edit_00001_.mp4", "edit_reconstruction_video_00001_.mp4", "edit_heatmap_grid_00001_.png",
                 "edit_metrics_00001_.json", "edit_reconstruction_00001_.json", "edit_loss_curve_00001_.png"):
        assert name in listed, f"{name} not in the main job's listing:\n{listed}"
    assert sorted(os.listdir(tmp_path / "pictures")) == ["frames_source_vs_edit.png", "heatmap_grid.png",
                                                         "latent_round_trip.png", "loss_curve.png", "metrics_plot.png"]
