"""C2PA content credentials: sign accepted images and clips, and read their credentials back.

Each accepted image (PNG, JPEG, WebP) or clip (MP4) of a build whose recipe has `output.c2pa`
carries a C2PA manifest (`c2pa-python`) with one `c2pa.created` action of digital source type
`trainedAlgorithmicMedia`, and a `org.synthgen.provenance` assertion: the model (name,
sha256), the recipe (name, hash), the sample key and seed, and the sha256 of the file as it
was encoded before signing (what `synthgen verify --regenerate` compares a regenerated image
with). The manifest is embedded in the file; its hash binding covers every other byte of an
image (a data hash) and, in an MP4 (a BMFF hash), every top-level box but the manifest's own
`uuid` box and those C2PA leaves out by default: the file type box `ftyp`, `free` and `skip`
padding, and the fragment index `mfra` (the frames, `mdat`, and their tables, `moov`, are
covered).

The signing certificate chain and private key are read where they are used (the writer), from
a file or from an environment variable named by the recipe. Neither their text nor the
variable's value is ever written to the build, to provenance or to a log: only the file
paths and the variable *names* go to `.synthgen/c2pa.json` (what the writer reads).

Signed bytes are not reproducible byte for byte (the claim carries fresh identifiers and the
signature a fresh nonce); the image inside them is: the pixels and the pre-signing encoding
are a function of the recipe, as for an unsigned image; a signed clip decodes to the same
frames as the clip before signing.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from synthgen.schemas.manifest import STATE_DIR
from synthgen.schemas.recipe import C2paSpec, RecipeError, resolve_path
from synthgen.schemas.records import ACCEPTED, BuildContext, Sample, withheld
from synthgen.storage.atomic import write_bytes_atomic

CONFIG_NAME = "c2pa.json"  # under the build's STATE_DIR: paths and variable names only
DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
ASSERTION = "org.synthgen.provenance"
# The formats signed and read, by the name `sign_image` takes: a recipe's image format, or
# `mp4` for a clip (either video format: both are H.264 in MP4).
MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "mp4": "video/mp4"}
FORMAT_OF_MEDIA_TYPE = {v: k for k, v in MIME.items()}
# Failure codes that say the bytes are no longer the ones signed (C2PA 2.x validation codes).
HASH_CODES = ("dataHash.mismatch", "bmffHash.mismatch", "boxesHash.mismatch", "hashedURI")
UNTRUSTED = "signingCredential.untrusted"


class SigningError(RecipeError):
    """The signing credentials cannot be read or used; the message names where they come
    from (a path or a variable name), never their content."""


@dataclass(frozen=True)
class SigningConfig:
    """Where a build's signing credentials are: absolute paths or environment variable names."""

    cert_chain: str | None
    cert_chain_env: str | None
    key: str | None
    key_env: str | None
    alg: str = "es256"
    timestamp_url: str | None = None

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> SigningConfig:
        return cls(**json.loads(data))

    def credentials(self) -> tuple[bytes, bytes]:
        """(certificate chain PEM, private key PEM); raises SigningError naming the source."""
        return (
            _read_secret("c2pa.cert_chain", self.cert_chain, self.cert_chain_env),
            _read_secret("c2pa.key", self.key, self.key_env),
        )


def _read_secret(what: str, path: str | None, env: str | None) -> bytes:
    if env is not None:
        value = os.environ.get(env)
        if not value:
            raise SigningError(f"{what}_env: environment variable {env} is not set or empty")
        return value.encode()
    assert path is not None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SigningError(f"{what}: {path}: cannot read ({exc.strerror})") from None


def signing_config(spec: C2paSpec | None, base_dir: Path | None) -> SigningConfig | None:
    """The recipe's signing config with paths resolved, checked by signing a test image.

    Raises SigningError (a RecipeError) when a credential is missing, unreadable or refused,
    before anything is generated.
    """
    if spec is None:
        return None
    base = base_dir or Path.cwd()
    config = SigningConfig(
        cert_chain=str(resolve_path(base, spec.cert_chain)) if spec.cert_chain else None,
        cert_chain_env=spec.cert_chain_env,
        key=str(resolve_path(base, spec.key)) if spec.key else None,
        key_env=spec.key_env,
        alg=spec.alg,
        timestamp_url=spec.timestamp_url,
    )
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG")
    definition = manifest_definition("png", {"key": "check"})
    sign_image(buf.getvalue(), "png", definition, _signer(config))
    return config


