"""The host's front end (or the one TA_FRONT_END names), in headless Chromium, in each node renderer it
offers: our extension registers, our nodes exist, the example workflows load whole and laid out."""
import json
import os
import shutil

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKFLOWS = sorted(f for f in os.listdir(os.path.join(REPO, "example_workflows")) if f.endswith(".json"))


def load_json(page, workflow):
    """Load `workflow` (a dict) into the page's graph as the front end loads a dropped file: from JSON text.
    (Handing the dict itself to page.evaluate would turn every 0.0 into -0: Playwright's Python
    serializer sends any float equal to -0.0, so 0.0 too, as negative zero, shown "-0.000".)"""
    page.evaluate("async (text) => { await window.app.loadGraphData(JSON.parse(text)); }", json.dumps(workflow))


# In the Vue renderer each node is an element [data-node-id]; these wait until the loaded graph's nodes
# are all there (the canvas renderer draws them: nothing to wait for).
VUE_NODES_MOUNTED = """() => window.app.graph._nodes.every((n) => document.querySelector(`[data-node-id="${n.id}"]`))"""


def wait_rendered(page):
    if page.renderer == "vue":
        page.wait_for_function(VUE_NODES_MOUNTED, timeout=30000)


# Whether a DOM element of a node (a DOM widget's, or any in the Vue node) is on screen where the user sees
# that node: laid out with a size, not hidden, inside the node's own element in the Vue renderer, and the
# topmost element at its centre (nothing drawn over it). `bring_into_view` first puts the node at (40, 80).
SHOWN = """(el) => {
    if (!el || !el.isConnected) return {shown: false, why: "not in the document"};
    const r = el.getBoundingClientRect();
    if (r.width < 2 || r.height < 2) return {shown: false, why: `size ${r.width}x${r.height}`};
    if (el.checkVisibility && !el.checkVisibility({checkOpacity: true, checkVisibilityCSS: true}))
        return {shown: false, why: "hidden by CSS"};
    const top = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
    if (!top || !(top === el || el.contains(top) || top.contains(el)))
        return {shown: false, why: `covered by ${top && (top.className || top.tagName)} at ${[r.left, r.top, r.width, r.height]}`};
    return {shown: true, box: [r.left, r.top, r.width, r.height]};
}"""


def bring_into_view(page, node_type):
    """Scroll the graph (scale 1) so that the first node of `node_type` has its top left corner at (40, 80)
    of the canvas, redraw, and let the renderer place its elements."""
    page.evaluate("""(type) => {
        const node = window.app.graph._nodes.find((n) => n.type === type);
        const canvas = window.app.canvas;
        canvas.ds.scale = 1;
        canvas.ds.offset = [40 - node.pos[0], 80 - node.pos[1]];
        canvas.setDirty(true, true);
        canvas.draw(true, true);
    }""", node_type)
    page.wait_for_timeout(400)
    page.evaluate("() => { window.app.canvas.setDirty(true, true); window.app.canvas.draw(true, true); }")
    page.wait_for_timeout(200)


def node_element_shown(page, node_type, find_js):
    """SHOWN for the element `find_js` ((node) => element) gives for the first node of `node_type`,
    checked to sit inside that node's own element in the Vue renderer. An element below the window's
    bottom (a tall node) is scrolled up into view first, as a user would."""
    moved = page.evaluate(f"""(type) => {{
        const node = window.app.graph._nodes.find((n) => n.type === type);
        const el = ({find_js})(node);
        const r = el?.getBoundingClientRect();
        if (!r || (r.top >= 0 && r.bottom <= window.innerHeight - 10)) return false;
        const canvas = window.app.canvas;
        canvas.ds.offset[1] += (120 - r.top) / canvas.ds.scale;
        canvas.setDirty(true, true);
        canvas.draw(true, true);
        return true;
    }}""", node_type)
    if moved:
        page.wait_for_timeout(400)
        page.evaluate("() => { window.app.canvas.setDirty(true, true); window.app.canvas.draw(true, true); }")
        page.wait_for_timeout(200)
    return page.evaluate(f"""([type, vue]) => {{
        const node = window.app.graph._nodes.find((n) => n.type === type);
        const el = ({find_js})(node);
        const result = ({SHOWN})(el);
        if (vue && result.shown && !el.closest(`[data-node-id="${{node.id}}"]`))
            return {{shown: false, why: "outside its Vue node"}};
        return result;
    }}""", [node_type, page.renderer == "vue"])


