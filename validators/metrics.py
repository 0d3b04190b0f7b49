"""Distribution metrics of a synthetic set against a reference set, on stored embeddings.

Every function takes two float arrays of shape (n, dim) — embeddings already computed once
per build (the image-embedding score column, found by its role; the reference cache) —
and runs no model.

- Fréchet distance (the formula behind FID, on whatever embedding is given) and KID (the
  unbiased squared MMD with the cubic polynomial kernel of Bińkowski et al. 2018).
- Precision / recall / density / coverage (Naeem et al. 2020, k nearest neighbours in
  Euclidean distance; the same definitions as the `prdc` package, which the tests compare).
- Diversity: the Vendi score (Friedman & Dieng 2023; the exponential of the entropy of the
  cosine-similarity kernel's eigenvalues — an "effective number of distinct samples") and the
  mean pairwise cosine distance.

Sets too small for a metric give None for it (never NaN), so JSON and gates stay strict.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from synthgen.schemas.recipe import METRIC_NAMES as RECIPE_METRIC_NAMES

# The names a recipe's `validation.metrics` may gate: one list, in the recipe schema.
METRIC_NAMES = RECIPE_METRIC_NAMES

DEFAULT_K = 5
MAX_PAIRWISE = 4096  # prdc and Vendi cost O(n^2): larger sets are subsampled, deterministically


def _as2d(x: Any) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D array of embeddings, got shape {arr.shape}")
    return arr


def _subsample(x: np.ndarray, limit: int = MAX_PAIRWISE, seed: int = 0) -> np.ndarray:
    if len(x) <= limit:
        return x
    idx = np.sort(np.random.default_rng(seed).choice(len(x), limit, replace=False))
    return x[idx]


def _sqrtm_psd_product(a: np.ndarray, b: np.ndarray) -> float:
    """trace(sqrt(a @ b)) for symmetric PSD a and b, via sqrt(a) b sqrt(a) (symmetric)."""
    w, v = np.linalg.eigh(a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root_a @ b @ root_a
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(eig, 0, None)).sum())


def frechet_distance(x: Any, y: Any) -> float | None:
    """||mu_x - mu_y||^2 + tr(S_x + S_y - 2 sqrt(S_x S_y)); None with fewer than 2 each."""
    x, y = _as2d(x), _as2d(y)
    if len(x) < 2 or len(y) < 2:
        return None
    mu = x.mean(0) - y.mean(0)
    sx, sy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    value = float(mu @ mu + np.trace(sx) + np.trace(sy) - 2 * _sqrtm_psd_product(sx, sy))
    return max(value, 0.0)


def kid(x: Any, y: Any) -> float | None:
    """Kernel Inception Distance on the given embeddings: unbiased MMD^2 with
    k(a, b) = (a.b / dim + 1)^3. Can be slightly negative for matching sets; None with
    fewer than 2 samples in either set."""
    x, y = _subsample(_as2d(x)), _subsample(_as2d(y))
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        return None
    d = x.shape[1]
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    value = (
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
        - 2 * kxy.mean()
    )
    return float(value)


def _pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.clip(sq, 0, None))


def _kth_neighbour(x: np.ndarray, k: int) -> np.ndarray:
    """Distance from each point to its k-th nearest other point (itself excluded)."""
    d = _pairwise(x, x)
    return np.partition(d, k, axis=1)[:, k]  # column 0 is the point itself (distance 0)


def prdc(real: Any, fake: Any, k: int = DEFAULT_K) -> dict[str, float | None]:
    """Precision, recall, density and coverage (Naeem et al. 2020) with k nearest neighbours.

    Each set needs more than k points; otherwise every value is None.
    """
    real, fake = _subsample(_as2d(real)), _subsample(_as2d(fake))
    if len(real) <= k or len(fake) <= k:
        return {"precision": None, "recall": None, "density": None, "coverage": None}
    real_r = _kth_neighbour(real, k)
    fake_r = _kth_neighbour(fake, k)
    d = _pairwise(real, fake)  # (real, fake)
    inside_real = d < real_r[:, None]
    return {
        "precision": float(inside_real.any(axis=0).mean()),
        "recall": float((d < fake_r[None, :]).any(axis=1).mean()),
        "density": float(inside_real.sum(axis=0).mean() / k),
        "coverage": float((d.min(axis=1) < real_r).mean()),
    }


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)


def vendi_score(x: Any) -> float | None:
    """exp(entropy of the eigenvalues of K/n), K the cosine-similarity matrix: between 1
    (all samples the same) and n (all orthogonal). None for an empty set."""
    x = _subsample(_as2d(x))
    if len(x) == 0:
        return None
    u = _unit(x)
    # The eigenvalues of u u^T / n are those of u^T u / n (dim x dim): cheaper when n > dim.
    gram = (u.T @ u if len(u) > u.shape[1] else u @ u.T) / len(u)
    eig = np.clip(np.linalg.eigvalsh((gram + gram.T) / 2), 0, None)
    eig = eig[eig > 1e-12]
    return float(np.exp(-(eig * np.log(eig)).sum()))


def mean_pairwise_distance(x: Any) -> float | None:
    """Mean cosine distance over distinct pairs; None with fewer than 2 samples."""
    x = _subsample(_as2d(x))
    n = len(x)
    if n < 2:
        return None
    s = _unit(x).sum(0)
    # sum over i != j of cos(i, j) = |sum u|^2 - n  (each u has unit length)
    mean_cos = (float(s @ s) - n) / (n * (n - 1))
    return 1.0 - mean_cos


def distribution_metrics(synthetic: Any, reference: Any, k: int = DEFAULT_K) -> dict[str, Any]:
    """Every metric of METRIC_NAMES for one synthetic set against one reference set,
    with the set sizes (`n_synthetic`, `n_reference`)."""
    x, y = _as2d(synthetic), _as2d(reference)
    out: dict[str, Any] = {"n_synthetic": len(x), "n_reference": len(y)}
    out["frechet_distance"] = frechet_distance(x, y)
    out["kid"] = kid(x, y)
    out.update(prdc(y, x, k))
    out["vendi"] = vendi_score(x) if len(x) else None
    out["vendi_reference"] = vendi_score(y) if len(y) else None
    out["mean_pairwise_distance"] = mean_pairwise_distance(x)
    out["mean_pairwise_distance_reference"] = mean_pairwise_distance(y)
    return out


def corpus_metrics(
    synthetic: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], k: int = DEFAULT_K
) -> dict[str, Any]:
    """{"overall": metrics, "per_class": {class: metrics}} over the classes of `synthetic`
    (class name -> embeddings). A class without reference images gets only its sizes and
    diversity figures."""
    dim = next((v.shape[1] for v in (*synthetic.values(), *reference.values()) if v.ndim == 2), 1)
    empty = np.zeros((0, dim))
    per_class = {}
    for name in synthetic:
        per_class[name] = distribution_metrics(synthetic[name], reference.get(name, empty), k)
    all_x = np.concatenate([_as2d(v) for v in synthetic.values()] or [empty])
    all_y = np.concatenate([_as2d(v) for v in reference.values()] or [empty])
    return {"k": k, "overall": distribution_metrics(all_x, all_y, k), "per_class": per_class}


def build_embeddings(
    out: Any, shards: list[int], column: str, status: str | None = "accepted"
) -> dict[str, np.ndarray]:
    """Class name -> the stored embeddings of a build's samples (accepted only by default),
    read shard by shard, one column at a time: no model runs."""
    import pyarrow.parquet as pq

    from synthgen.schemas.manifest import shard_files

    parts: dict[str, list[np.ndarray]] = {}
    for shard in shards:
        table = pq.read_table(
            out / shard_files(shard).parquet, columns=["class_name", "status", column]
        )
        vectors = table.column(column).combine_chunks()
        if vectors.null_count == len(vectors):
            continue
        keep = ~np.asarray(vectors.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        if status is not None:
            states = np.asarray(table.column("status").to_pylist(), dtype=object)
            keep &= states == status
        names = np.asarray(table.column("class_name").to_pylist(), dtype=object)
        matrix = _rows_of(vectors)
        for name in dict.fromkeys(names[keep]):  # classes in the order they first appear
            parts.setdefault(name, []).append(matrix[keep & (names == name)])
    return {name: np.concatenate(v) for name, v in parts.items()}


def build_images(
    out: Any, shards: list[int], status: str | None = "accepted"
) -> dict[str, list[Any]]:
    """Class name -> the decoded images (PIL, RGB) of a build's samples (accepted only by
    default), shard by shard in each Parquet table's row order: what a pixel probe reads."""
    import pyarrow.parquet as pq

    from synthgen.schemas.manifest import shard_files
    from synthgen.schemas.media import WRITTEN_IMAGE_EXTENSIONS
    from synthgen.storage.images import decode_image
    from synthgen.storage.tars import iter_tar_samples

    parts: dict[str, list[Any]] = {}
    for shard in shards:
        files = shard_files(shard)
        table = pq.read_table(out / files.parquet, columns=["key", "class_name", "status"])
        columns = (table.column(c).to_pylist() for c in ("key", "class_name", "status"))
        rows = [(k, n) for k, n, s in zip(*columns, strict=True) if status in (None, s)]
        if not rows:
            continue
        data = {
            sample.key: sample.parts[0][1]
            for sample in iter_tar_samples(out / files.tar, extensions=WRITTEN_IMAGE_EXTENSIONS)
        }
        for key, name in rows:
            parts.setdefault(name, []).append(decode_image(data[key]))
    return parts


