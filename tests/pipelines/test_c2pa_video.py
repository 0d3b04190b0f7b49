"""C2PA content credentials on MP4 clips: signed with the same manifest as an image, read back
valid and bound to the clip's bytes, and checked by `synthgen verify` on a signing video build."""

from __future__ import annotations

import json
import struct
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from synthgen.pipelines.build import run_build
from synthgen.pipelines.cli import main
from synthgen.pipelines.verify import verify
from synthgen.storage.c2pa_sign import (
    DIGITAL_SOURCE_TYPE,
    SigningConfig,
    _signer,
    manifest_definition,
    read_credentials,
    sign_image,
    sniff_format,
)
from synthgen.storage.codecs import video_codec
from tests.conftest import read_rows, tiny_recipe_dict, write_recipe
from tests.pipelines.test_c2pa import Pki, make_pki
from tests.video import clip_recipe

PROVENANCE = {"key": "clip-7", "seed": 7, "recipe_hash": "ab" * 32, "encoded_sha256": "cd" * 32}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _frames() -> np.ndarray:
    return (np.random.default_rng(0).random((8, 16, 16, 3)) * 255).astype(np.uint8)


def _sign(data: bytes, pki: Pki) -> bytes:
    signer = _signer(SigningConfig(str(pki.chain), None, str(pki.key), None))
    return sign_image(data, "mp4", manifest_definition("mp4", PROVENANCE), signer)


def _boxes(data: bytes) -> dict[bytes, tuple[int, int]]:
    """The top-level ISO BMFF boxes of an MP4: type -> (offset, size)."""
    boxes, at = {}, 0
    while at < len(data):
        size, kind = struct.unpack(">I4s", data[at : at + 8])
        boxes[kind] = (at, size)
        at += size
    return boxes


@pytest.mark.parametrize("fmt", ["mp4", "mp4-lossless"])
def test_a_signed_clip_reads_back_valid_with_its_provenance(pki: Pki, fmt: str) -> None:
    codec = video_codec(fmt, 8)
    data = codec.encode(_frames())
    assert not read_credentials(data).present  # an unsigned clip: no credentials, no error
    signed = _sign(data, pki)
    assert sniff_format(signed) == "mp4" and b"uuid" in _boxes(signed)
    cred = read_credentials(signed, pki.ca.read_bytes())
    assert cred.error is None, cred.error
    assert cred.valid and cred.hash_ok and cred.trusted and cred.state == "Trusted"
    assert cred.digital_source_type == DIGITAL_SOURCE_TYPE
    assert cred.provenance == PROVENANCE
    assert cred.signer == "synthgen test signer"
    # without a trust list the clip still binds; the signer is merely not known
    untrusted = read_credentials(signed)
    assert untrusted.valid and untrusted.trusted is None
    # the signed clip decodes to the frames of the clip before signing
    assert np.array_equal(np.asarray(codec.decode(signed)), np.asarray(codec.decode(data)))


def test_a_changed_byte_of_the_frames_or_their_tables_breaks_the_binding(pki: Pki) -> None:
    signed = _sign(video_codec("mp4", 8).encode(_frames()), pki)
    boxes = _boxes(signed)
    for kind in (b"mdat", b"moov"):
        offset, size = boxes[kind]
        tampered = bytearray(signed)
        tampered[offset + size - 1] ^= 0x01
        cred = read_credentials(bytes(tampered))
        assert cred.present and cred.error is None, (kind, cred)
        assert not cred.hash_ok and not cred.valid, kind
        assert "assertion.bmffHash.mismatch" in cred.failures, (kind, cred.failures)
    appended = read_credentials(signed + b"x")
    assert appended.present and not appended.hash_ok
    # a clip cut short does not read: reported as unreadable, not as tampering
    cut = read_credentials(signed[:100])
    assert cut.error is not None and "MP4 clip" in cut.error


# -- a signing video build, checked by `synthgen verify` ----------------------------------------


def _clips(out: Path) -> dict[str, bytes]:
    clips = {}
    for tar in sorted(out.glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf:
                if m.name.endswith(".mp4"):
                    member = tf.extractfile(m)
                    assert member is not None
                    clips[m.name.partition(".")[0]] = member.read()
    return clips


def _video_recipe(model_dir: Path, folder: Path, pki: Pki) -> dict[str, Any]:
    data = clip_recipe(folder, "animatediff", model_dir, fps=12)
    data["seed"] = 3
    data["count_per_class"] = 1
    c2pa = {"cert_chain": str(pki.chain), "key": str(pki.key)}
    data["output"] = {**tiny_recipe_dict(model_dir)["output"], "c2pa": c2pa}
    return data


def test_a_signing_video_build_verifies_and_a_changed_clip_fails(
    model_dir: Path, pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from synthgen.generators.random_pipelines import save_snapshot

    folder = save_snapshot("animatediff", tmp_path / "animatediff", seed=0)
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path / "recipe.yaml", _video_recipe(model_dir, folder, pki))
    run_build(recipe, out, show_progress=False)
    rows = {r["key"]: r for r in read_rows(out).to_pylist()}
    clips = _clips(out)
    assert clips and set(clips) == {k for k, r in rows.items() if r["status"] == "accepted"}
    recipe_hash = json.loads((out / "manifest.json").read_text())["recipe_hash"]
    for key, data in clips.items():
        cred = read_credentials(data, pki.ca.read_bytes())
        assert cred.valid and cred.trusted, (key, cred)
        assert cred.digital_source_type == DIGITAL_SOURCE_TYPE
        prov = cred.provenance or {}
        assert (prov["key"], prov["seed"]) == (key, rows[key]["seed"])
        assert prov["recipe_hash"] == recipe_hash
        assert prov["encoded_sha256"] != rows[key]["image_sha256"]  # the clip before signing
    result = verify(out, trust_list=pki.ca)
    assert result.ok and result.signed, result.to_json()
    assert {(i.c2pa, i.watermark) for i in result.images} == {
        ("valid, trusted", "not carried (lossy video)")
    }
    remade = verify(out, trust_list=pki.ca, regenerate=True)  # every clip made again
    assert remade.ok and {i.regenerated for i in remade.images} == {"identical"}, [
        (i.key, i.regenerated, i.problems) for i in remade.images
    ]
    assert main(["verify", str(out), "--json", "--trust-list", str(pki.ca)]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    # `synthgen regenerate` makes the clip before signing again, the one its credentials name
    key, data = sorted(clips.items())[0]
    assert main(["regenerate", str(out), key]) == 0
    assert "matches" in capsys.readouterr().out
    offset, size = _boxes(data)[b"mdat"]
    tampered = bytearray(data)
    tampered[offset + size // 2] ^= 0x01
    path = tmp_path / f"{key}.mp4"
    path.write_bytes(bytes(tampered))
    changed = verify(path, build=out)
    assert not changed.ok
    assert any("hash binding broken" in p for p in changed.images[0].problems)
    assert main(["verify", str(path), "--build", str(out)]) == 1
