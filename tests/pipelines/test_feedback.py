"""Closed-loop balancing (`balance.strategy: feedback`): the allocation follows the probe,
the focus reaches the planner, the rounds replay on resume, bad options are refused first."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from synthgen.generators.planning import plan_shard
from synthgen.pipelines.build import run_build
from synthgen.pipelines.strategies.feedback import (
    Feedback,
    allocate,
    allocation_errors,
    plateaued,
    prompt_weights,
)
from synthgen.schemas.manifest import ClassFocus
from synthgen.schemas.recipe import RecipeError, recipe_from_dict
from synthgen.storage.images import decode_image
from synthgen.validators.probe import Extra, class_clusters, cross_validate
from tests.conftest import (
    SPLIT_THRESHOLD,
    read_rows,
    shared_build,
    tiny_recipe_dict,
    write_recipe,
)
from tests.pipelines.test_balance import make_folder

FEEDBACK = {
    "folds": 3,
    "clusters": 2,
    "floor": 0.25,
    "round_budget": 4,
    "max_synthetic": 8,
    "patience": 3,  # random images: the budget, not a plateau, ends the rounds
}


def _recipe_dict(model_dir: Path, source: str, **feedback: Any) -> dict[str, Any]:
    data = tiny_recipe_dict(model_dir)
    del data["count_per_class"]
    data["output"] = {"shard_size": 4}
    data["checks"] = {"clip_score": {"absolute": SPLIT_THRESHOLD}}
    data["scoring"]["scorers"] = [{"name": "clip"}, {"name": "clip_embedding"}]
    data["balance"] = {
        "source": source,
        "target": "max",
        "strategy": "feedback",
        "feedback": {**FEEDBACK, **feedback},
    }
    return data


@pytest.fixture(scope="module")
def feedback_build(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    """A feedback build of test_balance.make_folder's source (zero 6, one 2, two 4): rounds of
    4 samples, 8 at most; its recipe is `out.parent / "recipe.yaml"`."""

    def make(root: Path) -> None:
        source = make_folder(root / "source")
        root.mkdir(parents=True, exist_ok=True)
        recipe = write_recipe(root / "recipe.yaml", _recipe_dict(model_dir, str(source)))
        run_build(recipe, root / "out", show_progress=False)

    return shared_build(tmp_path_factory, "feedback", make, done="out/manifest.json") / "out"


# -- the allocation ------------------------------------------------------------------------


def test_a_class_the_probe_gets_right_gets_its_floor_and_the_hard_one_the_most() -> None:
    errors = {0: 0.0, 1: 0.6, 2: 0.2, 3: 0.0}
    caps = {0: 100, 1: 100, 2: 100, 3: 100}
    alloc = allocate(errors, caps, budget=100, floor=0.1)
    assert sum(alloc.values()) == 100
    assert alloc[0] == alloc[3] == 10  # right: the floor, no more
    assert alloc[1] > alloc[2] > 10
    assert alloc[1] - 10 == pytest.approx(3 * (alloc[2] - 10), abs=1)  # in proportion
    assert allocate(errors, caps, budget=100, floor=0.1) == alloc  # deterministic


def test_floors_shrink_to_fit_and_a_capped_class_gives_its_spare_to_the_others() -> None:
    alloc = allocate({0: 0.5, 1: 0.5, 2: 0.0}, {0: 3, 1: 50, 2: 50}, budget=20, floor=0.5)
    assert alloc == {0: 3, 1: 11, 2: 6}  # floors of 6 (20 // 3), class 0 capped at 3
    assert allocate({0: 0.0, 1: 0.0}, {0: 9, 1: 9}, budget=10, floor=0.2) == {0: 2, 1: 2}
    assert allocate({0: 1.0}, {0: 0, 1: 0}, budget=10, floor=0.2) == {}


def test_a_planted_hard_class_gets_the_most_of_the_round() -> None:
    rng = np.random.default_rng(0)
    centres = np.eye(8)[:3] * 3
    centres[2] = centres[0] * 0.95 + np.eye(8)[3] * 0.6  # class 2 sits beside class 0
    x = np.concatenate(
        [centres[c] + 0.5 * rng.normal(size=(n, 8)) for c, n in enumerate((40, 8, 8))]
    )
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    y = np.repeat([0, 1, 2], [40, 8, 8])
    ev = cross_validate(
        x,
        y,
        Extra.none(8),
        [0, 1, 2],
        kind="linear",
        folds=3,
        seed=0,
        clusters=class_clusters(x, y, 2, 0),
        minority=[1, 2],
    )
    short = {1: 32, 2: 32}
    errors, what = allocation_errors(ev, short)
    assert what == "held-out error" and errors[2] > 0 and errors[1] == 0.0
    alloc = allocate(errors, {1: 40, 2: 40}, budget=40, floor=0.1)
    assert alloc == {1: 4, 2: 36}


def test_when_no_short_class_is_misread_the_soft_error_ranks_them() -> None:
    ev = SimpleNamespace(
        per_class_error={0: 0.1, 1: 0.0, 2: 0.0}, per_class_soft_error={0: 0.2, 1: 0.05, 2: 0.3}
    )
    errors, what = allocation_errors(ev, {1: 5, 2: 5})  # type: ignore[arg-type]
    assert "soft" in what and errors[2] > errors[1]
    assert allocation_errors(ev, {0: 5})[0] == ev.per_class_error  # type: ignore[arg-type]


def test_allocate_by_soft_error_follows_it_even_where_classes_are_misread(
    tmp_path: Path, model_dir: Path
) -> None:
    ev = SimpleNamespace(
        per_class_error={0: 0.4, 1: 0.2, 2: 0.2}, per_class_soft_error={0: 0.5, 1: 0.4, 2: 0.6}
    )
    errors, what = allocation_errors(ev, {0: 5, 1: 5}, "soft_error")  # type: ignore[arg-type]
    assert errors == ev.per_class_soft_error and what == "held-out soft error"
    # a build's first round follows it, and says so in its reason
    data = _recipe_dict(model_dir, str(make_folder(tmp_path / "src")), allocate_by="soft_error")
    strategy, plan = _first_round(tmp_path, data)
    assert plan is not None
    record = strategy.feedback_rounds[0]
    assert "probe's held-out soft error (highest" in record.reason
    soft = strategy.evaluation.per_class_soft_error
    expected = allocate(soft, strategy._caps(strategy._short())[0], 4, FEEDBACK["floor"])
    assert record.allocation == {strategy.names[c]: n for c, n in sorted(expected.items())}
    plain = recipe_from_dict(_recipe_dict(model_dir, "unused"))
    spelled = recipe_from_dict(_recipe_dict(model_dir, "unused", allocate_by="error"))
    assert spelled.hash == plain.hash != recipe_from_dict(data).hash


def test_plateau_after_patience_rounds_without_min_delta() -> None:
    assert not plateaued([0.5], 1, 0.01)
    assert not plateaued([0.5, 0.4], 1, 0.01)
    assert plateaued([0.5, 0.495], 1, 0.01)
    assert not plateaued([0.5, 0.495, 0.3], 2, 0.01)
    assert plateaued([0.5, 0.495, 0.499], 2, 0.01)


def test_prompts_near_the_error_cluster_weigh_more() -> None:
    texts = np.array([[1.0, 0.0], [0.0, 1.0], [0.7071, 0.7071]])
    centroids = {0: np.array([1.0, 0.0]), 1: np.array([0.0, 1.0])}
    weights = prompt_weights(texts, centroids, [0.0, 0.8])
    assert weights is not None and sum(weights) == pytest.approx(1.0, abs=1e-5)
    assert weights[1] > weights[2] > weights[0] >= 0.5 / 3 - 1e-6  # every prompt keeps a share
    assert prompt_weights(texts, centroids, [0.0, 0.0]) is None
    assert prompt_weights(texts[:1], centroids, [0.5, 0.5]) is None


# -- the focus in the planner --------------------------------------------------------------


def _planning_recipe(model_dir: Path, **balance: Any) -> Any:
    data = _recipe_dict(model_dir, "unused")
    data["balance"] |= balance
    return recipe_from_dict(data)


def test_prompt_weights_choose_the_templates(model_dir: Path) -> None:
    recipe = _planning_recipe(model_dir)
    counts, start = {0: 40}, {0: 0}
    plain = [r.prompt_template for s in range(10) for r in plan_shard(recipe, s, counts, start)]
    assert set(plain) == {"a handwritten digit 0", "the number zero"}
    focus = {0: ClassFocus(prompt_weights=[0.0, 1.0])}
    focused = [r for s in range(10) for r in plan_shard(recipe, s, counts, start, focus=focus)]
    assert {r.prompt_template for r in focused} == {"the number zero"}
    assert [r.seed for r in focused] == [
        r.seed for s in range(10) for r in plan_shard(recipe, s, counts, start)
    ], "keys and seeds do not move"
    assert all(r.conditioning_source is None for r in focused)  # a text build: no source


def test_img2img_samples_start_from_the_focus_sources(model_dir: Path) -> None:
    recipe = _planning_recipe(model_dir, conditioning={"text": 1, "img2img": 1})
    hard = [("one/006.png", "a" * 64), ("one/007.png", "b" * 64)]
    focus = {1: ClassFocus(sources=hard)}
    requests = [r for s in range(10) for r in plan_shard(recipe, s, {1: 40}, {1: 0}, focus=focus)]
    from synthgen.generators.conditioning import pick_mode

    named = [r for r in requests if r.conditioning_source is not None]
    assert 0 < len(named) < len(requests)
    for r in requests:  # exactly the samples the worker conditions on an image
        assert (r.conditioning_source is None) == pick_mode(recipe.seed, r.key, 0.5)
    assert {(r.conditioning_source, r.conditioning_source_sha256) for r in named} == set(hard)


# -- bad options ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"strategy": "topup"}, "balance.feedback is for `strategy: feedback`"),
        ({"feedback": {"round_budget": 50, "max_synthetic": 10}}, "round_budget"),
        ({"feedback": {"criterion": "entropy"}}, "add `guidance: feedback`"),
        ({"feedback": {"probe": "svm"}}, "probe"),
        ({"feedback": {"folds": 1}}, "folds"),
        ({"feedback": {"guidance": "feedback", "scale": 0.0}}, "use `guidance: none`"),
        ({"strategy": "closed-loop"}, "strategy"),
        (
            {"feedback": {"features": "pixels", "guidance": "feedback"}},
            "which a pixel probe does not read",
        ),
        ({"feedback": {"pixels_size": 4}}, "add `features: pixels`"),
        ({"feedback": {"features": "pixel"}}, "features"),
    ],
)
def test_bad_feedback_options_are_refused_by_name(
    model_dir: Path, change: dict[str, Any], message: str
) -> None:
    data = _recipe_dict(model_dir, "unused")
    data["balance"] |= change
    with pytest.raises((RecipeError, ValueError), match=message):
        recipe_from_dict(data)


def test_feedback_without_stored_embeddings_is_refused_before_any_output(
    tmp_path: Path, model_dir: Path
) -> None:
    data = _recipe_dict(model_dir, str(make_folder(tmp_path / "src")))
    data["scoring"]["scorers"] = [{"name": "clip"}]
    with pytest.raises(RecipeError, match=r"add `\{name: clip_embedding\}`"):
        run_build(write_recipe(tmp_path / "r.yaml", data), tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out").exists()


def test_guidance_without_its_module_is_refused_by_name(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "synthgen.generators.guidance" else real(name, *a),
    )
    data = _recipe_dict(model_dir, str(make_folder(tmp_path / "src")), guidance="feedback")
    with pytest.raises(RecipeError, match=r"balance\.feedback\.guidance: feedback"):
        run_build(write_recipe(tmp_path / "r.yaml", data), tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out").exists()


def test_a_guided_round_names_its_probe_for_the_workers(tmp_path: Path, model_dir: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("synthgen.generators.guidance") is None:
        pytest.fail("the guidance module is part of the package")
    data = _recipe_dict(model_dir, str(make_folder(tmp_path / "src")), guidance="feedback")
    data["balance"]["feedback"] |= {"criterion": "entropy", "scale": -0.5, "every": 3}
    _, plan = _first_round(tmp_path, data)
    assert plan is not None and plan.guidance is not None
    g = plan.guidance
    assert (g.probe, g.criterion, g.scale, g.every) == (
        "_feedback/probe-0.safetensors",
        "entropy",
        -0.5,
        3,
    )
    saved = (tmp_path / "out" / g.probe).read_bytes()
    assert hashlib.sha256(saved).hexdigest() == g.probe_sha256
    assert sum(plan.counts[c] - plan.start[c] for c in plan.counts) == 4  # type: ignore[index]


def _first_round(tmp_path: Path, data: dict[str, Any]) -> tuple[Feedback, Any]:
    """A feedback strategy's first round, planned without a build (nothing generated)."""
    from synthgen.pipelines.resolve import resolve
    from synthgen.schemas.recipe import load_recipe
    from synthgen.validators.scorers.base import WorkerModels

    tmp_path.mkdir(parents=True, exist_ok=True)
    recipe, base = load_recipe(write_recipe(tmp_path / "r.yaml", data))
    strategy = Feedback(resolve(recipe, base))
    strategy.prepare()
    try:
        session = SimpleNamespace(
            out=tmp_path / "out", rounds=[], driver_models=WorkerModels("cpu", 1)
        )
        strategy.begin(session)  # type: ignore[arg-type]
        return strategy, strategy.next_round()
    finally:
        strategy.close()


