"""The host's own front end, in headless Chromium: our extension registers and our nodes exist."""
import json
import os
import shutil

import pytest
from comfy_client import front_end_page

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKFLOWS = sorted(f for f in os.listdir(os.path.join(REPO, "example_workflows")) if f.endswith(".json"))


@pytest.fixture(scope="module")
def page(live_server):
    reason = os.environ.get("TA_BROWSER_UNAVAILABLE")
    if reason or not shutil.which("chromium"):
        pytest.skip(f"browser tier skipped: {reason or 'chromium is not installed'}")
    with front_end_page(live_server.url, 1280, 800) as page:
        yield page


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


BOXES_JS = """async (wf) => {
    await window.app.loadGraphData(wf);
    await new Promise((resolve) => setTimeout(resolve, 1500));  // previews load, nodes resize
    const graph = window.app.graph;
    const context = document.createElement("canvas").getContext("2d");
    const box = (node) => {
        const b = node.getBounding ? Array.from(node.getBounding()) : [node.pos[0], node.pos[1] - 30, node.size[0], node.size[1] + 30];
        // the title as drawn: the 0.8.0 front end cuts it to the width less two title heights
        context.font = node.titleFontStyle ?? `${LiteGraph.NODE_TEXT_SIZE}px ${LiteGraph.NODE_FONT ?? "Arial"}`;
        const room = node.size[0] - 2 * LiteGraph.NODE_TITLE_HEIGHT;
        const needs = Math.ceil(context.measureText(node.getTitle()).width);
        return {id: node.id, type: node.type, box: b, title: `${node.getTitle()} (${needs} px of ${room})`, titleFits: needs <= room};
    };
    const groups = (graph._groups || graph.groups || []).map((g) => ({title: g.title, box: Array.from(g._bounding || g.bounding)}));
    return {nodes: graph._nodes.map(box), groups};
}"""


def _overlap(a, b):
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def _inside(inner, outer):
    return (outer[0] <= inner[0] and inner[0] + inner[2] <= outer[0] + outer[2]
            and outer[1] <= inner[1] and inner[1] + inner[3] <= outer[1] + outer[3])


@pytest.mark.parametrize("name", WORKFLOWS)
def test_example_workflow_is_laid_out_without_overlaps(page, live_server, clips, name):
    """As this front end sizes the nodes on load (previews shown, widgets measured): no two nodes
    overlap, no two groups overlap, and every node but the note sits inside one titled group."""
    for path in clips.values():  # the loader grows by its preview when its file is there
        shutil.copy(path, os.path.join(live_server.input_dir, os.path.basename(path)))
    with open(os.path.join(REPO, "example_workflows", name)) as f:
        workflow = json.load(f)
    drawn = page.evaluate(BOXES_JS, workflow)
    nodes, groups = drawn["nodes"], drawn["groups"]
    clashes = [(a["type"], b["type"]) for i, a in enumerate(nodes) for b in nodes[i + 1:] if _overlap(a["box"], b["box"])]
    assert not clashes, f"{name}: overlapping nodes {clashes}"
    cut = [n["title"] for n in nodes if not n["titleFits"]]
    assert not cut, f"{name}: titles cut short by their node's width: {cut}"
    assert groups and all(g["title"] for g in groups)
    group_clashes = [(a["title"], b["title"]) for i, a in enumerate(groups) for b in groups[i + 1:]
                     if _overlap(a["box"], b["box"])]
    assert not group_clashes, f"{name}: overlapping groups {group_clashes}"
    notes = [n for n in nodes if n["type"] == "Note"]
    assert len(notes) == 1, f"{name}: {len(notes)} note nodes"
    homeless = [n["type"] for n in nodes if n["type"] != "Note"
                and sum(_inside(n["box"], g["box"]) for g in groups) != 1]
    assert not homeless, f"{name}: nodes outside exactly one group: {homeless}"
    # the pipeline reads left to right: no wire runs back to an earlier column
    x = {n["id"]: n["box"][0] for n in nodes}
    backwards = [link for link in workflow["links"] if x[link[1]] > x[link[3]]]
    assert not backwards, f"{name}: wires running right to left {backwards}"
