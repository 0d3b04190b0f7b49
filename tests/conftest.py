"""Tiny real components: a random Stable-Diffusion-layout pipeline and a random open_clip model."""

from __future__ import annotations

import glob
import hashlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Working copies of object-store builds and shared caches: per test process, never ~/.cache.
os.environ["SYNTHGEN_CACHE_DIR"] = tempfile.mkdtemp(prefix="synthgen-test-cache-")

from synthgen.generators.clip_layout import make_random_clip
from synthgen.generators.sd_layout import SDLayoutConfig, make_random_pipeline

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "data" / "digits_golden.json"


def shared_build(
    tmp_path_factory: pytest.TempPathFactory, name: str, make: Any, done: str = "manifest.json"
) -> Path:
    """A build that tests only read, made once per test session: under pytest-xdist the
    first worker to ask builds it (under a file lock) and the others reuse the folder.
    `make(out)` builds into `out`; the folder is complete once `out / done` exists."""
    import filelock

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    out = shared / f"shared-{name}"
    with filelock.FileLock(str(out) + ".lock"):
        if not (out / done).exists():
            make(out)
    return out


@pytest.fixture(scope="session")
def digits_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small digits build whose image hashes tests/data/digits_golden.json records
    (30 samples of the default recipe); read by the golden test and the docs' code blocks."""
    import json

    from synthgen.pipelines.build import run_build

    golden = json.loads(GOLDEN.read_text())

    def make(out: Path) -> None:
        run_build(ROOT / golden["recipe"], out, overrides=golden["overrides"], show_progress=False)

    return shared_build(tmp_path_factory, "digits", make)


TINY_SD = SDLayoutConfig(
    image_size=32,
    vae_channels=(8, 16),
    vae_norm_groups=4,
    unet_channels=(16, 32),
    unet_norm_groups=4,
    text_hidden=16,
    text_intermediate=32,
    text_heads=2,
    text_layers=1,
)
TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 1, "layers": 1},
}


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding `sd/` (diffusers pipeline) and `clip/` (open_clip config + weights).
    One folder for every xdist worker: a recipe's hash holds its model path, so builds that
    tests share across workers match the builds each test makes itself."""

    def make(root: Path) -> None:
        make_random_pipeline(root / "sd", TINY_SD, seed=0)
        make_random_clip(root / "clip", name="tiny-clip", config=TINY_CLIP, seed=0)
        (root.parent / f"{root.name}.done").touch()

    return shared_build(tmp_path_factory, "models", make, done="../shared-models.done")


def tiny_recipe_dict(model_dir: Path, **overrides: Any) -> dict[str, Any]:
    recipe: dict[str, Any] = {
        "name": "tiny",
        "seed": 7,
        "model": {"path": str(model_dir / "sd"), "compute_batch": 4},
        "sampling": {
            "scheduler": "dpm-solver++",
            "steps": 2,
            "guidance_scale": 2.0,
            "height": 32,
            "width": 32,
            "negative_prompt": "blurry",
        },
        "classes": [
            {"id": 0, "name": "zero", "prompts": ["a handwritten digit 0", "the number zero"]},
            {"id": 1, "name": "one", "prompts": ["a handwritten digit 1"]},
            {"id": 2, "name": "two", "prompts": ["a handwritten digit 2"]},
        ],
        "count_per_class": 4,
        "scoring": {"clip_model": str(model_dir / "clip")},
        "checks": {"clip_score": {"absolute": 0.0}},
        "output": {"shard_size": 5},
        "batch_size": 4,
    }
    for key, value in overrides.items():
        recipe[key] = value
    return recipe


def write_recipe(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def recipe_file(tmp_path: Path, model_dir: Path) -> Path:
    return write_recipe(tmp_path / "recipe.yaml", tiny_recipe_dict(model_dir))


def read_rows(out: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(f) for f in sorted(glob.glob(str(out / "*.parquet")))])


# About the median tiny-CLIP score of the tiny build: some samples pass, some are rejected.
SPLIT_THRESHOLD = -0.085


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`synthgen ARGS` in a fresh process (this environment plus `env`), output captured."""
    return subprocess.run(
        [sys.executable, "-m", "synthgen.pipelines.cli", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`synthgen ARGS` in this process (its current folder): exit code, stdout, stderr."""
    from synthgen.pipelines.cli import main

    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# -- an S3 server on loopback (moto), for object-store tests ----------------------------
S3_SECRET = "s3cr3t-" + hashlib.sha256(b"never-log-me").hexdigest()[:20]
S3_BUCKET = "corpora"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """An S3 server on loopback, a bucket, and the standard AWS variables pointing at it."""
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "server.log"
    with log.open("wb") as f:
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
            break
        except OSError:
            if time.monotonic() > deadline:
                server.kill()
                raise
            time.sleep(0.1)
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "AKIATESTKEY",
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "SYNTHGEN_CACHE_DIR": str(tmp_path_factory.mktemp("cache")),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import s3fs

    # fsspec keeps one filesystem per argument set: a cached one would still talk to the
    # server of an earlier module.
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        import boto3

        boto3.client("s3").create_bucket(Bucket=S3_BUCKET)
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.terminate()
        server.wait(10)
        s3fs.S3FileSystem.clear_instance_cache()
