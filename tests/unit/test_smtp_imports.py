"""The protocol core stays sans-IO: only the adapters may touch asyncio, sockets or TLS."""

from __future__ import annotations

import ast
from pathlib import Path

import zonerelay.smtp

FORBIDDEN = {"asyncio", "socket", "ssl"}
ADAPTERS = {"server.py", "client.py"}
SMTP_DIR = Path(zonerelay.smtp.__file__).parent


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_no_core_module_imports_io() -> None:
    modules = sorted(p for p in SMTP_DIR.glob("*.py") if p.name not in ADAPTERS)
    assert {p.name for p in modules} >= {"protocol.py", "events.py", "replies.py", "grammar.py", "limits.py"}
    offenders = {p.name: sorted(imported_modules(p) & FORBIDDEN) for p in modules}
    assert {name: bad for name, bad in offenders.items() if bad} == {}
