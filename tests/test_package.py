"""Packaging rules the pack promises: core never imports ComfyUI, lower-bound requirements, CI runs the README's test command."""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_core_never_imports_comfyui():
    for path in (ROOT / "diffstyle360_core").glob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                assert top not in {"comfy", "folder_paths", "nodes", "server", "comfy_api", "comfy_extras"}, (
                    f"{path.name} imports {name}"
                )


def test_requirements_have_lower_bounds_only():
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            assert "==" not in line and ">=" in line, line
    assert "torchvision" not in (ROOT / "requirements.txt").read_text()


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1).strip().splitlines()
    assert len(block) == 2
    test_command = block[1].strip()
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines
    assert "pip install --quiet torch==2.13.0" in " ".join(ci_lines)


COMFY_MODULES = {"comfy", "folder_paths", "nodes", "server", "comfy_api", "comfy_extras", "latent_preview",
                 "comfy_execution", "execution"}


def _imports(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def test_only_the_host_adapter_imports_comfyui():
    for path in (ROOT / "nodes").glob("*.py"):
        comfy = [m for m in _imports(path) if m.split(".")[0] in COMFY_MODULES]
        if path.name == "host.py":
            assert comfy, "host.py is where ComfyUI is imported"
        else:
            assert not comfy, f"{path.name} imports {comfy}; go through nodes/host.py"


def _requirements():
    lines = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    return [line for line in lines if line]


def test_requirements_never_touch_the_hosts_torch():
    names = [re.split(r"[<>=!~ ]", line)[0].lower() for line in _requirements()]
    assert not {"torch", "torchvision", "torchaudio"} & set(names)


def test_pyproject_is_ready_for_the_comfy_registry():
    import tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project, comfy = data["project"], data["tool"]["comfy"]
    assert re.fullmatch(r"[a-z][a-z0-9_.-]*", project["name"]) and "comfyui" not in project["name"].lower()
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert project["license"] == {"file": "LICENSE"} and (ROOT / "LICENSE").is_file()
    assert project["description"]
    assert sorted(project["dependencies"]) == sorted(_requirements())  # one set of lower bounds
    assert comfy["PublisherId"] and comfy["DisplayName"]
    # the V3 schema (comfy_api.latest with io.MultiType, comfy_entrypoint) as ComfyUI 0.8.0 has it
    assert comfy["requires-comfyui"] == ">=0.8.0"
    for url in data["project"].get("urls", {}).values():  # only real addresses, never placeholders
        assert url.startswith("https://") and "example" not in url and "TODO" not in url


def test_comfyignore_drops_dev_files_and_keeps_the_pack():
    patterns = [p.strip() for p in (ROOT / ".comfyignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    assert {"tests/", "bench/", ".ci/"} <= set(patterns)
    for needed in ("nodes", "diffstyle360_core", "workflows", "__init__.py", "requirements.txt", "pyproject.toml",
                   "LICENSE", "README.md"):
        assert not any(p.rstrip("/") == needed or needed.startswith(p.rstrip("/") + "/") for p in patterns), needed


def test_ci_tests_the_exact_lower_bounds_first():
    ci = (ROOT / ".ci" / "run").read_text()
    lines = [line.strip() for line in ci.splitlines() if line.strip() and not line.strip().startswith("#")]
    readme = (ROOT / "README.md").read_text()
    test_command = re.search(r"```bash\n(.*?)```", readme, re.S).group(1).strip().splitlines()[1].strip()
    assert lines[-1] == test_command  # CI ends with exactly the README's test command
    assert "requirements.txt" in ci and "==" in ci and "tests/test_nodes.py" in ci
    assert ci.index("tests/test_nodes.py") < ci.index(test_command)
    pins = subprocess.run(
        ["sed", "-n", r"s/^\([A-Za-z0-9_.-]\{1,\}\)>=\([^ ;#]\{1,\}\).*/\1==\2/p", "requirements.txt"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()
    assert pins == [line.replace(">=", "==") for line in _requirements()]


def test_pack_loads_like_comfyui_loads_it(tmp_path):
    """ComfyUI imports the folder under a path-like module name and puts nothing on sys.path."""
    code = (
        "import importlib.util, sys\n"
        f"root = {str(ROOT)!r}\n"
        "name = '/x/custom_nodes/diffstyle360'\n"
        "spec = importlib.util.spec_from_file_location(name, root + '/__init__.py')\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "sys.modules[name] = module\n"
        "spec.loader.exec_module(module)\n"
        "assert root not in sys.path\n"
        "assert 'nodes' not in sys.modules, 'our nodes package must not take the name nodes'\n"
        "assert not hasattr(module, 'NODE_CLASS_MAPPINGS'), 'ComfyUI would ignore comfy_entrypoint'\n"
        "import asyncio\n"
        "extension = asyncio.run(module.comfy_entrypoint())\n"
        "print(sorted(cls.GET_SCHEMA().node_id for cls in asyncio.run(extension.get_node_list())))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("DiffStyle360") == 7
