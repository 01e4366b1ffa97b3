"""The host's own front end, in headless Chromium: our extension registers and our nodes exist."""
import json
import os
import shutil

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKFLOWS = sorted(f for f in os.listdir(os.path.join(REPO, "example_workflows")) if f.endswith(".json"))
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def page(live_server):
    reason = os.environ.get("TA_BROWSER_UNAVAILABLE")
    chromium = shutil.which("chromium")
    if reason or not chromium:
        pytest.skip(f"browser tier skipped: {reason or 'chromium is not installed'}")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(live_server.url)
        page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph", timeout=60000)
        page.errors = errors
        yield page
        browser.close()


def load_example(page, live_server, clip, name, settings):
    """Copy the `clip` file into the live server's input folder, load example_workflows/`name` in the
    page and set widgets: settings = [[node type, widget name, value], ...] (the first node of that
    type). Returns the workflow JSON."""
    shutil.copy(clip, os.path.join(live_server.input_dir, os.path.basename(clip)))
    with open(os.path.join(REPO, "example_workflows", name)) as f:
        workflow = json.load(f)
    page.evaluate("""async ([workflow, settings]) => {
        await window.app.loadGraphData(workflow);
        const nodes = window.app.graph._nodes;
        for (const [type, name, value] of settings) {
            nodes.find((n) => n.type === type).widgets.find((w) => w.name === name).value = value;
        }
    }""", [workflow, settings])
    return workflow


def test_our_extension_registered_and_nodes_known(page, comfy_host):
    names = page.evaluate("() => window.app.extensions.map(e => e.name)")
    assert any(n.startswith("TemporalAdapter.") for n in names), names
    registered = set(page.evaluate("() => Object.keys(window.LiteGraph.registered_node_types)"))
    missing = set(comfy_host.plugin.NODE_CLASS_MAPPINGS) - registered
    assert not missing, f"front end lacks node types {missing}"
    assert not [e for e in page.errors if "TemporalAdapter" in e or "ComfyUI-TemporalAdapter" in e], page.errors


@pytest.mark.parametrize("name", WORKFLOWS)
def test_example_workflow_loads_without_missing_nodes(page, name):
    """Each drag-and-drop workflow loads in the front end with every node type known and every node
    built (a missing type would be a red placeholder node without widgets)."""
    with open(os.path.join(REPO, "example_workflows", name)) as f:
        workflow = json.load(f)
    result = page.evaluate("""async (wf) => {
        await window.app.loadGraphData(wf);
        const known = window.LiteGraph.registered_node_types;
        const nodes = window.app.graph._nodes;
        return {count: nodes.length, missing: nodes.filter((n) => !known[n.type]).map((n) => n.type),
                widgetless: nodes.filter((n) => n.type.startsWith("TA_") && !(n.widgets || []).length
                                         && (n.widgets_values || []).length).map((n) => n.type)};
    }""", workflow)
    assert result["count"] == len(workflow["nodes"]), result
    assert not result["missing"], f"{name}: unknown node types {result['missing']}"
    assert not result["widgetless"], result
