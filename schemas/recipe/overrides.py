"""`--set dotted.key=value` overrides: parsed as YAML values, applied to a copy of the
recipe's data; a path given this way is relative to the working directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from synthgen.schemas.recipe.common import MAX_YAML_NODES, RecipeError, is_url, shown_url
from synthgen.schemas.recipe.fields import FieldPatterns, path_fields
from synthgen.schemas.recipe.recipe import Recipe
from synthgen.schemas.recipe.yaml_safe import safe_load

# Every field naming a path, at any depth (`*`: any list index or mapping key).
PATH_FIELDS: FieldPatterns = path_fields(Recipe)


def parse_override(item: str) -> tuple[list[str], Any]:
    """Parse one `dotted.key=value` override; the value is read as a YAML scalar/list."""
    if "=" not in item:
        raise RecipeError(f"--set {item!r}: expected dotted.key=value")
    dotted, raw = item.split("=", 1)
    parts = dotted.strip().split(".")
    if not all(parts):
        raise RecipeError(f"--set {item!r}: empty key segment")
    try:
        value = safe_load(raw, f"--set {dotted}") if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise RecipeError(f"--set {dotted}: cannot parse value {raw!r}: {exc}") from exc
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: list[str], cwd: Path) -> dict[str, Any]:
    """Return a copy of `data` with each `dotted.key=value` applied.

    Lists are addressed by index (`classes.0.prompts`). Path fields given on the command
    line are relative to the current directory, so they are made absolute here; a URL
    (`s3://...`) is a URL, never a path, and is left as it is.
    """
    out = _plain_copy(data)
    for item in overrides:
        parts, value = parse_override(item)
        node: Any = out
        for i, part in enumerate(parts[:-1]):
            node = _child(node, part, parts[: i + 1], create=True)
        last = parts[-1]
        value = cwd_paths(tuple(parts), value, cwd)
        if isinstance(node, list):
            node[_index(node, last, parts)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise RecipeError(f"--set {'.'.join(parts)}: {'.'.join(parts[:-1])} is not a mapping")
    return out


def cwd_paths(parts: tuple[str, ...], value: Any, cwd: Path) -> Any:
    """`value`, set at `parts`, with each path field in it (itself, or one inside a mapping
    or list it gives) made absolute against `cwd`; URLs stay as they are."""
    if isinstance(value, str):
        return str((cwd / value).resolve()) if parts in PATH_FIELDS and not is_url(value) else value
    if not PATH_FIELDS.below(parts):
        return value
    if isinstance(value, dict):
        return {k: cwd_paths((*parts, str(k)), v, cwd) for k, v in value.items()}
    if isinstance(value, list):
        return [cwd_paths((*parts, str(i)), v, cwd) for i, v in enumerate(value)]
    return value


def _plain_copy(data: Any) -> Any:
    """A deep copy of parsed YAML as plain dicts and lists, mapping keys made strings as JSON
    would make them. Iterative and bounded: a dict handed in by code (not read by safe_load)
    that expands beyond MAX_YAML_NODES, or refers to itself, is refused.
    """
    if not isinstance(data, dict | list | tuple):
        return data
    root: Any = {} if isinstance(data, dict) else []
    stack: list[tuple[Any, Any]] = [(data, root)]
    copied = 0
    while stack:
        src, dst = stack.pop()
        copied += len(src)
        if copied > MAX_YAML_NODES:
            raise RecipeError(
                f"the recipe expands to more than {MAX_YAML_NODES} values (or refers to itself)"
            )
        items = src.items() if isinstance(src, dict) else enumerate(src)
        for k, v in items:
            if isinstance(v, dict | list | tuple):
                child: Any = {} if isinstance(v, dict) else []
                stack.append((v, child))
                v = child
            if isinstance(dst, dict):
                dst[_json_key(k)] = v
            else:
                dst.append(v)
    return root


def _json_key(key: Any) -> str:
    if key is True or key is False or key is None:
        return json.dumps(key)
    return key if isinstance(key, str) else str(key)


def _index(node: list[Any], part: str, parts: list[str]) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise RecipeError(f"--set {'.'.join(parts)}: no list item {part!r}")
    return int(part)


def _child(node: Any, part: str, parts: list[str], create: bool) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, parts)]
    if not isinstance(node, dict):
        raise RecipeError(f"--set {'.'.join(parts)}: {'.'.join(parts[:-1])} is not a mapping")
    if part not in node:
        if not create:
            raise RecipeError(f"--set {'.'.join(parts)}: no such field")
        node[part] = {}
    return node[part]


def overridden_fields(overrides: list[str]) -> dict[str, str]:
    """Dotted field -> the `--set` item that set it (the last one wins, as when applied)."""
    out = {}
    for item in overrides:
        if "=" in item:
            key, value = item.split("=", 1)
            out[key.strip()] = f"{key.strip()}={shown_url(value) if is_url(value) else value}"
    return out