def load_example(page, live_server, clip, name, settings):
    """Copy the `clip` file into the live server's input folder, load example_workflows/`name` in the
    page and set widgets: settings = [[node type, widget name, value], ...] (the first node of that
    type). Returns the workflow JSON."""
    shutil.copy(clip, os.path.join(live_server.input_dir, os.path.basename(clip)))
    with open(os.path.join(REPO, "example_workflows", name)) as f:
        workflow = json.load(f)
    load_json(page, workflow)
    wait_rendered(page)
    page.evaluate("""async ([workflow, settings]) => {
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
    built (a missing type would be a red placeholder node without widgets), each number widget holding
    the file's value (no "-0.000" for a saved 0.0), and in the Vue renderer every node on the page."""
    with open(os.path.join(REPO, "example_workflows", name)) as f:
        workflow = json.load(f)
    load_json(page, workflow)
    wait_rendered(page)
    result = page.evaluate("""() => {
        const known = window.LiteGraph.registered_node_types;
        const nodes = window.app.graph._nodes;
        const shown = (w) => document.querySelector(`[data-node-id="${w.node.id}"]`);
        return {count: nodes.length, missing: nodes.filter((n) => !known[n.type]).map((n) => n.type),
                widgetless: nodes.filter((n) => n.type.startsWith("TA_") && !(n.widgets || []).length
                                         && (n.widgets_values || []).length).map((n) => n.type),
                negativeZero: nodes.flatMap((n) => (n.widgets || []).filter((w) => Object.is(w.value, -0))
                                                                   .map((w) => `${n.type}.${w.name}`)),
                vueTexts: nodes.flatMap((n) => [...(document.querySelector(`[data-node-id="${n.id}"]`)
                                                    ?.querySelectorAll("input") ?? [])].map((i) => i.value))};
    }""")
    assert result["count"] == len(workflow["nodes"]), result
    assert not result["missing"], f"{name}: unknown node types {result['missing']}"
    assert not result["widgetless"], result
    assert not result["negativeZero"], f"{name}: widgets holding -0 {result['negativeZero']}"
    assert not [t for t in result["vueTexts"] if t.startswith("-0") and not t.strip("-0.")], result["vueTexts"]


BOXES_JS = """async ([text, vue]) => {
    await window.app.loadGraphData(JSON.parse(text));
    await new Promise((resolve) => setTimeout(resolve, 1500));  // previews load, nodes resize
    for (let i = 0; vue && i < 100 && !(%s)(); i += 1) await new Promise((resolve) => setTimeout(resolve, 100));
    const graph = window.app.graph;
    const canvas = window.app.canvas;
    const context = document.createElement("canvas").getContext("2d");
    const drawn = (node) => {
        const b = node.getBounding ? Array.from(node.getBounding()) : [node.pos[0], node.pos[1] - 30, node.size[0], node.size[1] + 30];
        // the title as drawn: the 0.8.0 front end cuts it to the width less two title heights
        context.font = node.titleFontStyle ?? `${LiteGraph.NODE_TEXT_SIZE}px ${LiteGraph.NODE_FONT ?? "Arial"}`;
        const room = node.size[0] - 2 * LiteGraph.NODE_TITLE_HEIGHT;
        const needs = Math.ceil(context.measureText(node.getTitle()).width);
        return {box: b, title: `${node.getTitle()} (${needs} px of ${room})`, titleFits: needs <= room};
    };
    // the Vue renderer: each node's element, measured on the page and turned into graph units; its title
    // is an element that truncates with an ellipsis when the node is too narrow for it
    const origin = canvas.canvas.getBoundingClientRect();
    const element = (node) => {
        const el = document.querySelector(`[data-node-id="${node.id}"]`);
        if (!el) return {box: [0, 0, 0, 0], title: `${node.getTitle()} (no element)`, titleFits: false};
        const r = el.getBoundingClientRect();
        const [scale, [ox, oy]] = [canvas.ds.scale, canvas.ds.offset];
        const title = el.querySelector('[data-testid="node-title"] .truncate') ?? el.querySelector('[data-testid="node-title"]');
        const fits = !!title && title.scrollWidth <= title.clientWidth + 1;
        return {box: [(r.left - origin.left) / scale - ox, (r.top - origin.top) / scale - oy, r.width / scale, r.height / scale],
                title: `${node.getTitle()} (${title?.scrollWidth} px of ${title?.clientWidth})`, titleFits: fits};
    };
    const box = (node) => ({id: String(node.id), type: node.type, ...(vue ? element(node) : drawn(node))});
    const groups = (graph._groups || graph.groups || []).map((g) => ({title: g.title, box: Array.from(g._bounding || g.bounding)}));
    return {nodes: graph._nodes.map(box), groups};
}""" % VUE_NODES_MOUNTED


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
    drawn = page.evaluate(BOXES_JS, [json.dumps(workflow), page.renderer == "vue"])
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
    # the pipeline reads left to right: no wire runs back to an earlier column (node ids as strings: from
    # front end 1.47.8 on a loaded graph keeps them so, the file has numbers)
    x = {str(n["id"]): n["box"][0] for n in nodes}
    backwards = [link for link in workflow["links"] if x[str(link[1])] > x[str(link[3])]]
    assert not backwards, f"{name}: wires running right to left {backwards}"
