"""The host's own front end, in headless Chromium: our extension registers and our nodes exist."""
import os
import shutil

import pytest

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


def test_our_extension_registered_and_nodes_known(page, comfy_host):
    names = page.evaluate("() => window.app.extensions.map(e => e.name)")
    assert any(n.startswith("TemporalAdapter.") for n in names), names
    registered = set(page.evaluate("() => Object.keys(window.LiteGraph.registered_node_types)"))
    missing = set(comfy_host.plugin.NODE_CLASS_MAPPINGS) - registered
    assert not missing, f"front end lacks node types {missing}"
    assert not [e for e in page.errors if "TemporalAdapter" in e or "ComfyUI-TemporalAdapter" in e], page.errors
