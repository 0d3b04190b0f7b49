"""`synthgen verify PATH`: is each image one a build made, unchanged, and marked as its own?

PATH is an image file, a shard tar, or a build directory. For every image: its sha256 is one
the build's manifest vouches for (an accepted row of a shard whose files match the
manifest), and its invisible watermark decodes to the build's payload (or the image is too
small to carry one, which the manifest records). A build is found from PATH itself (a build
directory, or the directory holding the tar / image) or given with `--build`.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from synthgen.schemas.manifest import MANIFEST_NAME, Manifest
from synthgen.storage.hashing import bytes_sha256, file_sha256
from synthgen.storage.watermark import judge_payload, read_watermark_image, skip_reason

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


class VerifyError(ValueError):
    """PATH or the build cannot be read at all (not a per-image failure)."""


@dataclass
class ImageResult:
    """The checks of one image; `ok` only when every check passed."""

    name: str
    sha256: str
    in_manifest: bool
    watermark: str  # "ok", "skipped: <why>", or the reason it failed
    ok: bool = False
    problems: list[str] = field(default_factory=list)


@dataclass
class VerifyResult:
    build: str
    recipe_hash: str
    images: list[ImageResult]
    problems: list[str] = field(default_factory=list)  # build-level (a file's hash, ...)

    @property
    def ok(self) -> bool:
        return bool(self.images) and not self.problems and all(i.ok for i in self.images)

    def to_json(self) -> str:
        data = asdict(self)
        data["ok"] = self.ok
        return json.dumps(data, indent=2)


@dataclass(frozen=True)
class _Build:
    root: Path
    manifest: Manifest
    accepted: frozenset[str]  # sha256 of every accepted image
    problems: tuple[str, ...]


def _find_build(path: Path, build: Path | None) -> Path:
    if build is not None:
        return build.parent if build.name == MANIFEST_NAME else build
    for candidate in (path, *path.parents):
        if (candidate / MANIFEST_NAME).is_file():
            return candidate
    raise VerifyError(f"{path}: no {MANIFEST_NAME} here or above; name the build with --build")


def _load_build(root: Path) -> _Build:
    import pyarrow.parquet as pq

    try:
        manifest = Manifest.model_validate_json((root / MANIFEST_NAME).read_bytes())
    except (OSError, ValueError) as exc:
        raise VerifyError(f"{root / MANIFEST_NAME}: not a readable manifest: {exc}") from None
    problems = []
    accepted: set[str] = set()
    for shard in manifest.shards:
        for name, info in shard.files.items():
            p = root / name
            if not p.is_file() or file_sha256(p) != info.sha256:
                problems.append(f"{name}: missing or its sha256 differs from the manifest")
            elif name.endswith(".parquet"):  # only a file the manifest vouches for is read
                rows = pq.read_table(p, columns=["image_sha256", "status"]).to_pylist()
                accepted |= {r["image_sha256"] for r in rows if r["status"] == "accepted"}
    return _Build(root, manifest, frozenset(accepted), tuple(problems))


def _check_image(name: str, data: bytes, build: _Build) -> ImageResult:
    from synthgen.storage.images import decode_image

    digest = bytes_sha256(data)
    result = ImageResult(name, digest, digest in build.accepted, watermark="")
    if not result.in_manifest:
        result.problems.append("sha256 not in the build's manifest (changed, or not this build's)")
    try:
        image = decode_image(data)
    except Exception as exc:
        result.watermark = "unreadable image"
        result.problems.append(f"cannot decode the image: {exc}")
        return result
    skipped = skip_reason(image.width, image.height)
    if skipped is not None:
        result.watermark = f"skipped: {skipped}"
    else:
        verdict = judge_payload(read_watermark_image(image), build.manifest.recipe_hashes)
        result.watermark = "ok" if verdict.ok else str(verdict.reason)
        if not verdict.ok:
            result.problems.append(f"watermark: {verdict.reason}")
    result.ok = not result.problems
    return result


def _tar_images(path: Path) -> list[tuple[str, bytes]]:
    out = []
    try:
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                if member.isfile() and member.name.lower().endswith(IMAGE_SUFFIXES):
                    f = tar.extractfile(member)
                    if f is not None:
                        out.append((f"{path.name}:{member.name}", f.read()))
    except (OSError, tarfile.TarError) as exc:
        raise VerifyError(f"{path}: not a readable tar: {exc}") from None
    return out


def verify(path: str | Path, build: str | Path | None = None) -> VerifyResult:
    """Check every image under PATH against its build; raises VerifyError when PATH or the
    build cannot be read."""
    path = Path(path).resolve()
    if not path.exists():
        raise VerifyError(f"{path}: not found")
    root = _find_build(path if path.is_dir() else path.parent, Path(build) if build else None)
    b = _load_build(root.resolve())
    if path.is_dir():
        images = [i for t in sorted(path.glob("*.tar")) for i in _tar_images(t)]
        problems = list(b.problems)
    elif path.suffix == ".tar":
        images = _tar_images(path)
        problems = [p for p in b.problems if p.startswith(path.name + ":")]
    elif path.suffix.lower() in IMAGE_SUFFIXES:
        images = [(path.name, path.read_bytes())]
        problems = []
    else:
        kinds = ", ".join(IMAGE_SUFFIXES)
        raise VerifyError(f"{path}: expected an image ({kinds}), a .tar or a build directory")
    results = [_check_image(name, data, b) for name, data in images]
    if not results:
        problems.append(f"{path}: no images to verify")
    return VerifyResult(str(b.root), b.manifest.recipe_hash, results, problems)


def format_text(result: VerifyResult) -> str:
    """One line per failing image, then a summary line."""
    lines = [f"{r.name}: {'; '.join(r.problems)}" for r in result.images if not r.ok]
    lines += [f"build: {p}" for p in result.problems]
    good = sum(r.ok for r in result.images)
    state = "OK" if result.ok else "FAILED"
    lines.append(f"{state}: {good}/{len(result.images)} images verified against {result.build}")
    return "\n".join(lines)