def test_a_class_the_checks_keep_rejecting_is_given_up_while_the_others_go_on(
    tmp_path: Path, model_dir: Path
) -> None:
    """A feedback build owes no class an exact count: a short class shown to accept under
    `min_accept_rate` is left out of the round (named in its reason), its error no longer
    choosing the measure the others are planned by; once every class still short is given
    up on the build stops, or fails if it has accepted no synthetic image."""
    import dataclasses

    from synthgen.pipelines.output import BuildError

    data = _recipe_dict(model_dir, str(make_folder(tmp_path / "src")), max_synthetic=40)
    strategy, plan = _first_round(tmp_path, data)
    assert plan is not None
    short = strategy._short()
    one, two = (next(c.id for c in strategy.recipe.classes if c.name == n) for n in ("one", "two"))
    assert set(short) == {one, two}
    strategy.attempted[one], strategy.accepted[one] = 2, 0  # 0 of 2: no evidence yet
    strategy.attempted[two], strategy.accepted[two] = 4, 1
    caps, given_up = strategy._caps(short)
    assert given_up == [] and caps[one] == math.ceil(
        short[one] / (1 - 0.05**0.5) * strategy._spec.overgenerate
    ), "planned by the highest rate 0 of 2 leaves plausible"
    strategy.attempted[one] = 149  # 0 of 149: under 2 % at 95 % confidence
    caps, given_up = strategy._caps(short)
    assert given_up == [one] and set(caps) == {two}
    assert caps[two] == math.ceil(short[two] / 0.25 * strategy._spec.overgenerate)
    evaluate = strategy._evaluate

    def one_misread(synthetic: Any) -> Any:  # the given-up class errs, the other does not
        ev = evaluate(synthetic)
        return dataclasses.replace(ev, per_class_error={**ev.per_class_error, one: 0.5, two: 0.0})

    strategy._evaluate = one_misread  # type: ignore[method-assign]
    nxt = strategy.next_round()
    assert nxt is not None and nxt.quota is not None and set(nxt.quota) == {two}
    record = strategy.feedback_rounds[-1]
    assert "given up on (shown to accept under 2%): one (0 of 149 accepted)" in record.reason
    assert "soft error (no short class misread)" in record.reason, "measured over two alone"
    assert record.allocation.keys() == {"two"} and record.given_up == ["one"]
    assert strategy.feedback_rounds[0].given_up == []
    floor = math.floor(FEEDBACK["floor"] * FEEDBACK["round_budget"])
    assert record.allocation["two"] > floor, "two gets more than its floor: its soft error"

    strategy.attempted[two], strategy.accepted[two] = 300, 1  # now every class still short
    with pytest.raises(BuildError, match="balancing could not fill"):
        strategy.next_round()  # and no synthetic image accepted: the build fails
    x, ids = strategy.real.x[:2], np.full(2, two, np.int64)  # two accepted images
    strategy._synthetic = lambda: Extra(x, ids, np.full(2, -1, np.int64))  # type: ignore[method-assign]
    assert strategy.next_round() is None
    assert strategy.stop == "given_up" and strategy.feedback_rounds[-1].given_up == ["one", "two"]
    assert strategy.feedback_rounds[-1].reason.startswith("stopped: given_up; given up on")


