"""synthgen prune: keeps the newest N builds and never the one `latest` points to."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from synthgen.pipelines.output import BuildError, exclusive_lock, prune
from synthgen.storage.atomic import swap_symlink


def _root(tmp_path: Path, names: list[str], latest: str) -> Path:
    root = tmp_path / "pub"
    for name in names:
        (root / "builds" / name).mkdir(parents=True)
        (root / "builds" / name / "manifest.json").write_text("{}")
    swap_symlink(root / "latest", f"builds/{latest}")
    return root


def test_prune_keeps_newest_and_latest(tmp_path: Path) -> None:
    names = [f"2026010{i}T000000Z-abc" for i in range(1, 6)]
    root = _root(tmp_path, names, latest=names[0])  # rolled back to the oldest
    removed = prune(root, keep=2)
    assert sorted(p.name for p in removed) == names[1:3]
    assert sorted(p.name for p in (root / "builds").iterdir()) == [names[0], *names[3:]]
    assert (root / "latest").resolve().name == names[0]


def test_prune_skips_a_build_in_progress_and_dry_run_removes_nothing(tmp_path: Path) -> None:
    names = [f"2026010{i}T000000Z-abc" for i in range(1, 4)]
    root = _root(tmp_path, names, latest=names[2])
    with exclusive_lock(root / "builds" / names[0], "output directory"):
        assert [p.name for p in prune(root, keep=1)] == [names[1]]
    assert [p.name for p in prune(root, keep=1, dry_run=True)] == [names[0]]
    assert (root / "builds" / names[0]).is_dir()
    with pytest.raises(BuildError, match="at least 1"):
        prune(root, keep=0)


def test_prune_command(tmp_path: Path) -> None:
    names = [f"2026010{i}T000000Z-abc" for i in range(1, 4)]
    root = _root(tmp_path, names, latest=names[2])
    cmd = [sys.executable, "-m", "synthgen.pipelines.cli", "prune", str(root), "--keep", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "removed 2 build(s)" in done.stdout
    assert [p.name for p in (root / "builds").iterdir()] == [names[2]]
