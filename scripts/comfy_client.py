"""Start a ComfyUI server on loopback and talk to it over HTTP (used by the tests and the main job).

Standard library only. `ComfyServer` launches `main.py --cpu` on a free port with its own
input/output/temp folders, waits for `/object_info`, and stops the process by PID.
`ComfyServer.run(graph)` posts an API-format graph and waits for its history entry.
`ui_to_api(workflow, object_info)` turns a UI-format (drag-and-drop) workflow into an API graph.
"""
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ComfyError(RuntimeError):
    pass


def manifest_path():
    """The provisioning manifest of the host in use: $TA_MANIFEST (set by `scripts/ta.py run|test` to the
    chosen host's), else the one the last `scripts/ta.py` set-up wrote in .cache/."""
    return os.environ.get("TA_MANIFEST") or os.path.join(REPO, ".cache", "manifest.json")


def load_manifest():
    """The manifest as a dict (python, comfyui, checkpoints, clips, extra_model_paths, host_label, ...);
    SystemExit naming the set-up command when nothing was provisioned."""
    path = manifest_path()
    if not os.path.exists(path):
        raise SystemExit(f"no provisioning manifest at {path}: run `python3 scripts/ta.py setup` first")
    with open(path) as f:
        return json.load(f)


FRONT_END_VERSION = re.compile(r"\d+\.\d+\.\d+")


def front_end_folder(value, cache):
    """Where the front end that TA_FRONT_END=`value` names lives: a comfyui-frontend-package version (e.g.
    1.58.1) in the cache's frontends/<version>/ (`scripts/ta.py setup` unpacks it there), else `value` as a
    folder holding index.html."""
    if FRONT_END_VERSION.fullmatch(value):
        return os.path.join(cache, "frontends", value)
    return os.path.abspath(value)


def front_end_root(manifest=None):
    """The folder of the front end that $TA_FRONT_END names, for the server's `--front-end-root`
    (front_end_folder, checked). None when unset: the host's own front end."""
    value = os.environ.get("TA_FRONT_END")
    if not value:
        return None
    cache = (manifest or {}).get("cache") or os.environ.get("TA_CACHE") or os.path.join(REPO, ".cache")
    folder = front_end_folder(value, cache)
    if not os.path.isfile(os.path.join(folder, "index.html")):
        raise SystemExit(f"TA_FRONT_END={value}: no front end at {folder} (no index.html); provision it with "
                         f"`TA_FRONT_END={value} python3 scripts/ta.py setup`")
    return folder


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def host_options(comfy_dir):
    """The command-line options a ComfyUI tree declares (read from its comfy/cli_args.py)."""
    with open(os.path.join(comfy_dir, "comfy", "cli_args.py")) as f:
        return set(re.findall(r"""add_argument\(\s*["'](--[a-z0-9-]+)["']""", f.read()))