def test_an_img2img_round_starts_from_the_images_the_probe_finds_hard(
    tmp_path: Path, model_dir: Path
) -> None:
    from synthgen.pipelines.strategies.feedback import FOCUS_SOURCES

    data = _recipe_dict(model_dir, str(make_folder(tmp_path / "src")))
    data["balance"] |= {"conditioning": "img2img", "strength": 0.5}
    strategy, plan = _first_round(tmp_path, data)
    assert plan is not None and plan.focus is not None
    conditioning = strategy.resolved.conditioning
    assert conditioning is not None
    ev = strategy.evaluation
    for c, focus in plan.focus.items():
        pool = dict(conditioning.for_class(c).pool)  # type: ignore[union-attr]
        mine = [i for i, ref in enumerate(strategy.real.refs) if strategy.real.y[i] == c]
        by_margin = sorted(mine, key=lambda i: (ev.margin[i], strategy.real.refs[i]))
        misread = [i for i in by_margin if ev.predicted[i] != c]
        n = min(FOCUS_SOURCES, len(mine))
        expected = misread if len(misread) >= n else by_margin[:n]
        assert focus.sources == [
            (strategy.real.refs[i], pool[strategy.real.refs[i]]) for i in expected
        ]
    requests = [
        r
        for s in range(plan.shard_offset, plan.shard_offset + 2)
        for r in plan_shard(strategy.recipe, s, **plan.plan_kwargs())
    ]
    assert requests and all(
        (r.conditioning_source, r.conditioning_source_sha256) in plan.focus[r.class_label].sources
        for r in requests
    )


