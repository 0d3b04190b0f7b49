"""A small probe classifier on CLIP image embeddings (or grey pixels), cross-validated on the
real images.

Closed-loop balancing (`balance.strategy: feedback`) trains one each round, on the real images
plus the synthetic ones accepted so far, and asks where it errs on real images it did not
train on. Everything is deterministic on the CPU: full-batch L-BFGS from a seeded start in one
torch thread, folds and k-means from the seed, so a resumed build trains the same probes.

A probe file is safetensors with tensors `weight` [C, D], `bias` [C] (linear) or `w1` [H, D],
`b1` [H], `w2` [C, H], `b2` [C] (mlp: `relu(x @ w1.T + b1) @ w2.T + b2`), float32, and
metadata `kind`, `classes` (JSON list of class ids in row order), `embedding` (the CLIP
model, or `pixels-SxS`: `pixel_features`) and `normalise` (`l2`): `logits = x @ weight.T + bias`
for an L2-normalised x.
"""

from __future__ import annotations

import contextlib
import json
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PROBE_KINDS = ("linear", "mlp")
MLP_HIDDEN = 64
L2 = 1e-4  # weight decay on the mean cross-entropy: keeps separable classes finite
LBFGS_STEPS = 200
AUGMENT_NOISE = 8.0  # grey levels (of 255): the oversampling baseline's pixel noise


# -- what a probe reads --------------------------------------------------------------------


def pixel_name(size: int) -> str:
    """The `embedding` a pixel probe's file records."""
    return f"pixels-{size}x{size}"


def pixel_features(images: Sequence[Any], size: int) -> np.ndarray:
    """(n, size * size) float32 features of PIL images: the mean of the colour channels in
    [0, 1], averaged over boxes down to `size` x `size` (PIL's BOX filter), L2-normalised
    (an all-black image stays zero): a pixel classifier's view of the images."""
    from PIL import Image

    out = np.zeros((len(images), size * size), dtype=np.float32)
    for i, image in enumerate(images):
        rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        grey = Image.fromarray(rgb.mean(axis=2), mode="F")
        small = np.asarray(grey.resize((size, size), Image.Resampling.BOX), dtype=np.float32)
        norm = float(np.linalg.norm(small))
        out[i] = small.reshape(-1) / norm if norm > 0 else small.reshape(-1)
    return out


# -- the probe -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """A trained probe: its tensors (float32, by name) and what its rows mean."""

    kind: str
    classes: tuple[int, ...]
    tensors: dict[str, np.ndarray]
    embedding: str = ""

    def logits(self, x: np.ndarray) -> np.ndarray:
        """(n, C) logits of L2-normalised embeddings `x` (n, D)."""
        t = self.tensors
        x = np.asarray(x, dtype=np.float32)
        if self.kind == "linear":
            return np.asarray(x @ t["weight"].T + t["bias"])
        hidden = np.maximum(x @ t["w1"].T + t["b1"], 0.0)
        return np.asarray(hidden @ t["w2"].T + t["b2"])

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The class id each embedding is given."""
        return np.asarray(self.classes)[np.argmax(self.logits(x), axis=1)]

    def to_bytes(self) -> bytes:
        """The safetensors file, byte for byte the same for the same probe (sorted header)."""
        metadata = {
            "classes": json.dumps(list(self.classes)),
            "embedding": self.embedding,
            "kind": self.kind,
            "normalise": "l2",
        }
        return _safetensors(self.tensors, metadata)

    @classmethod
    def from_bytes(cls, data: bytes) -> Probe:
        from safetensors.numpy import load

        n = struct.unpack("<Q", data[:8])[0]
        meta = json.loads(data[8 : 8 + n]).get("__metadata__", {})
        tensors = {k: np.asarray(v, dtype=np.float32) for k, v in load(data).items()}
        classes = tuple(int(c) for c in json.loads(meta["classes"]))
        return cls(meta["kind"], classes, tensors, meta.get("embedding", ""))

    @classmethod
    def load(cls, path: Path) -> Probe:
        return cls.from_bytes(path.read_bytes())


def _safetensors(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    """safetensors bytes with the header's keys in sorted order (the library's own writer
    orders metadata differently from run to run)."""
    header: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name], dtype="<f4")
        blob = array.tobytes()
        header[name] = {
            "dtype": "F32",
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Torch and the BLAS libraries in one thread: float rounding independent of the machine's
    core count; the caller's thread settings restored after."""
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(before)


