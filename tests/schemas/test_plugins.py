"""One plug-in contract: every extension point registers through `schemas.plugins.Registry`,
finds every module of its package, and refuses a name two classes claim."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from importlib import import_module

import pytest

from synthgen.schemas.plugins import Registry

# every extension point: (module holding its registry, registry, package of its plug-ins)
KINDS = [
    ("synthgen.validators.scorers.base", "SCORERS", "synthgen.validators.scorers"),
    ("synthgen.validators.base", "CHECKS", "synthgen.validators.checks"),
    ("synthgen.validators.base", "BUILD_CHECKS", "synthgen.validators.checks"),
    ("synthgen.generators.sources.base", "SOURCES", "synthgen.generators.sources"),
    ("synthgen.generators.modes.base", "MODES", "synthgen.generators.modes"),
    ("synthgen.storage.codecs.base", "CODECS", "synthgen.storage.codecs"),
    ("synthgen.pipelines.shard_writers.base", "SHARD_WRITERS", "synthgen.pipelines.shard_writers"),
]


@pytest.mark.parametrize(("module", "name", "package"), KINDS, ids=[k[1] for k in KINDS])
def test_each_extension_point_is_a_registry_of_its_package(
    module: str, name: str, package: str
) -> None:
    registry = getattr(import_module(module), name)
    assert isinstance(registry, Registry) and registry.package == package


def test_a_fresh_interpreter_finds_every_module_of_each_package() -> None:
    """Nothing imported beforehand: `classes()` alone imports the package's modules, and
    each module that defines a plug-in is found (a module of helpers defines none)."""
    code = (
        "import json, importlib\n"
        f"kinds = {[(m, n) for m, n, _ in KINDS]!r}\n"
        "out = {}\n"
        "for module, name in kinds:\n"
        "    registry = getattr(importlib.import_module(module), name)\n"
        "    out[name] = sorted({c.__module__ for c in registry.classes().values()})\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    for _, name, package in KINDS:
        modules = {
            f"{package}.{m.name}" for m in pkgutil.iter_modules(import_module(package).__path__)
        }
        assert found[name] and set(found[name]) <= modules, name
    everything = {m for mods in found.values() for m in mods}
    for _, _, package in KINDS:  # every module but the shared helpers holds a plug-in
        modules = {m.name for m in pkgutil.iter_modules(import_module(package).__path__)}
        helpers = {"base", "inputs", "worker", "image", "open"}
        plugins = {f"{package}.{m}" for m in modules - helpers}
        assert plugins <= everything, sorted(plugins - everything)


def test_one_name_one_class_and_abstract_bases_are_skipped() -> None:
    registry: Registry[object] = Registry("widget", "synthgen.storage.codecs")

    class Abstract:
        pass

    class First:
        name = "w"

    registry.add(Abstract)
    registry.add(First)
    assert registry._classes == {"w": First}

    class Other:
        name = "w"

    with pytest.raises(TypeError, match=r"widget name 'w' is taken by .*First"):
        registry.add(Other)
    registry.remove("w")
    registry.add(Other)
    assert registry.get("w") is Other
