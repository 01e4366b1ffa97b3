"""Shared fixtures for every tier.

Tiers (by folder): unit (adapter_core alone), host (our nodes in-process in the real ComfyUI),
e2e (a live server over HTTP), browser (the front end in headless Chromium). The repo is importable
as the package `temporal_adapter` without running its `__init__` (which needs the host), so unit
tests import `temporal_adapter.adapter_core...` with no ComfyUI at all.
"""
import fcntl
import gc
import json
import os
import sys
import time
import types
from collections import defaultdict

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "temporal_adapter"

if PACKAGE not in sys.modules:
    _pkg = types.ModuleType(PACKAGE)
    _pkg.__path__ = [REPO]
    _pkg.__package__ = PACKAGE
    _pkg.__file__ = os.path.join(REPO, "__init__.py")
    sys.modules[PACKAGE] = _pkg

sys.path.insert(0, os.path.join(REPO, "scripts"))


def manifest():
    """What `scripts/ta.py setup` provisioned (host path, weights, clips): comfy_client.load_manifest,
    ending the session (not one test) when nothing was provisioned."""
    from comfy_client import load_manifest
    try:
        return load_manifest()
    except SystemExit as e:
        pytest.exit(f"{e} (or run `python3 scripts/ta.py test`)", returncode=3)


@pytest.fixture(scope="session")
def provisioned():
    return manifest()


@pytest.fixture(scope="session")
def clips(provisioned):
    return provisioned["clips"]


@pytest.fixture(scope="session")
def shared_cases():
    """The real-world failing inputs of `shared/cases/` (read-only): beside the repo, as CI lays it
    out (`../shared/cases`), or where TA_SHARED_CASES points (a worktree elsewhere)."""
    folder = os.environ.get("TA_SHARED_CASES") or os.path.join(REPO, os.pardir, "shared", "cases")
    if not os.path.isdir(folder):
        pytest.skip(f"no shared cases folder at {os.path.abspath(folder)} (shared/ is laid beside the repo "
                    "in CI; set TA_SHARED_CASES to run these tests elsewhere)")
    return folder


@pytest.fixture
def case(shared_cases, tmp_path):
    """case("video/rot90.mp4") -> a copy of that case file or folder in the test's tmp folder."""
    import shutil

    def copy(name):
        source, target = os.path.join(shared_cases, name), str(tmp_path / os.path.basename(name))
        (shutil.copytree if os.path.isdir(source) else shutil.copyfile)(source, target)
        os.chmod(target, 0o755 if os.path.isdir(target) else 0o644)
        return target
    return copy


@pytest.fixture(scope="session")
def comfy_host(provisioned, tmp_path_factory):
    """The real ComfyUI imported in this process with --cpu, its folders pointed at temp dirs.

    Returns a namespace with the host's `nodes` module, `folder_paths`, the checkpoint folder and
    `plugin`: our package with its real `__init__` executed (NODE_CLASS_MAPPINGS etc.).
    """
    comfy_dir = provisioned["comfyui"]
    if comfy_dir not in sys.path:
        sys.path.insert(0, comfy_dir)
    argv = sys.argv
    sys.argv = [argv[0], "--cpu"]
    try:
        import comfy.options
        comfy.options.enable_args_parsing()
        import comfy.cli_args  # noqa: F401  (parses --cpu now)
        import folder_paths
        import nodes as host_nodes
    finally:
        sys.argv = argv
    base = tmp_path_factory.mktemp("comfy")
    for name in ("input", "output", "temp"):
        os.makedirs(base / name, exist_ok=True)
    folder_paths.set_input_directory(str(base / "input"))
    folder_paths.set_output_directory(str(base / "output"))
    folder_paths.set_temp_directory(str(base / "temp"))
    folder_paths.add_model_folder_path("checkpoints", provisioned["checkpoints"])
    plugin = sys.modules[PACKAGE]
    if not hasattr(plugin, "NODE_CLASS_MAPPINGS"):
        with open(os.path.join(REPO, "__init__.py")) as f:
            exec(compile(f.read(), plugin.__file__, "exec"), plugin.__dict__)
    return types.SimpleNamespace(nodes=host_nodes, folder_paths=folder_paths, plugin=plugin,
                                 dir=comfy_dir, base=base, checkpoints=provisioned["checkpoints"])


@pytest.fixture
def adapter_dir(comfy_host, tmp_path):
    """Adapters are written to a temp folder placed first in the temporal_adapters list. On leaving, the
    host's cached listing of that list goes too: the folder is deleted after the test, and the host's cache
    check (os.path.getmtime of every folder it listed) would raise FileNotFoundError in later tests."""
    paths = comfy_host.folder_paths.folder_names_and_paths["temporal_adapters"][0]
    paths.insert(0, str(tmp_path))
    yield tmp_path
    paths.remove(str(tmp_path))
    comfy_host.folder_paths.filename_list_cache.pop("temporal_adapters", None)


