"""`synthgen verify PATH`: is each image one a build made, unchanged, and marked as its own?

PATH is an image file, a shard tar, or a build directory. For every image: its sha256 is one
the build's manifest vouches for (an accepted row of a shard whose files match the
manifest), and its invisible watermark decodes to the build's payload (or the image is too
small to carry one, which the manifest records). A build is found from PATH itself (a build
directory, or the directory holding the tar / image) or given with `--build`.

C2PA content credentials: an image that carries them must validate (signature, and the hash
binding over its bytes) and name this build's recipe; a build whose recipe signs requires
them. With a trust list (PEM certificates), the signing chain must anchor in it. With
`regenerate`, every image is made again from its provenance and compared: the bytes (for a
signed image, the encoding before signing, whose sha256 its credentials record) and pixels.

Reading is bounded: tar members are read one at a time; a member (or an image file) larger
than an image of the build's size can be (`storage.tars.sample_member_limit`) is not read,
and an image declaring more pixels than the build's is not decoded (`open_bounded`); both
are per-image failures. An image or manifest that cannot be read is reported as such, not as
tampering; a trust list that is not PEM X.509 certificates is refused before any image.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from synthgen.schemas.manifest import MANIFEST_NAME, Manifest
from synthgen.storage.c2pa_sign import (
    DIGITAL_SOURCE_TYPE,
    Credentials,
    TrustListError,
    read_credentials,
    read_trust_list,
)
from synthgen.storage.codecs import readable_suffixes
from synthgen.storage.hashing import bytes_sha256, file_sha256
from synthgen.storage.tars import iter_tar_members, sample_member_limit
from synthgen.storage.watermark import judge_payload, read_watermark_image, skip_reason


class VerifyError(ValueError):
    """PATH or the build cannot be read at all (not a per-image failure)."""


@dataclass
class ImageResult:
    """The checks of one image; `ok` only when every check passed."""

    name: str
    sha256: str
    in_manifest: bool
    watermark: str  # "ok", "skipped: <why>", or the reason it failed
    c2pa: str = "absent"  # "valid", "valid, trusted", "absent", or the reason it failed
    regenerated: str | None = None  # with --regenerate: "identical", or how it differs
    key: str | None = None
    ok: bool = False
    problems: list[str] = field(default_factory=list)


@dataclass
class VerifyResult:
    build: str
    recipe_hash: str
    images: list[ImageResult]
    problems: list[str] = field(default_factory=list)  # build-level (a file's hash, ...)
    signed: bool = False  # the build's recipe signs its images (C2PA)
    trust_list: str | None = None
    regenerate: bool = False

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
    accepted: dict[str, str]  # sha256 of every accepted image -> its key
    problems: tuple[str, ...]

    @property
    def signed(self) -> bool:
        """Whether the build's recipe signs every accepted image with C2PA credentials."""
        return bool((self.manifest.recipe.get("output") or {}).get("c2pa"))

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the build's images, from its recipe."""
        sampling = self.manifest.recipe.get("sampling") or {}
        try:
            return int(sampling["width"]), int(sampling["height"])
        except (KeyError, TypeError, ValueError):
            raise VerifyError(f"{self.root / MANIFEST_NAME}: no sampling width / height") from None

    def manifest_frames(self) -> int:
        """Frames of each of the build's clips (1: an image build), from its recipe."""
        sampling = self.manifest.recipe.get("sampling") or {}
        frames = sampling.get("num_frames")
        return int(frames) if isinstance(frames, int) and frames > 0 else 1

    @property
    def member_limit(self) -> int:
        """The most bytes an image (a clip) of this build can be (`sample_member_limit`)."""
        return sample_member_limit(*self.size, self.manifest_frames())


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
    accepted: dict[str, str] = {}
    for shard in manifest.shards:
        for name, info in shard.files.items():
            p = root / name
            if not p.is_file() or file_sha256(p) != info.sha256:
                problems.append(f"{name}: missing or its sha256 differs from the manifest")
            elif name.endswith(".parquet"):  # only a file the manifest vouches for is read
                rows = pq.read_table(p, columns=["key", "image_sha256", "status"]).to_pylist()
                accepted |= {r["image_sha256"]: r["key"] for r in rows if r["status"] == "accepted"}
    return _Build(root, manifest, accepted, tuple(problems))