# -- builds --------------------------------------------------------------------------------


def test_a_feedback_build_records_every_round_and_its_probes(feedback_build: Path) -> None:
    from synthgen.validators.probe import Probe

    manifest = json.loads((feedback_build / "manifest.json").read_text())
    fb = manifest["balance"]["feedback"]
    rounds = fb["rounds"]
    generated = manifest["balance"]["rounds"]
    assert len(rounds) == len(generated) + 1 >= 3  # a probe before every round, and after
    assert fb["stop"] in ("budget", "targets")
    planned = 0
    for r, gen in zip(rounds, generated, strict=False):
        alloc = r["allocation"]
        assert alloc == gen["planned"]  # what the probe allocated is what the round planned
        assert sum(alloc.values()) == min(4, 8 - planned)
        planned += sum(alloc.values())
        errors = r["metrics"]["per_class_error"]
        soft = r["metrics"]["per_class_soft_error"]
        weight = errors if any(errors[c] > 0 for c in alloc) else soft
        hardest = max(alloc, key=lambda c: (weight[c], c))
        assert alloc[hardest] == max(alloc.values()) or alloc[hardest] >= 3  # most, or capped
    synthetic = [r["synthetic_so_far"] for r in rounds]
    assert synthetic[0] == 0 and synthetic == sorted(synthetic)
    assert synthetic[-1] == sum(sum(g["accepted"].values()) for g in generated)
    for r in rounds:
        path = feedback_build / r["probe"]
        assert manifest["files"][r["probe"]]["sha256"] == r["probe_sha256"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == r["probe_sha256"]
        assert Probe.load(path).classes == (0, 1, 2)
    assert fb["real_only"] == rounds[0]["metrics"]
    assert "no flips" in fb["baseline_method"]
    assert set(fb["baseline"]["per_class_error"]) == {"zero", "one", "two"}


def test_resume_after_an_interrupted_round_replays_the_rounds_exactly(
    tmp_path: Path, feedback_build: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The clean build's folder as a run killed during its second round leaves it (round 0's
    shard finished, nothing after it), interrupted once more there, then resumed: every file
    is byte for byte the clean build's (created_at comes from the build's state)."""
    import shutil

    from synthgen.schemas.manifest import shard_files, stats_name

    recipe = feedback_build.parent / "recipe.yaml"
    out = tmp_path / "out"
    shutil.copytree(feedback_build, out)
    clean = json.loads((out / "manifest.json").read_text())
    later = [s["shard"] for s in clean["shards"] if s["shard"] > 0]
    assert later, "the build has a second round"
    for name in ["manifest.json", "report.json", "report.html", "README.md", "_index"]:
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    for shard in later:
        for name in [*shard_files(shard), stats_name(shard)]:
            (out / name).unlink()
    for probe in sorted((out / "_feedback").iterdir())[1:]:
        probe.unlink()  # only round 0's probe was saved before round 0 ran
    monkeypatch.setenv("SYNTHGEN_FAULT", f"write:{later[0]:05d}:raise")
    with pytest.raises(Exception, match="injected fault"):
        run_build(recipe, out, resume=True, show_progress=False)
    assert not (out / "manifest.json").exists()
    monkeypatch.delenv("SYNTHGEN_FAULT")
    from synthgen.validators import metrics

    read: list[int] = []
    real_read = metrics.build_embeddings

    def counted(where: Path, shards: list[int], *args: Any) -> dict[str, np.ndarray]:
        caller = sys._getframe(1).f_globals["__name__"]
        if caller == "synthgen.pipelines.strategies.feedback":  # the probe's reads
            read.extend(shards)
        return real_read(where, shards, *args)

    monkeypatch.setattr(metrics, "build_embeddings", counted)
    result = run_build(recipe, out, resume=True, show_progress=False)
    monkeypatch.undo()
    assert result.reused_shards == [0]
    # each shard's embeddings read once by the rounds after it, not once per round
    assert read and sorted(read) == sorted(set(read)), read
    again = json.loads((out / "manifest.json").read_text())
    assert again["balance"]["feedback"] == clean["balance"]["feedback"]
    assert again["balance"] == clean["balance"] and again["files"] == clean["files"]
    for shard in clean["shards"]:
        for name in shard_files(shard["shard"]):
            assert (out / name).read_bytes() == (feedback_build / name).read_bytes(), name
    for name in clean["files"]:
        assert (out / name).read_bytes() == (feedback_build / name).read_bytes(), name


def test_existing_recipes_keep_the_topup_strategy(model_dir: Path) -> None:
    data = _recipe_dict(model_dir, "unused")
    del data["balance"]["strategy"], data["balance"]["feedback"]
    recipe = recipe_from_dict(copy.deepcopy(data))
    assert recipe.balance is not None and recipe.balance.strategy == "topup"
    spelled = copy.deepcopy(data)
    spelled["balance"]["strategy"] = "topup"
    assert recipe_from_dict(spelled).hash == recipe.hash  # the default is left out of the hash


def test_a_guided_build_changes_the_images_and_regenerates_them_byte_for_byte(
    tmp_path: Path, feedback_build: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`guidance: feedback`: the same plan as the unguided build (same keys, seeds, round 0
    probe), other pixels; each sample records its round's probe and CLIP model, and
    `regenerate` (with the CLIP loader, as `synthgen regenerate` passes it) makes the same
    bytes again."""
    import tarfile

    from synthgen.generators.regenerate import Inputs, regenerate
    from synthgen.validators.clip_folder import load_clip
    from tests.conftest import read_rows

    source = feedback_build.parent / "source"
    data = _recipe_dict(model_dir, str(source), guidance="feedback", scale=0.3, every=1)
    data["balance"]["max_rounds"] = 1
    out = tmp_path / "guided"
    from synthgen.validators import clip_folder

    real_load = clip_folder.load_clip
    loads_file = tmp_path / "clip-loads.txt"  # a file: the settings' loader goes pickled

    def counted(path: Path, device: str = "cpu") -> Any:
        with open(loads_file, "a", encoding="utf-8") as f:
            f.write(f"{path}\n")
        return real_load(path, device)

    monkeypatch.setattr(clip_folder, "load_clip", counted)
    run_build(write_recipe(tmp_path / "recipe.yaml", data), out, show_progress=False)
    monkeypatch.undo()
    loads = loads_file.read_text(encoding="utf-8").splitlines()
    # two CLIP copies: the driver's one (the reference set, the real images, the prompts,
    # the baseline) and the worker's, which guidance differentiates through as the scorers
    # do (guidance loaded one per model copy, and the driver one per use, before)
    assert len(loads) == 2, loads
    guided = {r["key"]: r for r in read_rows(out).to_pylist()}
    plain = {r["key"]: r for r in read_rows(feedback_build).to_pylist() if r["shard"] == 0}
    assert set(guided) == set(plain)  # round 0 planned the same samples
    changed = [k for k in guided if guided[k]["image_sha256"] != plain[k]["image_sha256"]]
    assert len(changed) == len(guided)
    with tarfile.open(out / "00000.tar") as tf:
        sidecars = {
            m.name.split(".")[0]: json.loads(tf.extractfile(m).read())  # type: ignore[union-attr]
            for m in tf
            if m.name.endswith(".json")
        }
        images = {
            m.name.split(".")[0]: tf.extractfile(m).read()  # type: ignore[union-attr]
            for m in tf
            if m.name.endswith(".png")
        }
    key = sorted(images)[0]
    options = sidecars[key]["generation_options"]
    options = json.loads(options) if isinstance(options, str) else options
    recorded = options["guidance"]
    assert recorded["probe"] == "_feedback/probe-0.safetensors" and recorded["every"] == 1
    again = regenerate(sidecars[key], Inputs.for_build(out), clip_loader=load_clip)
    assert again == images[key]
    with pytest.raises(ValueError, match="clip_loader"):
        regenerate(sidecars[key], Inputs.for_build(out))


