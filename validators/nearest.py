"""Reference sets and nearest-neighbour lookups, for the memorization and contamination
checks (`validators.checks.near_copy`).

A reference set (the recipe's `reference:` or `eval_set:`, or a balance source) is embedded
with the recipe's CLIP model and cached as one Parquet file (no pickles), named by a hash of
the source's content, the CLIP weights, the label mapping and the preprocessing (thumbnail
size, pHash shifts, cache layout). The file carries that key and a sha256 of its content (in
its Parquet metadata): every read recomputes the digest, so a file edited after it was made,
or made for another key, is refused (`ReferenceCacheError`) and embedded again, never used.
The file lives in the build (`.synthgen/references/`) and in a cache shared by every build on
the machine (`$SYNTHGEN_CACHE_DIR/references/`, default `~/.cache/synthgen`), written
atomically beside a record of its sha256: a later build with the same key copies it instead
of running the model, and never uses a file whose sha256 differs from its record. Every
sample's nearest reference image is found by cosine similarity of normalised embeddings
(exact, chunked matrix products: deterministic, ties go to the earlier reference), and the
perceptual-hash distance to that image is recorded beside it.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from synthgen.schemas.recipe import NearCopySpec
from synthgen.schemas.records import Sample
from synthgen.schemas.scores import ScoreColumn
from synthgen.storage.atomic import atomic_write, write_bytes_atomic
from synthgen.storage.cache import shared_cache
from synthgen.storage.hashing import file_sha256
from synthgen.storage.host import pin_torch_threads

CACHE_VERSION = 3  # 3: the file carries its key and a digest of its content
CACHE_METADATA = b"synthgen.reference"  # Parquet schema metadata: {"key", "content_sha256"}
THUMB_SIZE = 64
CHUNK = 1024
# A reference image whose perceptual hash (at any 1-pixel shift) is within this many bits of
# a sample's is a perceptual match: it is the sample's nearest image even when another one
# is closer in embedding space (a shifted copy of a small image can embed far from it).
PHASH_MATCH = 4
SHIFTS = tuple((dx, dy) for dy in (-1, 0, 1) for dx in (-1, 0, 1))

# kind -> (score column prefix, check name). `nearest_ref` for the reference, `nearest_eval`
# for the eval set.
KINDS = {"reference": ("nearest_ref", "near_copy"), "eval_set": ("nearest_eval", "contaminated")}


def nearest_columns(kind: str) -> list[ScoreColumn]:
    """The score columns a nearest-reference lookup writes for `kind`."""
    prefix, check = KINDS[kind]
    return [
        ScoreColumn(
            name=f"{prefix}_sim",
            scorer=check,
            minimum=-1.0001,
            maximum=1.0001,
            description=f"cosine similarity of the image embedding to the nearest {kind} image",
        ),
        ScoreColumn(
            name=f"{prefix}_phash_dist",
            scorer=check,
            minimum=0.0,
            maximum=64.0,
            description=f"perceptual-hash distance (bits) to that nearest {kind} image",
        ),
    ]


@dataclass(frozen=True)
class ReferenceSet:
    """Embedded reference images: parallel lists, embeddings unit length (float32)."""

    refs: list[str]
    labels: list[int]
    phashes: list[str]
    embeddings: np.ndarray  # (n, dim) float32
    thumbnails: list[bytes]  # small PNGs for the report's side-by-side pairs
    shifted_phashes: list[list[str]] | None = None  # per image, its phash at each of SHIFTS

    def __len__(self) -> int:
        return len(self.refs)

    @cached_property
    def shifted_hash_ints(self) -> np.ndarray:
        """(n, shifts) uint64 perceptual hashes, converted once per set (every sample's
        lookup reads them)."""
        return _shifted_ints(self)

    def by_class(self) -> dict[int, np.ndarray]:
        labels = np.asarray(self.labels)
        return {int(c): self.embeddings[labels == c] for c in np.unique(labels)}


def shifted_phashes(image: Any) -> list[str]:
    """The perceptual hash of `image` moved by each of SHIFTS (pixels; edges filled black)."""
    from PIL import ImageChops

    from synthgen.validators.scoring import phash

    rgb = image.convert("RGB")
    out = []
    for dx, dy in SHIFTS:
        moved = ImageChops.offset(rgb, dx, dy)
        if dx or dy:
            w, h = rgb.size
            black = (0, 0, 0)
            if dx > 0:
                moved.paste(black, (0, 0, dx, h))
            elif dx < 0:
                moved.paste(black, (w + dx, 0, w, h))
            if dy > 0:
                moved.paste(black, (0, 0, w, dy))
            elif dy < 0:
                moved.paste(black, (0, h + dy, w, h))
        out.append(phash(moved))
    return out


def _thumbnail(image: Any) -> bytes:
    im = image.convert("RGB")
    im.thumbnail((THUMB_SIZE, THUMB_SIZE))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def embed_reference(
    items: Iterable[tuple[str, int, bytes]],
    encode: Callable[[list[Any]], np.ndarray],
    batch: int = 256,
) -> ReferenceSet:
    """(reference, class id, encoded image) items -> a ReferenceSet; `encode` maps decoded
    images to normalised embeddings (the recipe's CLIP, see `clip_encoder`)."""
    from synthgen.storage.images import decode_image
    from synthgen.validators.scoring import phash

    refs: list[str] = []
    labels: list[int] = []
    hashes: list[str] = []
    thumbs: list[bytes] = []
    shifted: list[list[str]] = []
    parts: list[np.ndarray] = []
    pending: list[Any] = []

    def flush() -> None:
        if pending:
            parts.append(np.asarray(encode(pending), dtype=np.float32))
            pending.clear()

    for ref, label, data in items:
        image = decode_image(data)
        refs.append(ref)
        labels.append(int(label))
        hashes.append(phash(image))
        thumbs.append(_thumbnail(image))
        shifted.append(shifted_phashes(image))
        pending.append(image)
        if len(pending) >= batch:
            flush()
    flush()
    if not refs:
        raise ValueError("the reference set is empty")
    return ReferenceSet(refs, labels, hashes, np.concatenate(parts), thumbs, shifted)


def clip_encoder(
    clip: Any, device: str = "cpu", cpu_threads: int = 1, models: Any = None
) -> Callable[..., Any]:
    """Decoded images -> normalised embeddings with the scorers' own CLIP (a ClipRef), in the
    same fixed-shape batches the `clip_embedding` scorer uses: equal images, equal vectors.
    `models`: a WorkerModels the caller keeps, so its later encoders share one loaded copy."""
    from synthgen.validators.clip_model import encode_images
    from synthgen.validators.scorers.base import WorkerModels

    if models is None:
        models = WorkerModels(device, cpu_threads)
    bundle = clip.load(models)

    def encode(images: list[Any]) -> np.ndarray:
        pin_torch_threads(device, cpu_threads)  # the calling thread's count (storage.host)
        return np.asarray(encode_images(bundle, images, clip.compute_batch).numpy())

    return encode


# How reference images are turned into a cached set, beyond the CLIP model: part of the key.
PREPROCESSING = {"thumbnail": THUMB_SIZE, "phash_shifts": SHIFTS, "phash": "imagehash.phash"}


def cache_key(source_sha256: str, clip_sha256: str, labels: dict[str, Any]) -> str:
    """The cache name of an embedded set: source content, CLIP weights, the label mapping
    (and any encoder setting the caller adds to it), the preprocessing and the layout."""
    blob = json.dumps(
        {
            "v": CACHE_VERSION,
            "source": source_sha256,
            "clip": clip_sha256,
            "labels": labels,
            "preprocessing": PREPROCESSING,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


class ReferenceCacheError(ValueError):
    """A reference cache file that is not what its name promises: unreadable, without its
    key and digest, made for another key, or edited since it was made."""


def content_sha256(ref: ReferenceSet, key: str) -> str:
    """The digest a cache file of `ref` made for `key` carries: every column, in order."""
    h = hashlib.sha256()
    head = {
        "key": key,
        "refs": ref.refs,
        "labels": [int(x) for x in ref.labels],
        "phashes": ref.phashes,
        "phash_shifted": ref.shifted_phashes or [[p] for p in ref.phashes],
        "shape": list(ref.embeddings.shape),
    }
    h.update(json.dumps(head, sort_keys=True).encode())
    h.update(np.ascontiguousarray(ref.embeddings, dtype="<f4").tobytes())
    for thumb in ref.thumbnails:
        h.update(len(thumb).to_bytes(8, "big"))
        h.update(thumb)
    return h.hexdigest()


def write_reference(path: Path, ref: ReferenceSet, key: str) -> None:
    """The cache file: one Parquet (Arrow) table carrying `key` and its content digest,
    written atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    dim = ref.embeddings.shape[1]
    flat = pa.array(ref.embeddings.astype(np.float32).reshape(-1), pa.float32())
    table = pa.table(
        {
            "ref": pa.array(ref.refs, pa.string()),
            "label": pa.array(ref.labels, pa.int32()),
            "phash": pa.array(ref.phashes, pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(flat, dim),
            "thumbnail": pa.array(ref.thumbnails, pa.binary()),
            "phash_shifted": pa.array(
                ref.shifted_phashes or [[h] for h in ref.phashes], pa.list_(pa.string())
            ),
        }
    )
    stamp = {"key": key, "content_sha256": content_sha256(ref, key)}
    table = table.replace_schema_metadata({CACHE_METADATA: json.dumps(stamp).encode()})
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        pq.write_table(table, f)


def read_reference(path: Path, key: str | None = None) -> ReferenceSet:
    """A cache file's reference set, after checking it: its content digest must match the
    one it carries, and (given `key`) it must have been made for `key`. Raises
    ReferenceCacheError naming the file otherwise."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
        stamp = json.loads((table.schema.metadata or {})[CACHE_METADATA])
        made_for, digest = str(stamp["key"]), str(stamp["content_sha256"])
        emb = table.column("embedding").combine_chunks()
        dim = emb.type.list_size
        values = np.asarray(emb.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
        ref = ReferenceSet(
            refs=table.column("ref").to_pylist(),
            labels=table.column("label").to_pylist(),
            phashes=table.column("phash").to_pylist(),
            embeddings=values.reshape(-1, dim),
            thumbnails=table.column("thumbnail").to_pylist(),
            shifted_phashes=table.column("phash_shifted").to_pylist(),
        )
    except (OSError, pa.ArrowException, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ReferenceCacheError(
            f"{path}: not a reference cache file of this version ({type(exc).__name__}: {exc})"
        ) from None
    if key is not None and made_for != key:
        raise ReferenceCacheError(f"{path}: made for another key ({made_for[:12]}…)")
    if content_sha256(ref, made_for) != digest:
        raise ReferenceCacheError(f"{path}: its content differs from the digest it was made with")
    return ref


def _valid(path: Path, key: str) -> bool:
    """Whether `path` is a cache file for `key`, unchanged since it was made (logged if not)."""
    import logging

    try:
        read_reference(path, key)
    except ReferenceCacheError as exc:
        logging.getLogger(__name__).warning("%s; not used (the set is embedded again)", exc)
        return False
    return True


def shared_cache_dir() -> Path | None:
    """The cache shared across builds: `references/` under the cache root
    (`synthgen.storage.cache`); None when `SYNTHGEN_CACHE_DIR=off` turns it off."""
    return shared_cache("references")


def _from_shared(shared: Path, key: str, dest: Path) -> bool:
    """Copy the shared cache entry of `key` to `dest` if its sha256 matches its record."""
    import logging
    import shutil

    data, record = shared / f"{key}.parquet", shared / f"{key}.json"
    try:
        expected = json.loads(record.read_text(encoding="utf-8"))["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    try:
        if file_sha256(data) != expected:
            logging.getLogger(__name__).warning(
                "%s: sha256 differs from its record; not used (the set is embedded again)", data
            )
            return False
        dest.parent.mkdir(parents=True, exist_ok=True)
        with data.open("rb") as f, atomic_write(dest) as g:
            shutil.copyfileobj(f, g)
    except OSError:
        return False
    if file_sha256(dest) != expected or not _valid(dest, key):  # changed, or not its content
        dest.unlink(missing_ok=True)
        return False
    return True


def _to_shared(shared: Path, key: str, path: Path) -> None:
    """Publish a build's cache file to the shared cache: data first, then its record."""
    import logging
    import shutil

    try:
        shared.mkdir(parents=True, exist_ok=True)
        digest = file_sha256(path)
        with path.open("rb") as f, atomic_write(shared / f"{key}.parquet") as g:
            shutil.copyfileobj(f, g)
        record = {"sha256": digest, "key": key, "cache_version": CACHE_VERSION}
        write_bytes_atomic(shared / f"{key}.json", json.dumps(record, sort_keys=True).encode())
    except OSError as exc:  # a read-only or full cache never fails a build
        logging.getLogger(__name__).warning(
            "shared reference cache %s not written: %s", shared, exc
        )


def cached_reference(
    cache_dir: Path, kind: str, key: str, make: Callable[[], ReferenceSet]
) -> Path:
    """The cache file for `key` under `cache_dir` (the build's): kept when it holds `key`'s
    set unchanged, else copied from the shared cache (sha256 and content checked), else made
    with `make()` and shared. A file that fails its check is replaced, never used."""
    path = cache_dir / f"{kind}-{key[:24]}.parquet"
    if path.is_file() and _valid(path, key):
        return path
    shared = shared_cache_dir()
    if shared is not None and _from_shared(shared, key, path):
        return path
    write_reference(path, make(), key)
    if shared is not None:
        _to_shared(shared, key, path)
    return path


@dataclass(frozen=True)
class Nearest:
    index: int
    ref: str
    similarity: float
    phash_distance: int


def _hash_ints(hashes: Sequence[str]) -> np.ndarray:
    """64-bit perceptual hashes as integers; a clip's fingerprint (one hash per sampled
    frame, concatenated) counts by its first frame's."""
    return np.array([int(h[:16], 16) if h else 0 for h in hashes], dtype=np.uint64)


def _shifted_ints(ref: ReferenceSet) -> np.ndarray:
    """(n, shifts) uint64 perceptual hashes of the reference images (unshifted only if the
    set carries no shifted hashes)."""
    rows = ref.shifted_phashes or [[h] for h in ref.phashes]
    width = max(len(r) for r in rows)
    return np.stack([_hash_ints(list(r) + [r[0]] * (width - len(r))) for r in rows])


def nearest(embeddings: Any, phashes: Sequence[str], ref: ReferenceSet) -> list[Nearest]:
    """Each row's nearest reference image (rows normalised here).

    The nearest is the image with the smallest perceptual-hash distance when that distance
    (over 1-pixel shifts of the reference image) is at most PHASH_MATCH, else the most
    cosine-similar one; the similarity and the (shift-tolerant) hash distance of that image
    are returned. Ties go to the earlier reference image."""
    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        return []
    x = x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)
    ref_hashes = ref.shifted_hash_ints
    mine = _hash_ints(phashes)
    out: list[Nearest] = []
    for start in range(0, len(x), CHUNK):
        sims = x[start : start + CHUNK] @ ref.embeddings.T
        best = sims.argmax(axis=1)
        for i, j in enumerate(best.tolist()):
            dists = np.bitwise_count(ref_hashes ^ mine[start + i]).min(axis=1)
            closest = int(dists.argmin())
            if int(dists[closest]) <= PHASH_MATCH and int(dists[j]) > int(dists[closest]):
                j = closest
            out.append(Nearest(j, ref.refs[j], float(sims[i, j]), int(dists[j])))
    return out


def is_near_copy(spec: NearCopySpec, similarity: float, phash_distance: float) -> bool:
    if similarity >= spec.min_similarity:
        return True
    return spec.max_phash_distance is not None and phash_distance <= spec.max_phash_distance


def with_nearest(sample: Sample, kind: str, found: Nearest) -> Sample:
    """A copy of `sample` carrying its nearest `kind` image (columns of `nearest_columns`)."""
    import dataclasses

    prefix, _ = KINDS[kind]
    scores = {
        **sample.scores,
        f"{prefix}_sim": found.similarity,
        f"{prefix}_phash_dist": float(found.phash_distance),
    }
    if kind == "reference":
        return dataclasses.replace(sample, scores=scores, nearest_ref=found.ref)
    return dataclasses.replace(sample, scores=scores, nearest_eval=found.ref)


def semantic_duplicate_losers(
    members: Iterable[tuple[str, Sequence[float]]], min_similarity: float
) -> list[str]:
    """Of one class's (key, embedding): keys with a smaller-keyed sample at least
    `min_similarity` alike (order-free, like exact and near duplicates)."""
    items = sorted({k: tuple(v) for k, v in members}.items())
    if len(items) < 2:
        return []
    x = np.asarray([v for _, v in items], dtype=np.float32)
    x = x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)
    losers = []
    for i in range(1, len(items)):
        if float((x[:i] @ x[i]).max()) >= min_similarity:
            losers.append(items[i][0])
    return losers


def build_nearest(
    out: Path, shards: Sequence[int], column: str, ref: ReferenceSet
) -> list[dict[str, Any]]:
    """Every sample of a build with its nearest reference image, from the stored embeddings
    and perceptual hashes (no model runs): key, class_name, status, nearest_ref, index,
    similarity, phash_distance. Read shard by shard."""
    import pyarrow.parquet as pq

    from synthgen.schemas.manifest import shard_files

    rows: list[dict[str, Any]] = []
    for shard in shards:
        table = pq.read_table(
            out / shard_files(shard).parquet,
            columns=["key", "class_name", "status", "reject_reason", "phash", column],
        )
        data = [r for r in table.to_pylist() if r[column] is not None]
        found = nearest([r[column] for r in data], [r["phash"] for r in data], ref)
        for r, f in zip(data, found, strict=True):
            rows.append(
                {
                    "key": r["key"],
                    "class_name": r["class_name"],
                    "status": r["status"],
                    "reject_reason": r["reject_reason"],
                    "nearest_ref": f.ref,
                    "index": f.index,
                    "similarity": f.similarity,
                    "phash_distance": f.phash_distance,
                }
            )
    return rows


def near_copies(
    rows: Iterable[dict[str, Any]], spec: NearCopySpec, status: str | None = "accepted"
) -> list[dict[str, Any]]:
    """The rows of `build_nearest` a near-copy rule flags (accepted samples by default)."""
    return [
        r
        for r in rows
        if (status is None or r["status"] == status)
        and is_near_copy(spec, r["similarity"], r["phash_distance"])
    ]