@pytest.fixture(scope="session")
def tiny_model(comfy_host):
    """(MODEL, CLIP, VAE) of the generated tiny SD1.5 checkpoint, loaded by the host's own loader."""
    import torch
    with torch.inference_mode():
        return comfy_host.nodes.CheckpointLoaderSimple().load_checkpoint("ta_tiny_sd15.safetensors")[:3]


# A small SDXL-class UNet (25 M params): the SDXL family's shape (no attention at full size, transformer depth
# 1 at 1/2 and 2 at 1/4 of the latent size and in the middle block), context 2048 and the 2816-wide ADM input,
# at 128 channels. The host's detection only knows the exact SDXL-family depths, so no file can hold it: the
# `sdxl_model` fixture builds it in-process with the host's own SDXL classes.
MINI_SDXL = dict(model_channels=128, channel_mult=[1, 2, 2], num_res_blocks=[1, 1, 1], transformer_depth=[0, 1, 2],
                 transformer_depth_output=[0, 0, 1, 1, 2, 2], transformer_depth_middle=2)


def host_model(family, depth, arch, seed):
    """A ModelPatcher of the host class `family` (comfy.supported_models, e.g. "SDXL") with the UNet of
    `arch` ("sd15" | "sd2" | "sdxl", scripts/make_weights.ARCHS) and `depth` (unet_config entries overriding
    them), built with the host's own supported_models/model_base classes, weights from make_weights.fill
    (fp16 values, the model in fp32 on the CPU)."""
    import torch
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models
    from make_weights import fill, unet_config

    config = getattr(comfy.supported_models, family)(unet_config(arch, depth))
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    weights = fill(model.diffusion_model.state_dict(), seed)
    model.diffusion_model.load_state_dict({k: v.float() for k, v in weights.items()})
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


@pytest.fixture(scope="module")
def sdxl_model(comfy_host):
    """The mini SDXL (`MINI_SDXL`) as a MODEL: family "SDXL", the host's SDXL latent format and ADM path."""
    import torch
    with torch.inference_mode():
        return host_model("SDXL", MINI_SDXL, "sdxl", 11)


@pytest.fixture(scope="module")
def sdxl_clip(comfy_host):
    """(CLIP, VAE) of the generated Segmind-Vega checkpoint (CLIP-L + OpenCLIP-G at full depth, an SDXL TAESD),
    loaded by the host's own loader without its UNet."""
    import torch
    import comfy.sd
    path = comfy_host.folder_paths.get_full_path("checkpoints", "ta_vega_sdxl.safetensors")
    with torch.inference_mode():
        return tuple(comfy.sd.load_checkpoint_guess_config(path, output_model=False)[1:3])


@pytest.fixture(scope="module")
def big_model_turn():
    """Held by the modules that load the full-size checkpoints (SD1.5 860 M, SD2.1-768-v, Segmind Vega; 8-12 GB
    at peak) while they run: when CI runs two suites at once (one per host), TA_MEMORY_LOCK names a file
    both lock, so that two such modules take turns instead of adding up their memory."""
    path = os.environ.get("TA_MEMORY_LOCK")
    if not path:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@pytest.fixture(autouse=True, scope="module")
def release_models():
    """After each test module, the host's model management lets go of the models the module loaded (as
    its "Unload models" does), so that the suite's memory is that of one module's models, not of all
    (the full SD1.5, SD2.1 and Segmind-Vega checkpoints together do not fit a CI machine)."""
    yield
    if "comfy.model_management" in sys.modules:
        import comfy.model_management as mm
        mm.unload_all_models()
        gc.collect()
        mm.soft_empty_cache()


@pytest.fixture(scope="session")
def live_server(provisioned, comfy_host, tmp_path_factory):
    """A ComfyUI server on a free loopback port with our plugin; stopped at the end of the session. It serves
    the front end that $TA_FRONT_END names (`--front-end-root`, comfy_client.front_end_root), else its own."""
    from comfy_client import ComfyError, ComfyServer, front_end_root
    try:
        root = front_end_root(provisioned)
    except SystemExit as e:
        pytest.fail(str(e))
    server = ComfyServer(provisioned["python"], provisioned["comfyui"], str(tmp_path_factory.mktemp("live")),
                         extra_model_paths=provisioned["extra_model_paths"], front_end_root=root)
    try:
        server.start()
    except ComfyError as e:
        pytest.fail(str(e))
    missing = sorted(set(comfy_host.plugin.NODE_CLASS_MAPPINGS) - set(server.object_info))
    if missing:
        server.stop()
        pytest.fail(f"the live host did not register {missing}; server log:\n{server.log_tail()}")
    yield server
    server.stop()


# ---- the browser tier's page -------------------------------------------------------------------
VUE_NODES = "Comfy.VueNodes.Enabled"  # the front end's setting for its Vue-based node renderer ("Nodes 2.0")
RENDERERS = ("canvas", "vue")
_no_vue = {}  # live server url -> why its front end has no Vue renderer (found once, not per module)

