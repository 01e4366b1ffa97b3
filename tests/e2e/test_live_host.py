"""The live server loads the plugin: every node id is listed, and the JS folder is served; it keeps its user
data outside the host's tree."""
import os
import urllib.request

import pytest
from comfy_client import host_options


def test_object_info_lists_every_plugin_node(live_server, comfy_host):
    ours = set(comfy_host.plugin.NODE_CLASS_MAPPINGS)
    assert ours and ours <= set(live_server.object_info)
    for node_id in ours:
        info = live_server.object_info[node_id]
        assert info["category"].startswith("Temporal Adapter/")
        assert info["display_name"] == comfy_host.plugin.NODE_DISPLAY_NAME_MAPPINGS[node_id]


def test_front_end_extension_files_are_served(live_server):
    scripts = live_server.get("/extensions")
    ours = [s for s in scripts if "/ComfyUI-TemporalAdapter/" in s]
    assert ours, f"no extension script of ours in /extensions: {scripts}"
    for path in ours:
        with urllib.request.urlopen(live_server.url + path, timeout=10) as r:
            assert r.status == 200 and b"registerExtension" in r.read()


def test_the_server_writes_its_user_data_outside_the_host_tree(live_server, provisioned):
    """With COMFYUI_PATH the host is the user's own install: the test servers keep their settings and database
    in their work folder (the host's --user-directory and --database-url), never in the install's user/."""
    if "--user-directory" not in host_options(provisioned["comfyui"]):
        pytest.skip("this host has no --user-directory option (the 2024 host): its user folder is in its tree")
    tree_user = os.path.join(provisioned["comfyui"], "user")

    def snapshot():
        return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
                for d, _, files in os.walk(tree_user) for f in files}

    before = snapshot()
    status, _ = live_server.post("/settings", {"TemporalAdapter.TestSetting": 1})
    assert status == 200
    with open(os.path.join(live_server.user_dir, "default", "comfy.settings.json")) as f:
        assert '"TemporalAdapter.TestSetting": 1' in f.read()
    assert os.path.exists(os.path.join(live_server.user_dir, "comfyui.db"))
    assert snapshot() == before
