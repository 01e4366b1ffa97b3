"""The live server loads the plugin: every node id is listed, and the JS folder is served."""
import urllib.request


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