def write_signing_config(out_dir: Path, config: SigningConfig | None) -> None:
    """Where the writer finds the build's signing config (removed when the recipe has none)."""
    path = out_dir / STATE_DIR / CONFIG_NAME
    if config is None:
        path.unlink(missing_ok=True)
    else:
        write_bytes_atomic(path, config.to_json())


def signer_id(config: SigningConfig) -> str:
    """Who signs with `config`: the sha256 of its certificate chain and algorithm (what a
    rotated certificate changes; the key is never read for it)."""
    chain = _read_secret("c2pa.cert_chain", config.cert_chain, config.cert_chain_env)
    return hashlib.sha256(chain + b"\0" + config.alg.encode()).hexdigest()


def config_signer(config: SigningConfig | None) -> str | None:
    """`signer_id` of `config`; None without one (a build that signs nothing) or when its
    certificate cannot be read (the signing itself reports that)."""
    if config is None:
        return None
    try:
        return signer_id(config)
    except SigningError:
        return None


def current_signer(out_dir: Path) -> str | None:
    """`config_signer` of the build's signing config now."""
    return config_signer(read_signing_config(out_dir))


def read_signing_config(out_dir: Path) -> SigningConfig | None:
    path = out_dir / STATE_DIR / CONFIG_NAME
    try:
        return SigningConfig.from_json(path.read_bytes())
    except FileNotFoundError:
        return None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("synthgen-corpus")
    except PackageNotFoundError:
        return "0"


def manifest_definition(fmt: str, provenance: dict[str, Any]) -> dict[str, Any]:
    """The C2PA manifest of one image or clip (`fmt`, a name of `MIME`): created by a trained
    model, with synthgen's record."""
    return {
        "claim_generator_info": [{"name": "synthgen", "version": _version()}],
        "title": f"{provenance.get('key', 'image')}.{fmt}",
        "format": MIME[fmt],
        "assertions": [
            {
                "label": "c2pa.actions",
                "data": {
                    "actions": [
                        {
                            "action": "c2pa.created",
                            "digitalSourceType": DIGITAL_SOURCE_TYPE,
                            "softwareAgent": {"name": "synthgen", "version": _version()},
                        }
                    ]
                },
            },
            {"label": ASSERTION, "data": provenance},
        ],
    }


def sample_provenance(sample: Sample, ctx: BuildContext) -> dict[str, Any]:
    """What the `org.synthgen.provenance` assertion records of one sample."""
    return {
        "key": sample.request.key,
        "seed": sample.request.seed,
        "class_name": sample.request.class_name,
        "recipe_name": ctx.recipe_name,
        "recipe_hash": ctx.recipe_hash,
        "model": {"name": Path(ctx.model_path).name, "sha256": ctx.model_sha256},
        "encoded_sha256": sample.image_sha256,
    }


def _signer(config: SigningConfig) -> Any:
    import c2pa

    chain, key = config.credentials()
    info = c2pa.C2paSignerInfo(
        alg=config.alg.encode(),
        sign_cert=chain,
        private_key=key,
        ta_url=config.timestamp_url.encode() if config.timestamp_url else None,
    )
    try:
        return c2pa.Signer.from_info(info)
    except c2pa.C2paError as exc:
        reason = _short(exc)
        raise SigningError(f"c2pa: the certificate chain or key is refused: {reason}") from None
    finally:
        del chain, key, info


def _short(exc: BaseException) -> str:
    """The first line of a library error (never echoes credential text)."""
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


_CONTEXT = threading.local()


def _context() -> Any:
    """One c2pa Context per thread: no thumbnails (the image is the thumbnail's source)."""
    import c2pa

    ctx = getattr(_CONTEXT, "ctx", None)
    if ctx is None or getattr(_CONTEXT, "pid", None) != os.getpid():
        settings = c2pa.Settings.from_dict({"builder": {"thumbnail": {"enabled": False}}})
        ctx = c2pa.Context(settings)
        _CONTEXT.ctx, _CONTEXT.pid = ctx, os.getpid()
    return ctx


def sign_image(data: bytes, fmt: str, definition: dict[str, Any], signer: Any) -> bytes:
    """`data` (an encoded PNG, JPEG, WebP or MP4: `fmt`, a name of `MIME`) with a C2PA
    manifest embedded."""
    import c2pa

    out = io.BytesIO()
    try:
        with c2pa.Builder(definition, _context()) as builder:
            builder.sign(signer, MIME[fmt], io.BytesIO(data), out)
    except c2pa.C2paError as exc:
        raise SigningError(f"c2pa: signing failed: {_short(exc)}") from None
    return out.getvalue()


