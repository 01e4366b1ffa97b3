"""The package's standing rules: adapter_core is host-free, packaging metadata is complete."""
import ast
import os
import re
import tomllib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOST_MODULES = {"comfy", "comfy_extras", "folder_paths", "server", "nodes", "execution"}


def host_imports(source):
    """Top-level module names of absolute imports in `source` that belong to the host."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [n for n in names if n.split(".")[0] in HOST_MODULES]
    return found


def test_import_guard_catches_host_imports():
    # The guard itself must be able to fail.
    assert host_imports("import comfy.utils\nfrom folder_paths import x\n") == ["comfy.utils", "folder_paths"]
    assert host_imports("from . import nodes\nimport numpy\n") == []


def test_adapter_core_never_imports_the_host():
    core = os.path.join(REPO, "adapter_core")
    files = [os.path.join(d, f) for d, _, fs in os.walk(core) for f in fs if f.endswith(".py")]
    assert files, "adapter_core has no modules"
    leaks = {}
    for path in files:
        with open(path) as f:
            bad = host_imports(f.read())
        if bad:
            leaks[os.path.relpath(path, REPO)] = bad
    assert not leaks, f"adapter_core imports the host: {leaks}"


def test_pyproject_has_registry_metadata():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        meta = tomllib.load(f)
    project = meta["project"]
    for key in ("name", "version", "description", "license", "dependencies"):
        assert project.get(key), f"[project].{key} missing"
    comfy = meta["tool"]["comfy"]
    for key in ("PublisherId", "DisplayName", "Icon"):
        assert key in comfy, f"[tool.comfy].{key} missing"
    with open(os.path.join(REPO, "LICENSE")) as f:
        assert "GNU GENERAL PUBLIC LICENSE" in f.read(200)


def test_requirements_never_list_torch():
    with open(os.path.join(REPO, "requirements.txt")) as f:
        names = [re.split(r"[<>=!~ \[]", ln.strip())[0].lower() for ln in f
                 if ln.strip() and not ln.startswith("#")]
    assert names, "requirements.txt is empty"
    assert not {"torch", "torchvision", "torchaudio"} & set(names)


def test_pyproject_and_requirements_list_the_same_dependencies():
    """ComfyUI-Manager installs requirements.txt, the registry reads pyproject.toml: they must agree
    (Pillow and psutil were missing from pyproject.toml)."""
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]["dependencies"]
    with open(os.path.join(REPO, "requirements.txt")) as f:
        listed = [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]
    assert sorted(project) == sorted(listed)


def test_plugin_init_uses_relative_imports_only():
    with open(os.path.join(REPO, "__init__.py")) as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith(".nodes"):
            break
    else:
        raise AssertionError("__init__.py does not import its node families relatively")
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0
                and n.module and n.module.startswith(("nodes", "adapter_core"))]
