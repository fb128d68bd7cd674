"""aiohttp is the one HTTP server stack (Faust's web server, the verifiers, the sink): no module
serves HTTP with the standard library's servers."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUR_CODE = [ROOT / "agents", ROOT / "pipeline", ROOT / "benchmarks"]
STDLIB_SERVERS = {"http.server", "socketserver", "wsgiref", "xmlrpc.server"}


def stdlib_server_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        hits = [m for m in modules if any(m == s or m.startswith(s + ".") for s in STDLIB_SERVERS)]
        if hits:
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} {hits[0]}")
    return found


def test_the_check_sees_a_stdlib_server():
    probe = ROOT / "var" / "http_stack_probe.py"
    probe.parent.mkdir(exist_ok=True)
    probe.write_text("import socketserver\nfrom http import server\nfrom http.server import HTTPServer\n")
    try:
        assert stdlib_server_imports(probe) == ["var/http_stack_probe.py:1 socketserver",
                                                "var/http_stack_probe.py:2 http.server",
                                                "var/http_stack_probe.py:3 http.server"]
    finally:
        probe.unlink()


def test_no_module_serves_http_with_the_standard_library():
    found = [hit for folder in OUR_CODE for path in sorted(folder.rglob("*.py")) for hit in stdlib_server_imports(path)]
    assert found == [], "serve HTTP with aiohttp (see pipeline/clickhouse/http.py), not:\n" + "\n".join(found)