def _unread_image(name: str, size: int, build: _Build, key: str | None) -> ImageResult:
    """An image too large to be one of the build's: its bytes are not read."""
    result = ImageResult(name, "", False, watermark="not read", c2pa="not read", key=key)
    result.problems.append(
        f"{size} bytes, more than an image of this build can be "
        f"({build.member_limit} bytes): not read"
    )
    return result


def _check_image(
    name: str,
    data: bytes,
    build: _Build,
    trust_pem: bytes | None = None,
    regenerate: bool = False,
    key: str | None = None,
) -> ImageResult:
    from synthgen.validators.corpus import TooManyPixels, open_bounded

    digest = bytes_sha256(data)
    result = ImageResult(name, digest, digest in build.accepted, watermark="")
    result.key = build.accepted.get(digest, key)
    if not result.in_manifest:
        result.problems.append("sha256 not in the build's manifest (changed, or not this build's)")
    cred = _check_credentials(result, data, build, trust_pem)
    if result.key is None and cred.provenance:
        result.key = str(cred.provenance.get("key"))
    if _is_clip(name):
        return _check_clip(result, data, build, cred if regenerate else None)
    try:
        image = open_bounded(data, build.size).convert("RGB")
    except TooManyPixels as exc:
        result.watermark = "not decoded"
        result.problems.append(str(exc))
        return result
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
    if regenerate:
        _check_regenerated(result, image, cred, build)
    result.ok = not result.problems
    return result


def _is_clip(name: str) -> bool:
    from synthgen.storage.codecs import UnknownFormat, codec_for_extension

    try:
        return codec_for_extension(name.rsplit(".", 1)[-1]).kind == "video"
    except UnknownFormat:
        return False


def _check_clip(
    result: ImageResult, data: bytes, build: _Build, regenerate_cred: Credentials | None = None
) -> ImageResult:
    """A clip: it decodes within the build's size and frame count (its sha256 and credentials
    were checked by the caller); a lossy clip carries no watermark, a lossless one carries it
    in every frame. With `regenerate_cred` (verify --regenerate): made again from its
    provenance, the same bytes and frames."""
    from synthgen.schemas.media import Shape
    from synthgen.storage.codecs import codec_for_extension

    codec = codec_for_extension(result.name.rsplit(".", 1)[-1])()
    w, h = build.size
    limit = Shape(build.manifest_frames(), h, w)
    try:
        clip = codec.decode(data, limit)  # type: ignore[call-arg]
    except Exception as exc:
        result.watermark = "unreadable clip"
        result.problems.append(f"cannot decode the clip: {exc}")
        return result
    if not codec.lossless:
        result.watermark = "not carried (lossy video)"
    else:
        from PIL import Image

        for frame in clip:
            verdict = judge_payload(
                read_watermark_image(Image.fromarray(frame)), build.manifest.recipe_hashes
            )
            if not verdict.ok:
                result.watermark = str(verdict.reason)
                result.problems.append(f"watermark: {verdict.reason} (a frame of the clip)")
                break
        else:
            result.watermark = "ok"
    if regenerate_cred is not None:
        _check_regenerated(result, clip, regenerate_cred, build, decode=codec.decode)
    result.ok = not result.problems
    return result


