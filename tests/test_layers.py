"""The package layers: one installed namespace, and imports that flow one way only.

schemas <- storage <- generators, validators <- pipelines. A test walks every module's
imports (ast, nothing is imported) so a cycle or an upward import fails here, by name.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("schemas", "storage", "generators", "validators", "pipelines")
ALLOWED: dict[str, set[str]] = {
    "schemas": set(),
    "storage": {"schemas"},
    "generators": {"schemas", "storage"},
    "validators": {"schemas", "storage"},
    "pipelines": {"schemas", "storage", "generators", "validators"},
}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _layer_edges() -> list[tuple[str, str, str]]:
    """(importing package, imported package, where) for every synthgen import."""
    edges = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for lineno, name in _imports(path):
                parts = name.split(".")
                if parts[0] in PACKAGES:
                    edges.append((package, parts[0], f"{path.relative_to(ROOT)}:{lineno} bare"))
                if parts[0] == "synthgen" and len(parts) > 1 and parts[1] in PACKAGES:
                    edges.append((package, parts[1], f"{path.relative_to(ROOT)}:{lineno}"))
    return edges


def test_every_import_goes_through_the_namespace() -> None:
    bare = [where for _, _, where in _layer_edges() if where.endswith("bare")]
    assert bare == [], f"imports that bypass the synthgen. namespace: {bare}"


def test_imports_flow_one_way() -> None:
    upward = [
        f"{where}: {src} imports {dst}"
        for src, dst, where in _layer_edges()
        if dst != src and dst not in ALLOWED[src]
    ]
    assert upward == [], "imports against the layer order:\n" + "\n".join(upward)


def test_no_import_cycle_between_packages() -> None:
    graph: dict[str, set[str]] = {p: set() for p in PACKAGES}
    for src, dst, _ in _layer_edges():
        if src != dst:
            graph[src].add(dst)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(
            n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in graph[start]
        )

    assert [p for p in PACKAGES if reaches(p, p, set())] == []


MAX_FUNCTION_LINES = 60


def _package_files() -> list[Path]:
    """The package's modules, each once (synthgen/'s folders link to the top-level ones)."""
    files = [p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))]
    return files + sorted((ROOT / "synthgen").glob("*.py"))


def test_no_package_function_is_longer_than_60_lines() -> None:
    """Every function and method of the package, docstring included, fits in 60 lines."""
    long = [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1})"
        for path in _package_files()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and (node.end_lineno or node.lineno) - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == [], "\n".join(long)


def test_installed_distribution_has_one_top_level_name() -> None:
    dist = metadata.distribution("synthgen-corpus")
    top = (dist.read_text("top_level.txt") or "").split()
    assert top == ["synthgen"]
    assert dist.entry_points.select(group="console_scripts")["synthgen"].value == (
        "synthgen.pipelines.cli:run"
    )


@pytest.mark.parametrize("name", ["schemas", "generators", "validators", "pipelines", "storage"])
def test_generic_names_are_not_importable_outside_the_tree(name: str, tmp_path: Path) -> None:
    code = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({name!r}) is not None)"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, timeout=60)
    assert done.returncode == 0, f"`import {name}` resolves outside the source tree"
    code = f"import synthgen.{name}"
    assert subprocess.run([sys.executable, "-c", code], cwd=tmp_path, timeout=60).returncode == 0


def test_wheel_holds_only_the_synthgen_package(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"synthgen"}
    for package in PACKAGES:
        assert f"synthgen/{package}/__init__.py" in names