_SIGNERS = threading.local()  # each thread's signers: they go with the thread


def _thread_signer(config: SigningConfig) -> Any:
    """This thread's signer for `config` (a signer is used by one thread at a time)."""
    mine: dict[tuple[int, SigningConfig], Any] = _SIGNERS.__dict__.setdefault("by_config", {})
    key = (os.getpid(), config)
    if key not in mine:
        mine[key] = _signer(config)
    return mine[key]


def signing_format(s: Sample, ctx: BuildContext) -> str:
    """The format a sample is signed as (a name of `MIME`): its media's type (a clip: `mp4`),
    else the build's image format."""
    fmt = FORMAT_OF_MEDIA_TYPE.get(s.media.media_type)
    if fmt is None and s.media.is_video:
        raise SigningError(f"c2pa: cannot sign {s.media.media_type} (signed: MP4 clips)")
    return fmt or ctx.image_format


def signed_sample(s: Sample, ctx: BuildContext, config: SigningConfig) -> bytes:
    """A sample's encoded image or clip with its C2PA manifest (what its tar member will
    hold)."""
    fmt = signing_format(s, ctx)
    definition = manifest_definition(fmt, sample_provenance(s, ctx))
    return sign_image(s.image, fmt, definition, _thread_signer(config))


def sign_accepted(
    out_dir: Path,
    samples: Sequence[Sample],
    ctx: BuildContext,
    presigned: Mapping[str, bytes] | None = None,
) -> list[Sample]:
    """Accepted, written samples signed when the build has a signing config; else unchanged.

    A signed sample's `image` and `image_sha256` are the signed file's; the assertion keeps
    the sha256 of the encoding before signing. An image in `presigned` (signed with its host
    work during generation, `signed_sample`) is taken as it is; the others are signed here.
    """
    config = read_signing_config(out_dir)
    if config is None:
        return list(samples)
    ready = presigned or {}
    out = []
    for s in samples:
        if s.status != ACCEPTED or withheld(s):
            out.append(s)
            continue
        data = ready.get(s.request.key)
        if data is None:
            data = signed_sample(s, ctx, config)
        signed = s.media.with_data(data)
        out.append(replace(s, media=signed, image_sha256=hashlib.sha256(data).hexdigest()))
    return out


# -- reading --------------------------------------------------------------------------------