def _check_credentials(
    result: ImageResult, data: bytes, build: _Build, trust_pem: bytes | None
) -> Credentials:
    """The image's C2PA credentials: valid, hash binding intact, this build's, trusted."""
    cred = read_credentials(data, trust_pem)
    problems = []
    if cred.error is not None:  # nothing could be checked: say so, blame no one
        result.c2pa = f"not checked: {cred.error}"
        result.problems.append(f"c2pa: not checked: {cred.error}")
        return cred
    if not cred.present:
        result.c2pa = "absent"
        if build.signed:
            problems.append("no C2PA content credentials (this build signs its images)")
        elif trust_pem is not None:
            problems.append("no C2PA content credentials to check against the trust list")
    else:
        if not cred.hash_ok:
            problems.append("hash binding broken (the bytes changed after signing)")
        elif not cred.valid:
            problems.append(f"invalid ({', '.join(cred.failures) or cred.state})")
        if cred.digital_source_type != DIGITAL_SOURCE_TYPE:
            problems.append(f"digital source type is {cred.digital_source_type!r}")
        recipe_hash = (cred.provenance or {}).get("recipe_hash")
        if recipe_hash not in build.manifest.recipe_hashes:
            problems.append("credentials of another build (recipe hash differs)")
        if trust_pem is not None and not cred.trusted:
            problems.append(f"signer ({cred.signer}) does not anchor in the trust list")
        result.c2pa = "valid, trusted" if cred.trusted else "valid"
    if problems:
        result.c2pa = "; ".join(problems)
        result.problems += [f"c2pa: {p}" for p in problems]
    return cred


def _check_regenerated(
    result: ImageResult,
    image: Any,
    cred: Credentials,
    build: _Build,
    decode: Callable[[bytes], Any] | None = None,
) -> None:
    """Make the sample again from its provenance; the same encoding and the same pixels
    (`decode`: how its bytes decode; default an image's)?"""
    import numpy as np

    from synthgen.generators.regenerate import (
        Inputs,
        ProvenanceNotFound,
        find_provenance,
        regenerate,
    )
    from synthgen.storage.images import decode_image

    if result.key is None:
        result.regenerated = "no sample key for this image"
    else:
        try:
            prov = find_provenance(build.root, result.key)
            from synthgen.validators.clip_folder import load_clip

            # inputs found as built; a guided sample's CLIP model read by load_clip
            again = regenerate(prov, Inputs.for_build(build.root), clip_loader=load_clip)
        except (ProvenanceNotFound, ValueError, OSError) as exc:
            result.regenerated = f"cannot regenerate {result.key}: {exc}"
        else:
            signed = cred.provenance.get("encoded_sha256") if cred.provenance else None
            expected = signed or result.sha256
            decoded = (decode or decode_image)(again)
            same_pixels = np.array_equal(np.asarray(decoded), np.asarray(image))
            if bytes_sha256(again) != expected:
                result.regenerated = f"regenerated sha256 {bytes_sha256(again)} != {expected}"
            elif not same_pixels:
                result.regenerated = "the regenerated pixels differ from the image's"
            else:
                result.regenerated = "identical"
    if result.regenerated != "identical":
        result.problems.append(f"regenerate: {result.regenerated}")


def _is_image(name: str) -> bool:
    return name.lower().endswith(readable_suffixes())


# (name shown, the bytes or None when not read, the size the tar or file declares)
_Image = tuple[str, bytes | None, int]


def _tar_images(path: Path, limit: int) -> Iterator[_Image]:
    """The image members of a tar, one at a time (the next is read when this one is done);
    one over `limit` bytes is not read."""
    try:
        for member in iter_tar_members(path, _is_image, max_bytes=limit):
            if _is_image(member.name):
                yield f"{path.name}:{member.name}", member.data, member.size
    except (OSError, EOFError, tarfile.TarError) as exc:
        raise VerifyError(f"{path}: not a readable tar: {exc}") from None


def _image_file(path: Path, limit: int) -> Iterator[_Image]:
    size = path.stat().st_size
    yield path.name, path.read_bytes() if size <= limit else None, size


def _trust_anchors(trust_list: str | Path | None) -> bytes | None:
    if trust_list is None:
        return None
    try:
        return read_trust_list(trust_list)
    except TrustListError as exc:
        raise VerifyError(str(exc)) from None


