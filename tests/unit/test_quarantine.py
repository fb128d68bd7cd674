"""No module outside pipeline/faust_internals touches a private Faust, mode or aiokafka attribute."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import aiokafka
import faust
import mode

ROOT = Path(__file__).resolve().parents[2]
QUARANTINE = ROOT / "pipeline" / "faust_internals"
OUR_CODE = [ROOT / "agents", ROOT / "pipeline", ROOT / "benchmarks"]


def private_names_of(package) -> set[str]:
    """`_name`s the library defines: its private methods, functions and attributes."""
    names: set[str] = set()
    for source in Path(package.__file__).parent.rglob("*.py"):
        names.update(re.findall(r"(?:def |self\.|cls\.|^)(_[a-z][a-z0-9_]*)\b", source.read_text(), re.M))
    return names


LIBRARY_PRIVATES = private_names_of(faust) | private_names_of(mode) | private_names_of(aiokafka)


def private_accesses(path: Path) -> list[str]:
    """`obj._name` (obj not self/cls) and getattr(obj, "_name") of a library's private name."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        name = None
        if isinstance(node, ast.Attribute) and node.attr in LIBRARY_PRIVATES:
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                name = node.attr
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "setattr", "hasattr")
              and len(node.args) > 1 and isinstance(node.args[1], ast.Constant) and node.args[1].value in LIBRARY_PRIVATES):
            name = node.args[1].value
        if name:
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
    return found


def test_the_library_private_names_are_found():
    assert {"_committed_offset", "_read_offset", "_acked", "_gap", "_dbs", "_current_event"} <= LIBRARY_PRIVATES


def test_the_check_sees_a_private_access():
    probe = ROOT / "var" / "quarantine_probe.py"
    probe.parent.mkdir(exist_ok=True)
    probe.write_text("def lag(consumer):\n    return getattr(consumer, '_committed_offset'), consumer._acked\n")
    try:
        assert sorted(private_accesses(probe)) == ["var/quarantine_probe.py:2 _acked",
                                                   "var/quarantine_probe.py:2 _committed_offset"]
    finally:
        probe.unlink()


def test_only_the_quarantine_touches_library_internals():
    outside = [path for folder in OUR_CODE for path in folder.rglob("*.py") if QUARANTINE not in path.parents]
    found = [hit for path in outside for hit in private_accesses(path)]
    assert found == []
