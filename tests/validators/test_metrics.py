"""Distribution metrics on known cases, and against the `prdc` package on random vectors."""

from __future__ import annotations

import numpy as np
import pytest

from synthgen.validators.metrics import (
    corpus_metrics,
    distribution_metrics,
    frechet_distance,
    kid,
    mean_pairwise_distance,
    prdc,
    vendi_score,
)


def _cloud(n: int, dim: int = 16, seed: int = 0, centre: float = 0.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(centre, 1.0, (n, dim))


def test_identical_sets_score_as_identical() -> None:
    x = _cloud(200)
    m = distribution_metrics(x, x)
    assert m["frechet_distance"] == pytest.approx(0.0, abs=1e-6)
    assert m["coverage"] == pytest.approx(1.0)
    assert m["precision"] == pytest.approx(1.0)
    assert m["recall"] == pytest.approx(1.0)
    assert abs(m["kid"]) < 0.1  # unbiased MMD^2: about 0, may dip below
    assert m["vendi"] == pytest.approx(m["vendi_reference"])


def test_two_samples_of_one_distribution_are_close() -> None:
    m = distribution_metrics(_cloud(300, seed=1), _cloud(300, seed=2))
    assert m["coverage"] > 0.8 and m["precision"] > 0.6 and m["recall"] > 0.6
    assert abs(m["kid"]) < 0.1


def test_disjoint_clusters_score_far_apart() -> None:
    real, fake = _cloud(200), _cloud(200, seed=3, centre=20.0)
    m = distribution_metrics(fake, real)
    near = distribution_metrics(_cloud(200, seed=4), real)
    assert m["frechet_distance"] > 100 * near["frechet_distance"]
    assert m["kid"] > 100 * max(abs(near["kid"]), 1e-3)
    assert m["precision"] == m["recall"] == m["coverage"] == m["density"] == 0.0


def test_collapsed_set_loses_diversity_and_recall() -> None:
    real = _cloud(300)
    rng = np.random.default_rng(5)
    modes = real[:3]
    collapsed = modes[rng.integers(0, 3, 300)] + rng.normal(0, 0.01, (300, 16))
    healthy = distribution_metrics(_cloud(300, seed=6), real)
    m = distribution_metrics(collapsed, real)
    assert m["recall"] < 0.2 < healthy["recall"]
    assert m["coverage"] < 0.1 < healthy["coverage"]
    assert m["vendi"] < 4 < healthy["vendi"]
    assert m["mean_pairwise_distance"] < healthy["mean_pairwise_distance"]


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("seed", [0, 1])
def test_prdc_agrees_with_the_prdc_package(k: int, seed: int) -> None:
    from prdc import compute_prdc

    real = _cloud(150, dim=8, seed=seed)
    fake = _cloud(120, dim=8, seed=seed + 10, centre=0.5)
    want = compute_prdc(real.astype(np.float32), fake.astype(np.float32), k)
    got = prdc(real, fake, k)
    for name in ("precision", "recall", "density", "coverage"):
        assert got[name] == pytest.approx(float(want[name]), abs=1e-6), name


def test_vendi_and_pairwise_distance_on_known_sets() -> None:
    same = np.ones((10, 4))
    assert vendi_score(same) == pytest.approx(1.0)
    assert mean_pairwise_distance(same) == pytest.approx(0.0)
    assert vendi_score(np.eye(4)) == pytest.approx(4.0)
    assert mean_pairwise_distance(np.eye(4)) == pytest.approx(1.0)


def test_small_sets_give_none_not_nan() -> None:
    one = _cloud(1)
    assert frechet_distance(one, one) is None
    assert kid(one, _cloud(5)) is None
    assert prdc(_cloud(3), _cloud(3), 5)["coverage"] is None


def test_corpus_metrics_per_class_and_overall() -> None:
    synth = {"a": _cloud(40, seed=1), "b": _cloud(40, seed=2, centre=5.0)}
    real = {"a": _cloud(40, seed=3), "b": _cloud(40, seed=4, centre=5.0)}
    m = corpus_metrics(synth, real)
    assert set(m["per_class"]) == {"a", "b"}
    assert m["overall"]["n_synthetic"] == 80 and m["overall"]["n_reference"] == 80
    assert m["per_class"]["a"]["coverage"] > 0.5
    only_a = corpus_metrics(synth, {"a": real["a"]})
    assert only_a["per_class"]["b"]["coverage"] is None
