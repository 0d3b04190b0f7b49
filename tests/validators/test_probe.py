"""The probe of closed-loop balancing: deterministic bytes, the safetensors contract, folds
that work with a class of five images, held-out images never trained on, metrics."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from synthgen.validators import probe as probe_module
from synthgen.validators.probe import (
    Extra,
    Probe,
    augment,
    class_clusters,
    cross_validate,
    evaluation,
    fold_count,
    oversampled,
    stratified_folds,
    train_probe,
)


def _data(counts: dict[int, int], dim: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit-length embeddings around one random direction per class."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(counts) + 1, dim))
    xs, ys = [], []
    for c, n in counts.items():
        xs.append(centres[c] + 0.6 * rng.normal(size=(n, dim)))
        ys.append(np.full(n, c))
    x = np.concatenate(xs)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), np.concatenate(ys)


# In a fresh process (another hash seed): the module file alone, which imports nothing of
# synthgen's and needs no torch to write a file; prints the file's sha256.
_SHA_SCRIPT = """
import hashlib, importlib.util, sys
import numpy as np
spec = importlib.util.spec_from_file_location("probe", sys.argv[1])
probe = sys.modules["probe"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(probe)
tensors = dict(np.load(sys.argv[2]))
made = probe.Probe(sys.argv[3], (0, 1, 2), tensors, "tiny")
print(hashlib.sha256(made.to_bytes()).hexdigest())
"""


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_a_probe_is_the_same_bytes_every_time_and_in_another_process(
    kind: str, tmp_path: Path
) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 8)).astype(np.float32)
    y = np.arange(40) % 3
    trained = train_probe(x, y, [0, 1, 2], kind, 5, "tiny")
    first = trained.to_bytes()
    assert train_probe(x, y, [0, 1, 2], kind, 5, "tiny").to_bytes() == first
    np.savez(tmp_path / "t.npz", **trained.tensors)
    other = subprocess.run(
        [sys.executable, "-c", _SHA_SCRIPT, probe_module.__file__, str(tmp_path / "t.npz"), kind],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "random"},
    )
    assert other.stdout.strip() == hashlib.sha256(first).hexdigest()
    if kind == "mlp":  # its starting weights are drawn from the seed
        assert train_probe(x, y, [0, 1, 2], kind, 6, "tiny").to_bytes() != first


def test_the_probe_file_is_the_contract_safetensors(tmp_path: Path) -> None:
    from safetensors import safe_open

    x, y = _data({0: 20, 1: 20, 2: 20})
    probe = train_probe(x, y, [2, 0, 1], "linear", 0, "digits-clip")
    data = probe.to_bytes()
    n = int.from_bytes(data[:8], "little")
    meta = json.loads(data[8 : 8 + n])["__metadata__"]
    assert meta == {
        "classes": "[2, 0, 1]",
        "embedding": "digits-clip",
        "kind": "linear",
        "normalise": "l2",
    }
    path = tmp_path / "p.safetensors"
    path.write_bytes(data)
    with safe_open(str(path), framework="numpy") as f:
        path_tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    loaded = Probe.load(path)
    assert path_tensors["weight"].shape == (3, 8) and path_tensors["weight"].dtype == np.float32
    assert path_tensors["bias"].shape == (3,)
    logits = x @ path_tensors["weight"].T + path_tensors["bias"]
    np.testing.assert_array_equal(loaded.logits(x), logits)
    assert loaded.classes == (2, 0, 1)
    assert (loaded.predict(x) == y).mean() > 0.9  # rows in the declared class order


def test_an_mlp_probe_holds_its_four_tensors() -> None:
    x, y = _data({0: 15, 1: 15})
    probe = Probe.from_bytes(train_probe(x, y, [0, 1], "mlp", 0).to_bytes())
    t = probe.tensors
    assert {k: v.shape for k, v in t.items()} == {
        "w1": (probe_module.MLP_HIDDEN, 8),
        "b1": (probe_module.MLP_HIDDEN,),
        "w2": (2, probe_module.MLP_HIDDEN),
        "b2": (2,),
    }
    hidden = np.maximum(x @ t["w1"].T + t["b1"], 0)
    np.testing.assert_allclose(probe.logits(x), hidden @ t["w2"].T + t["b2"], rtol=1e-6)
    with pytest.raises(ValueError, match="probe kind 'svm'"):
        train_probe(x, y, [0, 1], "svm", 0)


def test_folds_shrink_to_a_class_of_five_and_hold_every_image_out_once() -> None:
    y = np.array([0] * 30 + [1] * 5 + [2] * 12)
    assert fold_count(y, 10) == 5
    assert fold_count(np.array([0, 0, 0, 1]), 3) == 2  # at least 2
    assert fold_count(y, 3) == 3
    fold = stratified_folds(y, 5, seed=1)
    for f in range(5):
        assert (fold[y == 1] == f).sum() == 1  # one image of the five in each fold
        assert (fold[y == 0] == f).sum() == 6
    np.testing.assert_array_equal(fold, stratified_folds(y, 5, seed=1))
    assert not np.array_equal(fold, stratified_folds(y, 5, seed=2))


def test_cross_validation_with_a_class_of_five_never_trains_on_held_out_images(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    x, y = _data({0: 30, 1: 5, 2: 12})
    synthetic = Extra(x[:4] + 0.01, np.full(4, 1), np.full(4, -1))
    copies = Extra(x[30:35].copy(), np.full(5, 1), np.arange(30, 35))  # one per minority image
    extra = Extra(
        np.concatenate([synthetic.x, copies.x]),
        np.concatenate([synthetic.y, copies.y]),
        np.concatenate([synthetic.origin, copies.origin]),
    )
    seen: list[np.ndarray] = []
    real = probe_module.train_probe

    def recording(tx: np.ndarray, ty: np.ndarray, *args: Any, **kwargs: Any) -> Probe:
        seen.append(tx)
        return real(tx, ty, *args, **kwargs)

    monkeypatch.setattr(probe_module, "train_probe", recording)
    clusters = class_clusters(x, y, 3, seed=0)
    ev = cross_validate(
        x, y, extra, [0, 1, 2], kind="linear", folds=10, seed=0, clusters=clusters, minority=[1]
    )
    assert len(seen) == 5  # the class of five sets the folds
    fold = stratified_folds(y, 5, 0)
    for f, trained in enumerate(seen):
        held = x[fold == f]
        rows = {r.tobytes() for r in trained}
        assert not any(h.tobytes() in rows for h in held), "a held-out image was trained on"
        assert all(s.tobytes() in rows for s in synthetic.x), "synthetic images train every fold"
        assert len(trained) == (fold != f).sum() + 4 + 4  # 4 of the 5 copies: theirs are in
    assert set(ev.per_class_error) == {0, 1, 2}
    assert [len(v) for v in ev.per_cluster_error.values()] == [3, 3, 3]
    assert 0.0 <= ev.minority_recall <= 1.0 and len(ev.predicted) == len(y)


def test_metrics_of_known_predictions() -> None:
    y = np.array([0, 0, 0, 0, 1, 1])
    predicted = np.array([0, 0, 1, 1, 1, 1])
    own = np.array([0.9, 0.8, 0.4, 0.2, 0.7, 0.7])
    clusters = np.array([0, 0, 1, 1, 0, 0])
    ev = evaluation(y, predicted, own, own - 0.5, clusters, minority=[1])
    assert ev.error == pytest.approx(2 / 6)
    assert ev.per_class_error == {0: 0.5, 1: 0.0}
    assert ev.per_cluster_error == {0: [0.0, 1.0], 1: [0.0]}  # class 0's errors: one cluster
    assert ev.macro_error == pytest.approx(0.25)
    assert ev.minority_recall == 1.0
    # f1: class 0 tp 2 fp 0 fn 2 -> 2/3; class 1 tp 2 fp 2 fn 0 -> 2/3
    assert ev.macro_f1 == pytest.approx(2 / 3)
    assert ev.per_class_soft_error == pytest.approx({0: 0.425, 1: 0.3})
    assert ev.per_cluster_soft_error[0] == pytest.approx([0.15, 0.7])


def test_clusters_are_seeded_and_capped_by_the_class_size() -> None:
    x, y = _data({0: 20, 1: 2})
    a = class_clusters(x, y, 3, seed=4)
    np.testing.assert_array_equal(a, class_clusters(x, y, 3, seed=4))
    assert set(a[y == 0]) == {0, 1, 2} and set(a[y == 1]) <= {0, 1}


def _digit() -> Image.Image:
    pixels = np.zeros((8, 8, 3), dtype=np.uint8)
    pixels[1:7, 2] = 255  # an L: not symmetric, so a flip would show
    pixels[6, 2:6] = 255
    return Image.fromarray(pixels)


def test_augmentation_shifts_a_pixel_at_most_and_never_flips() -> None:
    image = _digit()
    base = np.asarray(image, dtype=np.float64)
    flipped = base[:, ::-1]
    for i in range(12):
        copy = np.asarray(augment(image, 0, i), dtype=np.float64)
        shifts = []
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                moved = np.zeros_like(base)
                h, w = base.shape[:2]
                moved[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = base[
                    max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
                ]
                shifts.append(np.abs(copy - moved).mean())
        assert min(shifts) < 3 * probe_module.AUGMENT_NOISE  # noise only, after some shift
        assert np.abs(copy - flipped).mean() > 2 * min(shifts)
    assert np.array_equal(np.asarray(augment(image, 0, 3)), np.asarray(augment(image, 0, 3)))


def test_oversampling_copies_the_minority_images_to_about_the_largest_count() -> None:
    y = np.array([0] * 12 + [1] * 3)
    images = {i: _digit() for i in range(12, 15)}
    calls: list[int] = []

    def encode(batch: list[Any]) -> np.ndarray:
        calls.append(len(batch))
        return np.ones((len(batch), 4), dtype=np.float32)

    extra = oversampled(images, y, [1], encode, seed=0)
    assert extra is not None and calls == [9]  # 3 images x (12 / 3 - 1) copies, one call
    assert sorted(set(extra.origin.tolist())) == [12, 13, 14] and set(extra.y.tolist()) == {1}
    assert oversampled(images, y, [], encode, seed=0) is None