# -- a probe on the pixels -----------------------------------------------------------------


def test_pixel_features_are_the_grey_grid_of_each_image_l2_normalised() -> None:
    from PIL import Image

    from synthgen.validators.probe import pixel_features

    half = np.zeros((4, 4, 3), dtype=np.uint8)
    half[:, :2] = 255  # the left half white
    red = np.zeros((4, 4, 3), dtype=np.uint8)
    red[..., 0] = 255
    images = [Image.fromarray(a) for a in (half, red, np.zeros((4, 4, 3), np.uint8))]
    x = pixel_features(images, 2)
    assert x.shape == (3, 4) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], [2**-0.5, 0, 2**-0.5, 0], atol=1e-6)
    np.testing.assert_allclose(x[1], [0.5] * 4, atol=1e-6)  # grey 1/3 everywhere
    assert not x[2].any()  # all black stays zero


def test_build_images_reads_the_accepted_images_in_the_embeddings_order(
    feedback_build: Path,
) -> None:
    """`build_images` returns, per class, the images of the rows `build_embeddings` returns,
    in the same order: the CLIP embedding of each decoded image is its stored one."""
    from synthgen.schemas.manifest import shard_files
    from synthgen.storage.tars import iter_tar_samples
    from synthgen.validators.metrics import build_embeddings, build_images

    manifest = json.loads((feedback_build / "manifest.json").read_text())
    shards = [s["shard"] for s in manifest["shards"]]
    rows = read_rows(feedback_build).to_pylist()
    column = next(c for c in rows[0] if c.endswith("_embedding"))
    images = build_images(feedback_build, shards)
    stored = build_embeddings(feedback_build, shards, column)
    assert {n: len(v) for n, v in images.items()} == {n: len(v) for n, v in stored.items()}
    accepted = [r for r in rows if r["status"] == "accepted"]
    assert sum(len(v) for v in images.values()) == len(accepted) > 0
    tars = {
        s.key: s.members["png"]
        for shard in shards
        for s in iter_tar_samples(feedback_build / shard_files(shard).tar, extensions={"png"})
    }
    for name, decoded in images.items():
        mine = [r for r in accepted if r["class_name"] == name]
        for image, row in zip(decoded, mine, strict=True):
            assert image.tobytes() == decode_image(tars[row["key"]]).tobytes()


