"""The codebase's shape, pinned: app/'s packages form layers that import only downwards (every import counts,
those inside functions too) and no cycle, no source file passes 400 lines, and the config modules a job checks
before it runs import no torch.

The layers, bottom to top (docs/layout.md): core (app/*.py: config, chat, models, sampler, registry, stats,
metrics, safety, ...) < data < train < rl < rag < eval < compress < serve < ops < demo.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

from app import PROJECT_ROOT

APP = PROJECT_ROOT / "app"
LAYERS = ["core", "data", "train", "rl", "rag", "eval", "compress", "serve", "ops", "demo"]


def module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    """app.<package>.* is its package's layer; app.<module> (a file in app/) is core."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (APP / parts[1]).is_dir()) else "core"


def imports(source: str, modules: set[str]) -> list[tuple[str, int]]:
    """(app module, line) for every import in `source`, at any depth: `from app.x import y` counts app.x.y
    when that is a module, else app.x."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module, node.lineno)
                      for a in node.names]
    return [(m, line) for m, line in found if m in modules]


def graph(sources: dict[str, tuple[str, str]]) -> dict[str, list[tuple[str, int]]]:
    """module -> its imports; `sources`: module -> (file name, source)."""
    return {m: [(t, line) for t, line in imports(src, set(sources)) if t != m] for m, (_, src) in sources.items()}


def uphill(sources: dict[str, tuple[str, str]]) -> list[str]:
    """'file:line: a (layer) imports b (higher layer)' for every import that points up."""
    return [f"{sources[m][0]}:{line}: {m} ({layer(m)}) imports {t} ({layer(t)})"
            for m, edges in graph(sources).items() for t, line in edges
            if LAYERS.index(layer(t)) > LAYERS.index(layer(m))]


def app_sources() -> dict[str, tuple[str, str]]:
    return {module_name(p): (str(p.relative_to(PROJECT_ROOT)), p.read_text(encoding="utf-8")) for p in APP.rglob("*.py")}


def test_every_app_import_names_a_module_that_exists():
    sources = app_sources()
    known = set(sources) | {m.rsplit(".", 1)[0] for m in sources}
    missing = []
    for m, (name, src) in sources.items():
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("app"):
                if node.module not in known:
                    missing.append(f"{name}:{node.lineno}: {node.module}")
    assert missing == []


def test_every_package_has_a_layer():
    assert {layer(m) for m in app_sources()} <= set(LAYERS)


def test_imports_point_down():
    assert uphill(app_sources()) == []


def test_a_planted_uphill_import_is_named_with_its_line():
    sources = app_sources()
    planted = {**sources, "app.train.loop": ("app/train/loop.py", sources["app.train.loop"][1] +
                                             "\n\ndef f():\n    from app.eval.gate import GateConfig\n")}
    line = len(planted["app.train.loop"][1].splitlines())
    assert uphill(planted) == [f"app/train/loop.py:{line}: app.train.loop (train) imports app.eval.gate (eval)"]


def test_app_imports_form_no_cycle():
    edges = graph(app_sources())
    try:
        list(TopologicalSorter({m: {t for t, _ in e} for m, e in edges.items()}).static_order())
    except CycleError as exc:
        raise AssertionError(f"import cycle: {' -> '.join(exc.args[1])}") from None
    assert "app.models" in {t for t, _ in edges["app.train.sft"]}  # the graph is real


def test_no_source_file_over_400_lines():
    files = [*APP.rglob("*.py"), *(PROJECT_ROOT / "jobs").glob("*.py"), *(PROJECT_ROOT / "benchmarks").glob("*.py")]
    long = {str(p.relative_to(PROJECT_ROOT)): n for p in files if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


@pytest.mark.slow  # a child process
def test_config_modules_import_no_torch():
    code = ("import sys, app.train.config, app.rl.config, app.eval.config, app.data.config, app.serve.config, "
            "app.compress.config; "
            "print(sorted(m for m in ('torch', 'transformers', 'deepspeed', 'peft') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr[-2000:]
