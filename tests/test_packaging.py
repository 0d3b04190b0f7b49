"""The worker image pins the same versions as constraints.txt; the examples parse."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        name, sep, version = line.strip().partition("==")
        if sep:
            pins[re.sub(r"[-_.]+", "-", name.lower())] = version
    return pins


def test_dockerfile_pins_equal_constraints() -> None:
    text = (ROOT / "docker" / "Dockerfile").read_text()
    pins = {
        re.sub(r"[-_.]+", "-", name.lower()): version
        for name, version in re.findall(r"([A-Za-z0-9_.-]+)==([0-9][0-9A-Za-z.+-]*)", text)
    }
    assert pins, "the Dockerfile pins nothing"
    constraints = _constraints()
    assert {n: v for n, v in pins.items() if constraints.get(n) != v} == {}
    (beam,) = re.findall(r"ARG BEAM_VERSION=(\S+)", text)
    assert beam == constraints["apache-beam"]
    assert "-c constraints.txt" in text


def test_examples_and_template_metadata_parse() -> None:
    ast.parse((ROOT / "examples" / "airflow_dag.py").read_text())
    metadata = json.loads((ROOT / "docker" / "flex-template-metadata.json").read_text())
    assert {p["name"] for p in metadata["parameters"]} >= {"recipe", "publish"}
    cron = (ROOT / "examples" / "cron.txt").read_text()
    assert "--publish" in cron and "--resume" in cron and "prune" in cron
