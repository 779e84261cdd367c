"""Render the effective configuration back as TOML (for `zonerelay config check`)."""

from __future__ import annotations

import json
from typing import Any


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):  # a table inside an array, e.g. a zone's pool entries
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items() if v is not None) + " }"
    return json.dumps(str(value), ensure_ascii=False)


def to_toml(data: dict[str, Any], path: tuple[str, ...] = ()) -> str:
    """Scalars of a table under its [header], then each sub-table, depth first."""
    # TOML has no null: a key whose value is None (unset, use the default) is left out.
    scalars = [
        f"{_key(k)} = {_value(v)}" for k, v in data.items() if not isinstance(v, dict) and v is not None
    ]
    tables = [(k, v) for k, v in data.items() if isinstance(v, dict)]
    blocks = []
    if path and (scalars or not tables):
        blocks.append("\n".join([f"[{'.'.join(_key(p) for p in path)}]", *scalars]))
    elif scalars:
        blocks.append("\n".join(scalars))
    blocks.extend(to_toml(table, (*path, key)).rstrip("\n") for key, table in tables)
    return "\n\n".join(blocks) + "\n"
