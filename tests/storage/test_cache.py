"""One cache-root rule: the reference cache and the object-store working copies agree."""

from __future__ import annotations

from pathlib import Path

import pytest

from synthgen.pipelines import remote
from synthgen.storage.cache import CACHE_ENV, cache_root, shared_cache
from synthgen.validators import nearest


def test_every_cache_lives_under_one_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    assert nearest.shared_cache_dir() == tmp_path / "c" / "references"
    assert remote.cache_root() == tmp_path / "c"  # working copies: the same root


def test_the_default_root_and_off(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv(CACHE_ENV)
    assert cache_root() == tmp_path / ".cache" / "synthgen"
    for off in ("off", "OFF", " none ", "0"):
        monkeypatch.setenv(CACHE_ENV, off)
        assert shared_cache("references") is None and nearest.shared_cache_dir() is None
        # a remote build still needs a working copy: the default root, never a folder "off"
        assert cache_root() == tmp_path / ".cache" / "synthgen"