def _pixel_recipe(model_dir: Path, source: Path) -> dict[str, Any]:
    return _recipe_dict(model_dir, str(source), features="pixels", pixels_size=4)


def test_a_pixel_probe_reads_the_grey_grid_and_its_file_says_so(
    tmp_path: Path, model_dir: Path
) -> None:
    """`features: pixels`: the probe's rows are the real images' 4x4 grey grids, its file
    records `pixels-4x4`; the clusters (and so the prompt weights) are still those of the
    image embeddings; the hash changes only when the option is set."""
    from synthgen.validators.probe import Probe, pixel_features

    source = make_folder(tmp_path / "src")
    strategy, plan = _first_round(tmp_path / "pixels", _pixel_recipe(model_dir, source))
    embedded, _ = _first_round(tmp_path / "embedding", _recipe_dict(model_dir, str(source)))
    assert plan is not None
    real = strategy.real
    assert real.x.shape == (12, 16)
    by_ref = {im.reference: decode_image(im.data) for im in strategy.source.iter_images()}
    np.testing.assert_array_equal(real.x, pixel_features([by_ref[r] for r in real.refs], 4))
    np.testing.assert_array_equal(real.emb, embedded.real.x)
    np.testing.assert_array_equal(real.clusters, embedded.real.clusters)
    probe = Probe.load(tmp_path / "pixels" / "out" / "_feedback" / "probe-0.safetensors")
    assert probe.embedding == "pixels-4x4" and probe.tensors["weight"].shape == (3, 16)
    spelled = _recipe_dict(model_dir, str(source), features="image_embedding", pixels_size=8)
    plain = recipe_from_dict(_recipe_dict(model_dir, str(source)))
    assert recipe_from_dict(spelled).hash == plain.hash  # defaults left out of the hash
    assert recipe_from_dict(_pixel_recipe(model_dir, source)).hash != plain.hash


