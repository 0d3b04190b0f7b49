"""C2PA content credentials: signing accepted images, verifying them, keeping the key secret."""

from __future__ import annotations

import datetime
import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from synthgen.pipelines.build import run_build
from synthgen.pipelines.cli import main
from synthgen.pipelines.verify import VerifyError, verify
from synthgen.schemas.recipe import Recipe, RecipeError
from synthgen.storage.c2pa_sign import (
    DIGITAL_SOURCE_TYPE,
    SigningConfig,
    manifest_definition,
    read_credentials,
    sign_image,
    signing_config,
)
from synthgen.storage.images import encode_image
from tests.conftest import tiny_recipe_dict, write_recipe

KEY_ENV = "SYNTHGEN_TEST_C2PA_KEY"
CLI = (sys.executable, "-m", "synthgen.pipelines.cli")


@dataclass(frozen=True)
class Pki:
    chain: Path  # leaf + CA, PEM
    key: Path  # the leaf's private key, PEM (PKCS#8)
    ca: Path  # the trust anchor, PEM
    other_ca: Path  # an anchor that signed nothing here
    key_pem: bytes


def make_pki(folder: Path) -> Pki:
    """A test CA and an ES256 signing certificate with the extensions C2PA requires
    (digitalSignature key usage, emailProtection extended key usage, a CA-issued leaf)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, cn),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "synthgen tests"),
            ]
        )

    def usage(**on: bool) -> x509.KeyUsage:
        flags = dict.fromkeys(
            (
                "digital_signature",
                "content_commitment",
                "key_encipherment",
                "data_encipherment",
                "key_agreement",
                "key_cert_sign",
                "crl_sign",
                "encipher_only",
                "decipher_only",
            ),
            False,
        )
        return x509.KeyUsage(**(flags | on))

    def ca(cn: str) -> tuple[Any, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(name(cn))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(usage(key_cert_sign=True, crl_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return key, cert

    ca_key, ca_cert = ca("synthgen test CA")
    _, other_cert = ca("another test CA")
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(name("synthgen test signer"))
        .issuer_name(ca_cert.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    folder.mkdir(parents=True, exist_ok=True)
    key_pem = leaf_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pki = Pki(
        folder / "chain.pem", folder / "key.pem", folder / "ca.pem", folder / "other.pem", key_pem
    )
    pki.chain.write_bytes(leaf.public_bytes(pem) + ca_cert.public_bytes(pem))
    pki.key.write_bytes(key_pem)
    pki.ca.write_bytes(ca_cert.public_bytes(pem))
    pki.other_ca.write_bytes(other_cert.public_bytes(pem))
    return pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def signed_recipe(model_dir: Path, pki: Pki, **c2pa: str) -> dict[str, Any]:
    data = tiny_recipe_dict(model_dir, seed=3, count_per_class=1)
    data["checks"] = {"clip_score": None, "exact_duplicate": False}
    data["output"] = {
        **data["output"],
        "c2pa": c2pa or {"cert_chain": str(pki.chain), "key_env": KEY_ENV},
    }
    return data


@dataclass(frozen=True)
class CliBuild:
    out: Path
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def build(
    model_dir: Path, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CliBuild]:
    """One signed build through the CLI (debug logging), the key in an environment variable."""
    root = tmp_path_factory.mktemp("c2pa")
    recipe = write_recipe(root / "recipe.yaml", signed_recipe(model_dir, pki))
    proc = subprocess.run(
        [*CLI, "-v", "build", str(recipe), "-o", str(root / "out"), "--no-progress"],
        env={**os.environ, KEY_ENV: pki.key_pem.decode()},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    yield CliBuild(root / "out", proc.stdout, proc.stderr)


def tar_images(out: Path) -> dict[str, bytes]:
    images = {}
    for tar in sorted(out.glob("*.tar")):
        with tarfile.open(tar) as t:
            for m in t.getmembers():
                if m.name.endswith(".png"):
                    images[m.name.split(".")[0]] = t.extractfile(m).read()  # type: ignore[union-attr]
    return images


def test_every_accepted_image_carries_valid_credentials(build: CliBuild, pki: Pki) -> None:
    import pyarrow.parquet as pq

    images = tar_images(build.out)
    assert len(images) == 3
    manifest = json.loads((build.out / "manifest.json").read_text())
    rows = {
        r["key"]: r
        for p in sorted(build.out.glob("*.parquet"))
        for r in pq.read_table(p).to_pylist()
    }
    for key, data in images.items():
        cred = read_credentials(data, pki.ca.read_bytes())
        assert cred.present and cred.valid and cred.hash_ok and cred.trusted, cred
        assert cred.digital_source_type == DIGITAL_SOURCE_TYPE
        prov = cred.provenance or {}
        assert prov["key"] == key and prov["seed"] == rows[key]["seed"]
        assert prov["recipe_hash"] == manifest["recipe_hash"]
        assert prov["model"] == {"name": "sd", "sha256": manifest["model"]["sha256"]}
        # the Parquet and the sidecar vouch for the signed bytes
        assert rows[key]["image_sha256"] == __import__("hashlib").sha256(data).hexdigest()
    assert not (build.out / ".synthgen" / "c2pa.json").read_text().count("PRIVATE KEY")


def test_images_are_signed_with_their_host_work_not_after_generation(
    model_dir: Path, pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every accepted image is signed once, on a host thread beside the device, and the
    shard writer takes that copy: no signing is left for after generation."""
    import threading

    import synthgen.storage.c2pa_sign as c2pa_sign

    monkeypatch.setenv(KEY_ENV, pki.key_pem.decode())
    signed_on: list[str] = []
    real = c2pa_sign.sign_image

    def sign_image(*args: Any, **kwargs: Any) -> bytes:
        signed_on.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(c2pa_sign, "sign_image", sign_image)
    data = signed_recipe(model_dir, pki)
    data["count_per_class"] = 2
    result = run_build(data, tmp_path / "out", show_progress=False)
    images = tar_images(tmp_path / "out")
    assert len(images) == result.manifest.counts.accepted == 6
    generated = [n for n in signed_on if n.startswith("synthgen-host")]
    assert len(generated) == 6, signed_on  # one per image, during generation
    first = signed_on.index(generated[0])
    assert signed_on[first:] == generated, "nothing signed after generation"
    assert len(signed_on[:first]) <= 2, "the credentials' checks before the build, if any"
    for data_ in images.values():
        cred = read_credentials(data_, pki.ca.read_bytes())
        assert cred.present and cred.valid and cred.hash_ok and cred.trusted, cred