FRONT_END_INFO = f"""() => {{
    const settings = window.app.ui?.settings;
    const vue = !!settings?.settingsLookup?.["{VUE_NODES}"];
    return {{ version: window.__COMFYUI_FRONTEND_VERSION__ ?? null, vue,
              on: vue ? settings.getSettingValue("{VUE_NODES}") : null }};
}}"""


@pytest.fixture(scope="module", params=RENDERERS)
def page(request, live_server):
    """A headless-Chromium page on the live server's front end, once per node renderer that the front end
    offers: "canvas" (LiteGraph's, always) and "vue" (its Vue-based nodes, where the front end registers the
    Comfy.VueNodes.Enabled setting; skipped with that reason where it does not). `page.renderer` and
    `page.front_end` (its version) say which. The renderer is chosen as a user does, by the setting, stored
    in the server's own user folder before the page loads (with the first-run template browser marked seen)."""
    import shutil
    from comfy_client import front_end_page, host_options
    reason = os.environ.get("TA_BROWSER_UNAVAILABLE")
    if reason or not shutil.which("chromium"):
        pytest.skip(f"browser tier skipped: {reason or 'chromium is not installed'}")
    renderer = request.param
    if renderer == "vue" and live_server.url in _no_vue:
        pytest.skip(_no_vue[live_server.url])
    if "--user-directory" in host_options(live_server.comfy_dir):  # else the settings are the host tree's own
        status, _ = live_server.post("/settings", {VUE_NODES: renderer == "vue", "Comfy.TutorialCompleted": True})
        assert status == 200, f"POST /settings answered {status}"
    with front_end_page(live_server.url, 1280, 800) as page:
        info = page.evaluate(FRONT_END_INFO)
        version = info["version"] or "bundled with the host"
        if not info["vue"]:
            _no_vue[live_server.url] = (f"front end {version} has no Vue node renderer (no {VUE_NODES} setting "
                                        "in its settings registry)")
            if renderer == "vue":
                pytest.skip(_no_vue[live_server.url])
        elif info["on"] != (renderer == "vue"):
            pytest.fail(f"front end {version}: {VUE_NODES} is {info['on']}, asked for the {renderer} renderer")
        if version not in FRONT_ENDS_SEEN:
            reporter = request.config.pluginmanager.get_plugin("terminalreporter")
            if reporter:
                reporter.write_line(f"\nbrowser tier on {host_label()}: front end {version}"
                                    f"{' (renderers canvas and vue)' if info['vue'] else ' (canvas renderer only)'}")
        FRONT_ENDS_SEEN[version].add(renderer)
        page.renderer, page.front_end = renderer, version
        yield page


# ---- time per tier, printed at the end -------------------------------------------------------
_tier_time = defaultdict(float)
_tier_count = defaultdict(int)


def _tier(nodeid):
    parts = nodeid.split("/")  # node ids are relative to tests/ (the rootdir)
    return parts[0] if len(parts) > 1 else "other"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    t0 = time.time()
    yield
    _tier_time[_tier(item.nodeid)] += time.time() - t0
    _tier_count[_tier(item.nodeid)] += 1


def host_label():
    """The host the suite runs on, as the provisioning manifest names it (e.g. "ComfyUI 0.8.0"), with the
    front end that $TA_FRONT_END names when set (e.g. "ComfyUI 0.33.0, front end 1.58.1")."""
    try:
        label = manifest().get("host_label") or "ComfyUI"
    except BaseException:  # no manifest: pytest.exit was raised; the summary still prints
        label = "unknown host"
    front_end = os.environ.get("TA_FRONT_END")
    return f"{label}, front end {os.path.basename(os.path.normpath(front_end))}" if front_end else label


# The front ends the browser tier saw, {"1.58.1": {"canvas", "vue"}}: tests/browser/conftest.py fills it
# from the page (its own version and the renderers it offered); the summary names them.
FRONT_ENDS_SEEN = defaultdict(set)


def pytest_terminal_summary(terminalreporter, exitstatus):
    host = host_label()
    terminalreporter.section(f"time per test tier on {host}")
    for version, renderers in sorted(FRONT_ENDS_SEEN.items()):
        terminalreporter.write_line(f"{host}  browser tier: front end {version}, renderers: {', '.join(sorted(renderers))}")
    for tier in sorted(_tier_time):
        terminalreporter.write_line(f"{host}  {tier:8s} {_tier_count[tier]:4d} tests {_tier_time[tier]:8.1f} s")
    path = os.environ.get("TA_TIMINGS")
    if path:  # for `ta.py timings`: one table of tiers x hosts after CI ran the suite on each host
        outcome = "passed" if exitstatus == 0 else f"failed (pytest exit {int(exitstatus)})"
        tiers = {t: {"count": _tier_count[t], "seconds": round(_tier_time[t], 1)} for t in _tier_time}
        with open(path, "w") as f:
            json.dump({"host": host, "tiers": tiers, "outcome": outcome}, f)