def _rows_of(vectors: Any) -> np.ndarray:
    """(N, D) float32 of a list column's rows, in one copy (a null row: NaN, left out by
    the caller; a null inside a row: NaN, as np.asarray makes of None)."""
    import pyarrow as pa

    if pa.types.is_fixed_size_list(vectors.type):
        dim = vectors.type.list_size
        flat = vectors.values.slice(vectors.offset * dim, len(vectors) * dim)
        flat = flat.to_numpy(zero_copy_only=False)
        return np.asarray(flat, dtype=np.float32).reshape(len(vectors), dim)
    rows = [np.full(0, np.nan) if v is None else v for v in vectors.to_pylist()]
    width = max((len(r) for r in rows), default=0)
    return np.asarray(
        [np.full(width, np.nan) if len(r) == 0 else r for r in rows], dtype=np.float32
    )


def gate_values(metrics: Mapping[str, Any], name: str, per_class: bool) -> dict[str, Any]:
    """`overall` and (with `per_class`) `class:<name>` -> the metric's value.

    The overall value is always gated (None, a set too small for it, fails); a class is gated
    where the metric could be computed for it (it has reference images and enough samples)."""
    out = {"overall": metrics["overall"].get(name)}
    if per_class:
        for cls, values in metrics["per_class"].items():
            if values.get(name) is not None:
                out[f"class:{cls}"] = values[name]
    return out


def metrics_info(
    out: Any,
    shards: list[int],
    column: str,
    reference: Any,
    class_names: Mapping[int, str],
    location: str,
    cache: str | None = None,
    k: int = DEFAULT_K,
) -> Any:
    """The manifest's metrics block: accepted samples' stored embeddings against an embedded
    reference set (validators.nearest.ReferenceSet), overall and per class."""
    from synthgen.schemas.manifest import MetricsInfo

    synthetic = build_embeddings(out, shards, column)
    real = {class_names[c]: v for c, v in reference.by_class().items() if c in class_names}
    computed = corpus_metrics(synthetic, real, k)
    from synthgen.schemas.records import public_path

    return MetricsInfo(
        reference=public_path(location),  # published: a local source by its name
        reference_images=len(reference),
        reference_cache=cache,
        embedding_column=column,
        k=k,
        overall=computed["overall"],
        per_class=computed["per_class"],
    )