class ComfyServer:
    """A ComfyUI server of `comfy_dir` whose input, output, temp and (where the host has the options) user
    folder and database live in `workdir`, so that nothing is written into the host's own tree (a user's
    install with COMFYUI_PATH). The 2024 host has no such options: its user folder stays in its tree."""

    def __init__(self, python, comfy_dir, workdir, extra_model_paths=None, port=None, front_end_root=None):
        self.python, self.comfy_dir, self.workdir = python, comfy_dir, workdir
        self.extra_model_paths = extra_model_paths
        self.front_end_root = front_end_root  # another front end's folder (index.html): --front-end-root
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.input_dir = os.path.join(workdir, "input")
        self.output_dir = os.path.join(workdir, "output")
        self.temp_dir = os.path.join(workdir, "temp")
        self.user_dir = os.path.join(workdir, "user")
        self.log_path = os.path.join(workdir, "server.log")
        self.proc = None

    def start(self, timeout=120):
        for d in (self.input_dir, self.output_dir, self.temp_dir, self.user_dir):
            os.makedirs(d, exist_ok=True)
        cmd = [self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--input-directory", self.input_dir, "--output-directory", self.output_dir,
               "--temp-directory", self.temp_dir, "--disable-auto-launch"]
        options = host_options(self.comfy_dir)
        if "--user-directory" in options:
            cmd += ["--user-directory", self.user_dir]
        if "--database-url" in options:  # its default is <ComfyUI>/user/comfyui.db whatever the user folder
            cmd += ["--database-url", "sqlite:///" + os.path.join(self.user_dir, "comfyui.db")]
        if self.extra_model_paths:
            cmd += ["--extra-model-paths-config", self.extra_model_paths]
        if self.front_end_root:
            if "--front-end-root" not in options:
                raise ComfyError(f"this ComfyUI ({self.comfy_dir}) has no --front-end-root option: it can only "
                                 "serve its own front end (unset TA_FRONT_END)")
            cmd += ["--front-end-root", self.front_end_root]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=self.comfy_dir, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise ComfyError(f"ComfyUI exited with code {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.object_info = self.get("/object_info")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        self.stop()
        raise ComfyError(f"ComfyUI did not answer /object_info within {timeout}s:\n{self.log_tail()}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc:
            self._log.close()

    def log_tail(self, n=4000):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")[-n:]
        except OSError:
            return ""

    def get(self, path):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def post(self, path, data):
        req = urllib.request.Request(self.url + path, data=json.dumps(data).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def submit(self, graph):
        """POST /prompt; returns the prompt id, or raises with the host's validation errors."""
        status, body = self.post("/prompt", {"prompt": graph, "client_id": uuid.uuid4().hex})
        if status != 200 or body.get("node_errors"):
            raise ComfyError(f"/prompt rejected the graph (HTTP {status}): {json.dumps(body, indent=1)[:4000]}")
        return body["prompt_id"]

    def wait(self, prompt_id, timeout=600):
        deadline = time.time() + timeout
        while time.time() < deadline:
            hist = self.get(f"/history/{prompt_id}")
            if prompt_id in hist:
                entry = hist[prompt_id]
                status = entry.get("status", {})
                for kind, data in status.get("messages", []):
                    if kind == "execution_error":
                        raise ComfyError(
                            f"node {data.get('node_id')} ({data.get('node_type')}) failed: "
                            f"{data.get('exception_type')}: {data.get('exception_message')}\n"
                            + "".join(data.get("traceback", []))[-3000:])
                if status.get("completed", True):
                    return entry
            if self.proc.poll() is not None:
                raise ComfyError(f"ComfyUI died while running the graph:\n{self.log_tail()}")
            time.sleep(0.25)
        raise ComfyError(f"graph {prompt_id} did not finish within {timeout}s:\n{self.log_tail()}")

    def wait_idle(self, timeout=600):
        """Wait until the server's queue holds nothing running or pending (prompts queued by a browser)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            queue = self.get("/queue")
            if not queue.get("queue_running") and not queue.get("queue_pending"):
                return
            if self.proc.poll() is not None:
                raise ComfyError(f"ComfyUI died while running the queue:\n{self.log_tail()}")
            time.sleep(0.25)
        raise ComfyError(f"the queue did not empty within {timeout}s:\n{self.log_tail()}")

    def free(self):
        """Ask the host to unload its models and free their memory once the queue is idle (POST /free,
        as the front end's "Unload models" does): the server keeps what it loaded otherwise."""
        status, _ = self.post("/free", {"unload_models": True, "free_memory": True})
        if status != 200:
            raise ComfyError(f"/free answered {status}")
        self.wait_idle()

    def run(self, graph, timeout=600):
        return self.wait(self.submit(graph), timeout)


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@contextlib.contextmanager
def front_end_page(url, width=1600, height=1000):
    """A page of headless Chromium (the `chromium` on PATH, driven by Playwright) showing the front
    end at `url` once its app has loaded; `page.errors` collects the page's uncaught errors."""
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.errors = []
            page.on("pageerror", lambda e: page.errors.append(str(e)))
            page.goto(url)
            page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph", timeout=60000)
            yield page
        finally:
            browser.close()


# Input types the front end shows as widgets (everything else is a socket).
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}


def _widget_inputs(spec):
    """(name, has_control_after_generate) for each widget input of a node, in front-end order."""
    out = []
    for section in ("required", "optional"):
        for name, value in spec["input"].get(section, {}).items():
            kind = value[0]
            opts = value[1] if len(value) > 1 and isinstance(value[1], dict) else {}
            if isinstance(kind, list) or kind in WIDGET_TYPES or opts.get("widget_type"):
                control = kind == "INT" and (name in ("seed", "noise_seed") or opts.get("control_after_generate"))
                out.append((name, bool(control)))
            elif kind.isupper() and kind.endswith("UPLOAD"):
                out.append((None, False))  # an upload button: keeps a slot in widgets_values
    return out


# Nodes that exist only in the front end (never sent to the server).
FRONT_END_ONLY = ("Note", "MarkdownNote")


def ui_to_api(workflow, object_info):
    """Convert a UI-format workflow (as saved by the front end) into an API-format graph."""
    links = {l[0]: l for l in workflow.get("links", [])}  # id, from_node, from_slot, to_node, to_slot, type
    graph = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) in (2, 4) or node["type"] in FRONT_END_ONLY:  # muted / bypassed / notes
            continue
        spec = object_info.get(node["type"])
        if spec is None:
            raise ComfyError(f"workflow node {node['id']} has type {node['type']}, unknown to this host")
        inputs = {}
        values = list(node.get("widgets_values") or [])
        i = 0
        for name, control in _widget_inputs(spec):
            # null: a slot saved before this widget existed; the front end then shows the default
            if i < len(values) and name is not None and values[i] is not None:
                inputs[name] = values[i]
            i += 2 if control else 1
        for inp in node.get("inputs", []):
            if inp.get("link") is not None:
                link = links[inp["link"]]
                inputs[inp["name"]] = [str(link[1]), link[2]]
        graph[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return graph


def set_inputs(graph, values):
    """Set inputs by node type: values = {(class_type, input_name): value}; returns the count set.

    Used to point a user-facing workflow at test files (clips, generated checkpoints)."""
    count = 0
    for node in graph.values():
        for (kind, name), value in values.items():
            if node["class_type"] == kind and name in node["inputs"]:
                node["inputs"][name] = value
                count += 1
    return count
