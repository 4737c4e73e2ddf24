"""Packaging rules the pack promises: core never imports ComfyUI, lower-bound requirements, CI runs the README's test command."""

import ast
import re
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
