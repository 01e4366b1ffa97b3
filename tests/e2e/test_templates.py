"""Every example workflow is offered in the host's template browser (hosts that have one: ComfyUI
0.3.x and newer list custom nodes' example_workflows/ at /api/workflow_templates; the 2024 host has
no such endpoint)."""
import os
import urllib.error
import urllib.request

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FOLDER = os.path.join(REPO, "example_workflows")
PLUGIN = "ComfyUI-TemporalAdapter"  # the folder name scripts/ta.py links into custom_nodes


def test_every_example_workflow_is_a_template(live_server):
    try:
        listed = live_server.get("/api/workflow_templates")
    except urllib.error.HTTPError as e:
        if e.code == 404:
            pytest.skip("this host has no workflow templates endpoint (the 2024 host)")
        raise
    ours = sorted(n[:-5] for n in os.listdir(FOLDER) if n.endswith(".json"))
    assert sorted(listed.get(PLUGIN, [])) == ours, listed
    for name in ours:
        for suffix in (".json", ".jpg"):
            with open(os.path.join(FOLDER, name + suffix), "rb") as f:
                expected = f.read()
            with urllib.request.urlopen(f"{live_server.url}/api/workflow_templates/{PLUGIN}/{name}{suffix}") as r:
                assert r.read() == expected, f"{name}{suffix} is served with other content"