def sniff_format(data: bytes) -> str | None:
    """png / jpeg / webp / mp4 from the first bytes, or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8"):
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[4:8] == b"ftyp":  # an ISO BMFF file (MP4) opens with its file type box
        return "mp4"
    return None


def _kind(fmt: str) -> str:
    """How a message names a file of `fmt`: `a PNG image`, `an MP4 clip`."""
    noun = "clip" if MIME[fmt].startswith("video/") else "image"
    return f"{'an' if fmt == 'mp4' else 'a'} {fmt.upper()} {noun}"


@dataclass
class Credentials:
    """What an image's (a clip's) C2PA manifest says, and whether it holds.

    `error`: the file, or the manifest in it, could not be read at all, so nothing was
    checked: not evidence that bytes changed after signing (`hash_ok` says that)."""

    present: bool
    valid: bool = False  # signature valid and the hash binding intact
    hash_ok: bool = False
    trusted: bool | None = None  # None: no trust list given
    state: str | None = None  # the library's validation state
    failures: list[str] = field(default_factory=list)
    digital_source_type: str | None = None
    provenance: dict[str, Any] | None = None  # the org.synthgen.provenance assertion
    signer: str | None = None  # the signing certificate's issuer/common name, when known
    error: str | None = None  # why nothing could be checked (see above)


class TrustListError(ValueError):
    """A trust list that cannot be used: unreadable, not PEM text, or holding anything but
    X.509 certificates. The message names the file."""


_PEM_BEGIN = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----")


def _pem_text(pem: bytes, where: str) -> str:
    try:
        return pem.decode("ascii")
    except UnicodeDecodeError as exc:
        raise TrustListError(
            f"{where}: not a PEM text file (byte {exc.start} is not ASCII)"
        ) from None


def check_trust_pem(pem: bytes, where: str = "trust list") -> bytes:
    """`pem` when it is a usable trust list: ASCII PEM text of one or more X.509
    certificates and nothing else (a private key or a block that does not parse is refused).
    Raises TrustListError naming `where`."""
    from cryptography import x509

    blocks = _PEM_BEGIN.findall(_pem_text(pem, where))
    if not blocks:
        raise TrustListError(f"{where}: not a PEM trust list (no certificate in it)")
    others = sorted({b for b in blocks if b != "CERTIFICATE"})
    if others:
        raise TrustListError(
            f"{where}: holds a {others[0]} block; a trust list holds certificates only"
        )
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise TrustListError(
            f"{where}: a CERTIFICATE block is not an X.509 certificate ({_short(exc)})"
        ) from None
    if len(certs) != len(blocks):
        raise TrustListError(
            f"{where}: {len(blocks)} CERTIFICATE blocks, {len(certs)} read as X.509 certificates"
        )
    return pem


def read_trust_list(path: str | Path) -> bytes:
    """The trust list file at `path`, checked by `check_trust_pem`; raises TrustListError
    naming the file."""
    try:
        pem = Path(path).read_bytes()
    except OSError as exc:
        raise TrustListError(f"{path}: cannot read the trust list: {exc.strerror}") from None
    return check_trust_pem(pem, str(path))


def trust_settings(trust_pem: bytes) -> dict[str, Any]:
    anchors = _pem_text(trust_pem, "trust list")
    return {"trust": {"trust_anchors": anchors}, "verify": {"verify_trust": True}}


def read_credentials(data: bytes, trust_pem: bytes | None = None) -> Credentials:
    """Read and validate an image's (an MP4 clip's) embedded C2PA manifest.

    `valid`: the claim signature checks and no hash binding failed. With `trust_pem`
    (PEM trust anchors, see `check_trust_pem`), `trusted` says whether the signing chain
    anchors in it. Bytes that do not parse as their image format, or a manifest that does not
    read, give `error` (nothing checked) rather than a verdict.
    """
    import c2pa

    fmt = sniff_format(data)
    if fmt is None:
        return Credentials(present=False, failures=["not a PNG, JPEG or WebP image or MP4 clip"])
    settings: dict[str, Any] = {"builder": {"thumbnail": {"enabled": False}}}
    if trust_pem is not None:
        settings |= trust_settings(trust_pem)
    try:
        with (
            c2pa.Context(c2pa.Settings.from_dict(settings)) as context,
            c2pa.Reader(MIME[fmt], io.BytesIO(data), context=context) as reader,
        ):
            state = reader.get_validation_state()
            results = reader.get_validation_results() or {}
            active = reader.get_active_manifest() or {}
    except c2pa.C2paError as exc:
        text = str(exc)
        if "ManifestNotFound" in text or "JumbfNotFound" in text or "not found" in text.lower():
            return Credentials(present=False)
        if "asset could not be parsed" in text.lower():  # the image itself does not read
            reason = f"the file does not read as {_kind(fmt)} ({_short(exc)})"
            return Credentials(present=False, error=reason)
        reason = f"unreadable manifest ({_short(exc)})"
        return Credentials(present=True, failures=[reason], error=reason)
    failures = sorted({str(f.get("code")) for f in _failures(results)})
    hash_ok = not any(any(h in code for h in HASH_CODES) for code in failures)
    other = [c for c in failures if c != UNTRUSTED]
    cred = Credentials(
        present=True,
        # "Invalid" only because the signer is not on the (absent) trust list still binds
        valid=hash_ok
        and not other
        and (state in ("Valid", "Trusted") or (state == "Invalid" and failures == [UNTRUSTED])),
        hash_ok=hash_ok,
        trusted=None if trust_pem is None else state == "Trusted",
        state=state,
        failures=failures,
    )
    for assertion in active.get("assertions", []):
        label, body = assertion.get("label", ""), assertion.get("data") or {}
        if label == ASSERTION:
            cred.provenance = body
        elif label.startswith("c2pa.actions"):
            for action in body.get("actions", []):
                if action.get("action") == "c2pa.created":
                    cred.digital_source_type = action.get("digitalSourceType")
    sig = active.get("signature_info") or {}
    cred.signer = sig.get("common_name") or sig.get("issuer")
    return cred


def _failures(results: dict[str, Any]) -> list[dict[str, Any]]:
    active = results.get("activeManifest") or {}
    out = list(active.get("failure") or [])
    for ingredient in results.get("ingredientDeltas") or []:
        out += (ingredient.get("validationDeltas") or {}).get("failure") or []
    return out