def _fit(params: list[Any], loss_of: Callable[[], Any]) -> None:
    import torch

    optimiser = torch.optim.LBFGS(
        params,
        lr=1.0,
        max_iter=LBFGS_STEPS,
        history_size=20,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Any:
        optimiser.zero_grad()
        loss = loss_of()
        loss.backward()
        return loss

    optimiser.step(closure)


def train_probe(
    x: np.ndarray,
    y: np.ndarray,
    classes: Sequence[int],
    kind: str = "linear",
    seed: int = 0,
    embedding: str = "",
) -> Probe:
    """A probe over `classes` (row order) trained on embeddings `x` (n, D) with labels `y`
    (class ids): mean cross-entropy plus a small weight decay, full-batch L-BFGS."""
    import torch

    if kind not in PROBE_KINDS:
        raise ValueError(f"probe kind {kind!r}: one of {', '.join(PROBE_KINDS)}")
    row = {c: i for i, c in enumerate(classes)}
    with _one_thread():
        xt = torch.as_tensor(np.asarray(x, dtype=np.float64))
        yt = torch.as_tensor([row[int(c)] for c in y], dtype=torch.long)
        n_classes, dim = len(classes), xt.shape[1]
        gen = torch.Generator().manual_seed(seed)
        if kind == "linear":
            names = ["weight", "bias"]
            params = [torch.zeros(n_classes, dim, dtype=torch.float64), torch.zeros(n_classes)]
        else:
            names = ["w1", "b1", "w2", "b2"]
            bound1, bound2 = dim**-0.5, MLP_HIDDEN**-0.5
            params = [
                (torch.rand(MLP_HIDDEN, dim, generator=gen, dtype=torch.float64) * 2 - 1) * bound1,
                torch.zeros(MLP_HIDDEN),
                (torch.rand(n_classes, MLP_HIDDEN, generator=gen, dtype=torch.float64) * 2 - 1)
                * bound2,
                torch.zeros(n_classes),
            ]
        params = [p.to(torch.float64).requires_grad_(True) for p in params]

        def loss_of() -> Any:
            logits = _forward(kind, params, xt)
            decay = sum((p * p).sum() for n, p in zip(names, params, strict=True) if "b" not in n)
            return torch.nn.functional.cross_entropy(logits, yt) + 0.5 * L2 * decay

        _fit(params, loss_of)
        tensors = {
            n: p.detach().numpy().astype(np.float32) for n, p in zip(names, params, strict=True)
        }
    return Probe(kind, tuple(int(c) for c in classes), tensors, embedding)


def _forward(kind: str, params: list[Any], x: Any) -> Any:
    if kind == "linear":
        return x @ params[0].T + params[1]
    return (x @ params[0].T + params[1]).clamp(min=0.0) @ params[2].T + params[3]


# -- cross-validation ----------------------------------------------------------------------


def fold_count(y: np.ndarray, folds: int) -> int:
    """`folds`, reduced to the smallest class's image count when a class has fewer (at
    least 2)."""
    counts = np.unique(np.asarray(y), return_counts=True)[1]
    return max(2, min(folds, int(counts.min()) if len(counts) else folds))


def stratified_folds(y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """The fold of each sample: every class's samples shuffled (seeded, per class) and dealt
    round the folds, so each fold holds a class's share of every class."""
    y = np.asarray(y)
    out = np.zeros(len(y), dtype=np.int64)
    for c in np.unique(y):
        where = np.flatnonzero(y == c)
        order = np.random.default_rng([seed, int(c)]).permutation(len(where))
        out[where[order]] = np.arange(len(where)) % folds
    return out


def class_clusters(x: np.ndarray, y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Each sample's k-means cluster within its class (seeded; k capped by the class size)."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    y = np.asarray(y)
    out = np.zeros(len(y), dtype=np.int64)
    for c in np.unique(y):
        where = np.flatnonzero(y == c)
        n = min(k, len(where))
        if n <= 1:
            continue
        with threadpool_limits(limits=1):
            km = KMeans(n_clusters=n, random_state=seed, n_init=4).fit(
                np.asarray(x[where], dtype=np.float64)
            )
        out[where] = km.labels_
    return out


@dataclass(frozen=True)
class Extra:
    """Training embeddings beside the real ones: synthetic images (`origin` -1, in every
    fold's training set) or augmented copies of a real image (`origin` its index: in a fold's
    training set only when that image is)."""

    x: np.ndarray
    y: np.ndarray
    origin: np.ndarray

    @staticmethod
    def none(dim: int) -> Extra:
        return Extra(np.zeros((0, dim), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64))

    def synthetic(self) -> int:
        return int((self.origin < 0).sum())


@dataclass(frozen=True)
class Evaluation:
    """Out-of-fold results on the real images: each one's predicted class, its own class's
    probability and margin (that probability less the best other class's), and the metrics
    they give. A `soft` error is 1 - the true class's probability, averaged: it still ranks
    classes when the probe classifies every held-out image right."""

    predicted: np.ndarray
    own: np.ndarray
    margin: np.ndarray
    error: float
    macro_error: float
    macro_f1: float
    minority_recall: float
    per_class_error: dict[int, float]
    per_cluster_error: dict[int, list[float]]
    macro_soft_error: float
    per_class_soft_error: dict[int, float]
    per_cluster_soft_error: dict[int, list[float]]


def cross_validate(
    x: np.ndarray,
    y: np.ndarray,
    extra: Extra,
    classes: Sequence[int],
    *,
    kind: str,
    folds: int,
    seed: int,
    clusters: np.ndarray,
    minority: Sequence[int],
) -> Evaluation:
    """Stratified k-fold over the real images (`x`, `y`): each fold's probe trains on the
    other folds' real images and `extra` (see `Extra`), and predicts the held-out fold."""
    y = np.asarray(y)
    k = fold_count(y, folds)
    fold = stratified_folds(y, k, seed)
    probs = np.zeros((len(y), len(classes)))
    for f in range(k):
        train = fold != f
        keep = (extra.origin < 0) | np.isin(extra.origin, np.flatnonzero(train))
        probe = train_probe(
            np.concatenate([x[train], extra.x[keep]]),
            np.concatenate([y[train], extra.y[keep]]),
            classes,
            kind,
            seed,
        )
        probs[~train] = _softmax(probe.logits(x[~train]))
    row = {c: i for i, c in enumerate(classes)}
    rows = np.asarray([row[int(c)] for c in y], dtype=np.int64)
    own = probs[np.arange(len(y)), rows]
    others = probs.copy()
    others[np.arange(len(y)), rows] = -np.inf
    predicted = np.asarray(classes)[np.argmax(probs, axis=1)]
    return evaluation(y, predicted, own, own - others.max(axis=1), clusters, minority)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def _by_class(
    values: np.ndarray, y: np.ndarray, clusters: np.ndarray, present: list[int]
) -> tuple[dict[int, float], dict[int, list[float]]]:
    """Mean of `values` per class, and per k-means cluster within each class."""
    per_class = {c: float(values[y == c].mean()) for c in present}
    per_cluster = {
        c: [
            float(values[(y == c) & (clusters == k)].mean())
            for k in (int(v) for v in np.unique(clusters[y == c]))
        ]
        for c in present
    }
    return per_class, per_cluster


def _macro_f1(y: np.ndarray, predicted: np.ndarray, present: list[int]) -> float:
    f1 = []
    for c in present:
        tp = float(((predicted == c) & (y == c)).sum())
        fp = float(((predicted == c) & (y != c)).sum())
        fn = float(((predicted != c) & (y == c)).sum())
        f1.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1))


def evaluation(
    y: np.ndarray,
    predicted: np.ndarray,
    own: np.ndarray,
    margin: np.ndarray,
    clusters: np.ndarray,
    minority: Sequence[int],
) -> Evaluation:
    """The metrics of out-of-fold predictions (classes without a real image left out);
    `minority_recall` is the mean recall of the `minority` classes (all, if none)."""
    y = np.asarray(y)
    present = [int(c) for c in np.unique(y)]
    wrong = (predicted != y).astype(np.float64)
    per_class, per_cluster = _by_class(wrong, y, clusters, present)
    soft_class, soft_cluster = _by_class(1.0 - own, y, clusters, present)
    short = [c for c in minority if c in per_class] or present
    return Evaluation(
        predicted=predicted,
        own=own,
        margin=margin,
        error=float(wrong.mean()),
        macro_error=float(np.mean(list(per_class.values()))),
        macro_f1=_macro_f1(y, predicted, present),
        minority_recall=float(np.mean([1.0 - per_class[c] for c in short])),
        per_class_error=per_class,
        per_cluster_error=per_cluster,
        macro_soft_error=float(np.mean(list(soft_class.values()))),
        per_class_soft_error=soft_class,
        per_cluster_soft_error=soft_cluster,
    )


# -- the oversampling baseline -------------------------------------------------------------


def augment(image: Any, seed: int, index: int) -> Any:
    """A copy of `image` moved by up to a pixel each way (edges black) with small pixel
    noise, seeded by (seed, index); never flipped (a flipped digit is another digit)."""
    from PIL import Image

    rng = np.random.default_rng([seed, index])
    dx, dy = (int(v) for v in rng.integers(-1, 2, size=2))
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    moved = np.zeros_like(pixels)
    h, w = pixels.shape[:2]
    moved[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = pixels[
        max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    noisy = moved + rng.normal(0.0, AUGMENT_NOISE, size=moved.shape)
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))


def oversampled(
    images: dict[int, Any],
    y: np.ndarray,
    minority: Sequence[int],
    encode: Callable[[list[Any]], np.ndarray],
    seed: int,
) -> Extra | None:
    """Augmented copies of the minority classes' real images (`images`: real index -> decoded
    image), as many per image as bring its class to about the largest class's count (None:
    no class needs any)."""
    y = np.asarray(y)
    largest = int(np.unique(y, return_counts=True)[1].max())
    origins: list[int] = []
    copies: list[Any] = []
    for c in minority:
        where = [int(i) for i in np.flatnonzero(y == c)]
        if not where:
            continue
        per_image = max(0, round(largest / len(where)) - 1)
        for i in where:
            for j in range(per_image):
                copies.append(augment(images[i], seed, i * 100_003 + j))
                origins.append(i)
    if not copies:
        return None
    x = np.asarray(encode(copies), dtype=np.float32)
    return Extra(x, y[np.asarray(origins)], np.asarray(origins, dtype=np.int64))


BASELINE_METHOD = (
    "the same probe on the real images, each minority class's real images repeated as "
    "augmented copies (a pixel's shift each way at most, pixel noise, no flips; embedded "
    "with the same CLIP model) to about the largest class's count, copies of held-out "
    "images left out of each fold"
)
