"""Garbage collection in the command line's own process (synthgen.pipelines.gcpolicy)."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path

import pytest

from synthgen.pipelines import gcpolicy
from synthgen.pipelines.resolve import resolve
from synthgen.schemas.recipe import load_recipe


def _in_a_fresh_process(code: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_a_process_it_does_not_own_keeps_its_collector() -> None:
    assert not gcpolicy.owned()  # pytest's process: nobody called own_process
    frozen = gc.get_freeze_count()
    with gcpolicy.loading():
        assert gc.isenabled()
    gcpolicy.exiting()
    assert gc.isenabled() and gc.get_freeze_count() == frozen


def test_resolve_leaves_a_callers_collector_alone(recipe_file: Path) -> None:
    # what `synthgen.build` and `cli.main` called from a program run through
    recipe, base_dir = load_recipe(recipe_file)
    frozen = gc.get_freeze_count()
    resolve(recipe, base_dir)
    assert gc.isenabled() and gc.get_freeze_count() == frozen


def test_resolve_in_the_programs_process_freezes_what_it_loaded(recipe_file: Path) -> None:
    seen = _in_a_fresh_process(
        f"""
import gc, json
from synthgen.pipelines import gcpolicy
from synthgen.pipelines.resolve import resolve
from synthgen.schemas.recipe import load_recipe
gcpolicy.own_process()
before = gc.get_freeze_count()
resolve(*load_recipe({str(recipe_file)!r}))  # imports diffusers' and open_clip's classes
print(json.dumps({{"frozen": gc.get_freeze_count() - before, "enabled": gc.isenabled()}}))
"""
    )
    assert seen["enabled"] is True
    assert isinstance(seen["frozen"], int) and seen["frozen"] > 100_000


def test_loading_pauses_the_collector_and_freezes_what_it_loaded() -> None:
    seen = _in_a_fresh_process(
        """
import gc, json
from synthgen.pipelines import gcpolicy
gcpolicy.own_process()
before = gc.get_freeze_count()
with gcpolicy.loading():
    paused = not gc.isenabled()
    import email.mime.multipart, xml.dom.minidom  # modules: long-lived objects
after = gc.get_freeze_count()
try:
    with gcpolicy.loading():
        raise ValueError("a failed load")
except ValueError:
    pass
print(json.dumps({"paused": paused, "frozen": after - before,
                  "enabled_after_failure": gc.isenabled()}))
"""
    )
    assert seen["paused"] is True and seen["enabled_after_failure"] is True
    assert isinstance(seen["frozen"], int) and seen["frozen"] > 1000


@pytest.mark.parametrize("argv", [["--version"], ["plan", "missing.yaml"]])
def test_the_program_owns_its_process_and_freezes_as_it_exits(argv: list[str]) -> None:
    seen = _in_a_fresh_process(
        f"""
import gc, json, sys
from synthgen.pipelines import cli, gcpolicy
sys.argv = ["synthgen", *{argv!r}]
try:
    code = cli.run()
except SystemExit as exc:  # argparse's --version
    code = exc.code
print(json.dumps({{"owned": gcpolicy.owned(), "code": code,
                  "frozen": gc.get_freeze_count(), "enabled": gc.isenabled()}}))
"""
    )
    assert seen["owned"] is True and seen["enabled"] is True
    assert isinstance(seen["frozen"], int) and seen["frozen"] > 1000
    assert seen["code"] == (0 if argv == ["--version"] else 1)
