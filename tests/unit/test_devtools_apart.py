"""The runtime (agents/, pipeline/ outside pipeline/devtools) never imports the dev tooling.

pipeline/devtools holds the local stack, process control, the replay and its fake-order
generator and the simulated verifier service. Only `orderstream`'s dev commands may import it,
inside the command, so `orderstream worker` and `orderstream sink` never load it.
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEVTOOLS = "pipeline.devtools"
RUNTIME = [ROOT / "agents", ROOT / "pipeline"]
CLI = ROOT / "pipeline" / "cli.py"
# the `orderstream` commands that are dev tooling; every other command is the runtime's
DEV_COMMANDS = {"stack_up", "stack_status", "stack_down", "verifiers", "refund_service", "couriers", "logistics_replay",
                "replay", "demo"}
RUNTIME_COMMANDS = ("worker", "sink")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, module: str) -> list[tuple[int, str, str | None]]:
    """(line, imported module or module.name, enclosing function or None) of every import in the file,
    relative imports resolved against `module`."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []

    def visit(node: ast.AST, function: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, function or child.name)
                continue
            if isinstance(child, ast.Import):
                found.extend((child.lineno, alias.name, function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[:len(package.split(".")) - (child.level - 1)]
                    base = ".".join([*anchor, *([child.module] if child.module else [])])
                # `from pipeline import devtools` imports a module too
                found.extend((child.lineno, f"{base}.{alias.name}", function) for alias in child.names)
            visit(child, function)

    visit(ast.parse(path.read_text()), None)
    return found


def is_devtools(name: str) -> bool:
    return name == DEVTOOLS or name.startswith(DEVTOOLS + ".")


def devtools_imports(path: Path, module: str) -> list[str]:
    """The file's imports of pipeline.devtools that break the rule: anywhere in a runtime module;
    in pipeline.cli, anywhere but inside a dev command."""
    hits = []
    for line, name, function in imports(path, module):
        if not is_devtools(name):
            continue
        if module == "pipeline.cli" and function in DEV_COMMANDS:
            continue
        hits.append(f"{path.relative_to(ROOT)}:{line} {name}" + (f" in {function}()" if function else ""))
    return hits


def runtime_modules() -> list[tuple[Path, str]]:
    devtools_dir = ROOT / "pipeline" / "devtools"
    return [(path, module_name(path)) for folder in RUNTIME for path in sorted(folder.rglob("*.py"))
            if devtools_dir not in path.parents]


def _probe(text: str) -> Path:
    probe = ROOT / "var" / f"devtools_probe_{uuid.uuid4().hex[:8]}.py"
    probe.parent.mkdir(exist_ok=True)
    probe.write_text(text)
    return probe


def test_the_check_sees_every_way_of_importing_devtools():
    probe = _probe("from ..devtools import stack\n"
                   "from pipeline import devtools, devtools_notes, kafka_io\n"
                   "import pipeline.devtools.replay as replay\n"
                   "def helper():\n"
                   "    from pipeline.devtools.fake_orders import SKUS\n")
    try:
        hits = [hit.split(" ", 1)[1] for hit in devtools_imports(probe, "pipeline.clickhouse.probe")]
    finally:
        probe.unlink()
    assert hits == ["pipeline.devtools.stack", "pipeline.devtools", "pipeline.devtools.replay",
                    "pipeline.devtools.fake_orders.SKUS in helper()"]


def test_the_check_lets_the_cli_import_devtools_only_inside_a_dev_command():
    probe = _probe("from .devtools import stack\n"
                   "def demo():\n"
                   "    from .devtools import processes\n"
                   "def worker():\n"
                   "    from .devtools import stack\n")
    try:
        hits = [hit.split(" ", 1)[1] for hit in devtools_imports(probe, "pipeline.cli")]
    finally:
        probe.unlink()
    assert hits == ["pipeline.devtools.stack", "pipeline.devtools.stack in worker()"]


def test_no_runtime_module_imports_devtools():
    modules = runtime_modules()
    assert {"pipeline.cli", "pipeline.app", "agents.orders"} <= {m for _, m in modules}
    found = [hit for path, module in modules for hit in devtools_imports(path, module)]
    assert found == []


def command_imports() -> list[str]:
    """pipeline.cli and every module its worker and sink commands import."""
    names = {name for _, name, function in imports(CLI, "pipeline.cli") if function in RUNTIME_COMMANDS}
    # `from .topics import names` reads as pipeline.topics.names: keep the importable module
    return ["pipeline.cli", *sorted({n if _importable(n) else n.rpartition(".")[0] for n in names})]


def _importable(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists() or "." not in name


LOADED_DEVTOOLS = ("import importlib, json, sys\n"
                   "for name in sys.argv[1:]:\n"
                   "    importlib.import_module(name)\n"
                   f"print(json.dumps(sorted(m for m in sys.modules if m == {DEVTOOLS!r} "
                   f"or m.startswith({DEVTOOLS + '.'!r}))))\n")


def loaded_devtools(modules: list[str], tmp_path: Path) -> list[str]:
    """The pipeline.devtools modules a fresh interpreter has loaded after importing `modules`."""
    env = {**os.environ, "ORDERSTREAM_NAMESPACE": f"apart{uuid.uuid4().hex[:8]}.",
           "ORDERSTREAM_VAR_DIR": str(tmp_path)}  # pipeline.app makes the worker's data dir at import
    out = subprocess.run([sys.executable, "-c", LOADED_DEVTOOLS, *modules], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def test_what_the_worker_and_sink_commands_import_loads_no_devtools(tmp_path):
    modules = command_imports()
    assert {"pipeline.cli", "agents", "pipeline.app", "pipeline.clickhouse.sink", "pipeline.kafka_io"} <= set(modules)
    assert loaded_devtools(modules, tmp_path) == []


def test_the_subprocess_check_sees_a_loaded_devtools_module(tmp_path):
    assert loaded_devtools(["pipeline.topics", "pipeline.devtools.replay"], tmp_path) == [
        "pipeline.devtools", "pipeline.devtools.fake_orders", "pipeline.devtools.fake_refunds",
        "pipeline.devtools.replay"]