def test_a_pixel_probe_build_trains_each_round_on_the_accepted_images_pixels(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every later round's probe is the one trained on the real images' and the accepted
    synthetic images' grey grids, read back from the shards (each shard once per build):
    the saved bytes match a probe trained here from those pixels."""
    from synthgen.validators import metrics
    from synthgen.validators.metrics import build_images
    from synthgen.validators.probe import pixel_features, train_probe

    read: list[int] = []

    def counted(out: Path, shards: list[int], *args: Any) -> dict[str, list[Any]]:
        read.extend(shards)
        return build_images(out, shards, *args)

    monkeypatch.setattr(metrics, "build_images", counted)
    source = make_folder(tmp_path / "src")
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path / "r.yaml", _pixel_recipe(model_dir, source))
    run_build(recipe, out, show_progress=False)
    monkeypatch.undo()
    assert read and sorted(read) == sorted(set(read)), "a shard decoded twice"
    manifest = json.loads((out / "manifest.json").read_text())
    rounds = manifest["balance"]["feedback"]["rounds"]
    assert len(rounds) >= 2 and rounds[-1]["synthetic_so_far"] > 0
    strategy, _ = _first_round(tmp_path / "again", _pixel_recipe(model_dir, source))
    ids = {"zero": 0, "one": 1, "two": 2}
    shards = sorted(manifest["shards"], key=lambda s: s["shard"])
    for r in rounds[1:]:
        # the shards before this round: the first ones holding its synthetic_so_far
        done = next(
            i
            for i in range(len(shards) + 1)
            if sum(s["accepted"] for s in shards[:i]) == r["synthetic_so_far"]
        )
        images = build_images(out, [s["shard"] for s in shards[:done]])
        names = sorted(images)
        syn_x = np.concatenate([pixel_features(images[n], 4) for n in names])
        syn_y = np.concatenate([np.full(len(images[n]), ids[n]) for n in names])
        assert len(syn_y) == r["synthetic_so_far"]
        probe = train_probe(
            np.concatenate([strategy.real.x, syn_x]),
            np.concatenate([strategy.real.y, syn_y]),
            [0, 1, 2],
            "linear",
            7,
            embedding="pixels-4x4",
        )
        assert probe.to_bytes() == (out / r["probe"]).read_bytes(), r["round"]
