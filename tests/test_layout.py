"""The codebase's shape, pinned: app/'s module-level imports form no cycle (layers point one way), no source
file passes 400 lines, and the config modules a job checks before it runs import no torch."""
from __future__ import annotations

import ast
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

from app import PROJECT_ROOT

APP = PROJECT_ROOT / "app"


def module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """The app modules `path` imports at module level (not inside functions): `from app.x import y` counts
    app.x.y when that is a module, else app.x."""
    found = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                      for a in node.names}
    return {m for m in found if m in modules}


def test_app_imports_form_no_cycle():
    files = {module_name(p): p for p in APP.rglob("*.py")}
    graph = {m: imports(p, set(files)) - {m} for m, p in files.items()}
    try:
        list(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        raise AssertionError(f"import cycle: {' -> '.join(exc.args[1])}") from None
    assert "app.models" in graph["app.train.sft"]  # the graph is real: it sees module-level imports


def test_no_source_file_over_400_lines():
    files = [*APP.rglob("*.py"), *(PROJECT_ROOT / "jobs").glob("*.py"), *(PROJECT_ROOT / "benchmarks").glob("*.py")]
    long = {str(p.relative_to(PROJECT_ROOT)): n for p in files if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


@pytest.mark.slow  # a child process
def test_config_modules_import_no_torch():
    code = ("import sys, app.train.config, app.rl.config, app.eval.config, app.data.config, app.serve.config; "
            "print(sorted(m for m in ('torch', 'transformers', 'deepspeed', 'peft') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr[-2000:]