def test_a_certificate_rotated_before_a_resume_signs_the_whole_build(
    model_dir: Path, pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Images signed with their host work wait in staging with the certificate that signed
    them; a resume after the certificate changed signs them again with the new one, so the
    build has one signer."""
    from synthgen.storage.faults import InjectedFault

    rotated = make_pki(tmp_path / "rotated")
    chain = tmp_path / "chain.pem"
    chain.write_bytes(pki.chain.read_bytes())
    data = signed_recipe(model_dir, pki, cert_chain=str(chain), key_env=KEY_ENV)
    out = tmp_path / "out"
    monkeypatch.setenv(KEY_ENV, pki.key_pem.decode())
    monkeypatch.setenv("SYNTHGEN_FAULT", "write:*:raise")  # every shard staged, none written
    with pytest.raises(Exception) as failed:
        run_build(data, out, show_progress=False)
    assert "injected fault" in str(failed.value) or isinstance(failed.value, InjectedFault)
    assert not list(out.glob("*.tar")) and list((out / ".synthgen").rglob("*.arrow"))
    monkeypatch.delenv("SYNTHGEN_FAULT")
    chain.write_bytes(rotated.chain.read_bytes())  # the certificate and key rotated
    monkeypatch.setenv(KEY_ENV, rotated.key_pem.decode())
    run_build(data, out, resume=True, show_progress=False)
    images = tar_images(out)
    assert len(images) == 3
    for data_ in images.values():
        cred = read_credentials(data_, rotated.ca.read_bytes())
        assert cred.present and cred.valid and cred.trusted, cred  # the new signer's
        assert not read_credentials(data_, pki.ca.read_bytes()).trusted


def test_verify_checks_credentials_trust_and_regenerates(
    build: CliBuild, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    result = verify(build.out, trust_list=pki.ca, regenerate=True)
    assert result.ok, result.to_json()
    assert all(i.c2pa == "valid, trusted" and i.regenerated == "identical" for i in result.images)
    assert main(["verify", str(build.out), "--json", "--trust-list", str(pki.ca)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is True and out["signed"] is True
    # an anchor that did not issue the signer: valid credentials, not trusted
    other = verify(build.out, trust_list=pki.other_ca)
    assert not other.ok and all(i.c2pa.startswith("signer (") for i in other.images)
    assert main(["verify", str(build.out), "--trust-list", str(pki.other_ca)]) == 1
    with pytest.raises(VerifyError, match="trust list"):
        verify(build.out, trust_list=build.out / "manifest.json")
    # `synthgen regenerate` compares with the encoding before signing
    key = sorted(tar_images(build.out))[0]
    assert main(["regenerate", str(build.out), key]) == 0
    assert "matches" in capsys.readouterr().out


def test_tampered_and_foreign_images_fail(build: CliBuild, pki: Pki, tmp_path: Path) -> None:
    key, data = sorted(tar_images(build.out).items())[0]
    appended = tmp_path / "appended.png"
    appended.write_bytes(data + b"\x00tampered")
    r = verify(appended, build.out).images[0]
    assert not r.ok and not r.in_manifest and "hash binding" in r.c2pa
    # one pixel block changed, re-encoded with the credentials left in place: the
    # image's bytes no longer match what was signed
    pixels = np.array(Image.open(io.BytesIO(data)).convert("RGB"))
    pixels[:4, :4] = 255 - pixels[:4, :4]
    edited = _swap_idat(data, encode_image(pixels, "png"))
    block = tmp_path / "block.png"
    block.write_bytes(edited)
    r = verify(block, build.out, regenerate=True).images[0]
    assert not r.ok and not r.in_manifest and "hash binding" in r.c2pa
    assert r.key == key and r.regenerated == "the regenerated pixels differ from the image's"
    # stripped of its credentials: not in the manifest, and the build requires them
    plain = tmp_path / "plain.png"
    Image.fromarray(np.array(Image.open(io.BytesIO(data)))).save(plain)
    r = verify(plain, build.out).images[0]
    assert not r.ok and r.c2pa.startswith("no C2PA content credentials")
    # another build's signed image (another recipe hash in its credentials)
    definition = manifest_definition("png", {"key": key, "recipe_hash": "f" * 64})
    config = SigningConfig(str(pki.chain), None, str(pki.key), None)
    from synthgen.storage.c2pa_sign import _signer

    foreign = tmp_path / "foreign.png"
    foreign.write_bytes(sign_image(encode_image(pixels, "png"), "png", definition, _signer(config)))
    r = verify(foreign, build.out).images[0]
    assert not r.ok and not r.in_manifest and "another build" in r.c2pa
    assert main(["verify", str(foreign), "--build", str(build.out), "--json"]) == 1


def _swap_idat(signed: bytes, other: bytes) -> bytes:
    """`signed` with its image data chunks replaced by those of `other` (other chunks kept)."""

    def chunks(data: bytes) -> list[tuple[bytes, bytes]]:
        out, i = [], 8
        while i < len(data):
            n = int.from_bytes(data[i : i + 4], "big")
            out.append((data[i + 4 : i + 8], data[i : i + 12 + n]))
            i += 12 + n
        return out

    new_idat = b"".join(raw for kind, raw in chunks(other) if kind == b"IDAT")
    out, done = [signed[:8]], False
    for kind, raw in chunks(signed):
        if kind == b"IDAT":
            if not done:
                out.append(new_idat)
                done = True
        else:
            out.append(raw)
    return b"".join(out)


def test_signing_key_never_reaches_outputs_or_logs(build: CliBuild, pki: Pki) -> None:
    body = b"".join(
        line for line in pki.key_pem.splitlines() if line and not line.startswith(b"-----")
    )
    secrets = [pki.key_pem, body, body[:40]]
    for secret in secrets:
        assert secret.decode() not in build.stdout and secret.decode() not in build.stderr
        for p in build.out.rglob("*"):
            if p.is_file():
                assert secret not in p.read_bytes(), p
    text = (build.out / "manifest.json").read_text()
    c2pa = json.loads(text)["recipe"]["output"]["c2pa"]
    assert c2pa["key_env"] == KEY_ENV and c2pa.get("key") is None  # the variable's name only
    assert str(pki.key) not in text


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_sign_and_read_each_format(pki: Pki, fmt: str) -> None:
    pixels = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    data = encode_image(pixels, fmt)
    config = SigningConfig(str(pki.chain), None, str(pki.key), None)
    from synthgen.storage.c2pa_sign import _signer

    signed = sign_image(data, fmt, manifest_definition(fmt, {"key": "k"}), _signer(config))
    cred = read_credentials(signed, pki.ca.read_bytes())
    assert cred.valid and cred.trusted and cred.provenance == {"key": "k"}
    assert np.array_equal(
        np.asarray(Image.open(io.BytesIO(signed)).convert("RGB")),
        np.asarray(Image.open(io.BytesIO(data)).convert("RGB")),
    )
    assert not read_credentials(signed + b"x").hash_ok
    assert not read_credentials(data).present


def test_bad_credentials_fail_before_any_output(
    model_dir: Path, pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    data = signed_recipe(model_dir, pki)
    with pytest.raises(RecipeError, match=f"environment variable {KEY_ENV} is not set"):
        run_build(data, tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out").exists()
    monkeypatch.setenv(
        KEY_ENV, "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n"
    )
    with pytest.raises(RecipeError, match=r"refused|signing failed") as err:
        run_build(data, tmp_path / "out", show_progress=False)
    assert "not a key" not in str(err.value)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="exactly one of key or key_env"):
        Recipe.model_validate(
            signed_recipe(model_dir, pki, cert_chain=str(pki.chain), key=str(pki.key), key_env="X")
        )
    assert signing_config(None, tmp_path) is None