def verify(
    path: str | Path,
    build: str | Path | None = None,
    *,
    trust_list: str | Path | None = None,
    regenerate: bool = False,
) -> VerifyResult:
    """Check every image under PATH against its build; raises VerifyError when PATH, the
    build or the trust list cannot be read.

    `trust_list`: PEM certificates; signed images must anchor in them (and unsigned ones
    fail). `regenerate`: every image is made again from its provenance and compared.
    """
    trust_pem = _trust_anchors(trust_list)
    path = Path(path).resolve()
    if not path.exists():
        raise VerifyError(f"{path}: not found")
    root = _find_build(path if path.is_dir() else path.parent, Path(build) if build else None)
    b = _load_build(root.resolve())
    limit = b.member_limit
    images: Iterator[_Image]
    if path.is_dir():
        images = (i for t in sorted(path.glob("*.tar")) for i in _tar_images(t, limit))
        problems = list(b.problems)
    elif path.suffix == ".tar":
        images = _tar_images(path, limit)
        problems = [p for p in b.problems if p.startswith(path.name + ":")]
    elif path.suffix.lower() in readable_suffixes():
        images = _image_file(path, limit)
        problems = []
    else:
        kinds = ", ".join(readable_suffixes())
        raise VerifyError(f"{path}: expected an image ({kinds}), a .tar or a build directory")
    results = [
        _check_image(name, data, b, trust_pem, regenerate, _member_key(name))
        if data is not None
        else _unread_image(name, size, b, _member_key(name))
        for name, data, size in images
    ]
    if not results:
        problems.append(f"{path}: no images to verify")
    return VerifyResult(
        str(b.root),
        b.manifest.recipe_hash,
        results,
        problems,
        signed=b.signed,
        trust_list=str(trust_list) if trust_list is not None else None,
        regenerate=regenerate,
    )


def _member_key(name: str) -> str | None:
    """The sample key of a tar member (`shard.tar:key.png`); None for a lone image file."""
    if ":" not in name:
        return None
    return name.rsplit(":", 1)[1].split(".", 1)[0]


def format_text(result: VerifyResult) -> str:
    """One line per failing image, then a summary line."""
    lines = [f"{r.name}: {'; '.join(r.problems)}" for r in result.images if not r.ok]
    lines += [f"build: {p}" for p in result.problems]
    good = sum(r.ok for r in result.images)
    state = "OK" if result.ok else "FAILED"
    lines.append(f"{state}: {good}/{len(result.images)} images verified against {result.build}")
    return "\n".join(lines)


def recorded_encoding_sha256(build_dir: Path, prov: dict[str, Any]) -> str:
    """The sha256 a regenerated image must have: the recorded `image_sha256`, or, for an
    image signed with C2PA credentials, the `encoded_sha256` its credentials record (the
    encoding before signing)."""
    from synthgen.schemas.manifest import shard_files

    recorded = str(prov["image_sha256"])
    if prov.get("status") not in (None, "accepted"):
        return recorded
    tar = build_dir / shard_files(int(prov["shard"])).tar
    try:
        frames = int(prov.get("frames") or 1)  # a clip's frames (its row's `frames`)
        limit = sample_member_limit(int(prov["width"]), int(prov["height"]), frames)
    except (KeyError, TypeError, ValueError):
        return recorded

    def wanted(name: str) -> bool:
        return name.partition(".")[0] == prov["key"] and _is_image(name)

    try:
        for member in iter_tar_members(tar, wanted, max_bytes=limit):
            if member.data is not None:
                cred = read_credentials(member.data)
                signed = (cred.provenance or {}).get("encoded_sha256") if cred.valid else None
                ok = signed and bytes_sha256(member.data) == recorded
                return str(signed) if ok else recorded
    except (OSError, EOFError, tarfile.TarError):
        pass
    return recorded
