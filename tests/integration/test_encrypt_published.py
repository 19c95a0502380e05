"""A published AES key imported into the token, and published IVs: production refuses, development warns.

The key's value is never read back: hsmsign recognises it by its check block (AES_K of a zero block),
computed by the token. The published values come from hsmsign's own list (known_keys.json) and are
imported into the SoftHSM test token at run time.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import SoftHsm

ALLOW = "HSMSIGN_ALLOW_SOFTWARE_TOKEN"
SWUPDATE_DOC_KEY = "swupdate documentation AES-256 key"


def _listed(name_part: str) -> bytes:
    from hsmsign import known_keys

    with open(known_keys.DATA_FILE, encoding="utf-8") as fh:
        entries = json.load(fh)["symmetric_keys"]
    return bytes.fromhex(next(e["hex"] for e in entries if name_part in e["name"]))


def import_aes(softhsm: SoftHsm, label: str, value: bytes) -> str:
    """Create a token AES key with this (published) value, as a careless integrator would."""
    from hsmsign import token
    from hsmsign.uri import Pkcs11Uri
    from pkcs11 import Attribute, KeyType, ObjectClass

    uri = softhsm.uri(label)
    opened = token.open_token(Pkcs11Uri.parse(uri), None, None, "development", rw=True)
    if not list(opened.session.get_objects({Attribute.LABEL: label})):
        opened.session.create_object(
            {
                Attribute.CLASS: ObjectClass.SECRET_KEY,
                Attribute.KEY_TYPE: KeyType.AES,
                Attribute.VALUE: value,
                Attribute.LABEL: label,
                Attribute.ID: label.encode()[:8],
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.ENCRYPT: True,
                Attribute.DECRYPT: True,
            }
        )
    return uri


def _encrypt(uri: str, tmp_path: Path, mode: str, *extra: str) -> tuple[int, str]:
    from hsmsign.cli import main

    plain = tmp_path / "image.bin"
    plain.write_bytes(b"firmware" * 100)
    out = tmp_path / "image.bin.enc"
    if out.exists():
        out.unlink()
    code = main(["encrypt", "--mode", mode, "--uri", uri, "--in", str(plain), "--out", str(out), *extra])
    return code, str(out)


KEYS = [
    ("imported-fw-key", lambda: _listed(SWUPDATE_DOC_KEY), "swupdate documentation"),
    ("imported-fips197-128", lambda: _listed("FIPS-197 AES-128 key"), "FIPS-197"),
    ("imported-sp800-38a-192", lambda: _listed("NIST SP 800-38A AES-192"), "SP 800-38A AES-192"),
    ("imported-gcm-256", lambda: _listed("GCM specification AES-256"), "GCM specification"),
    ("imported-zero-256", lambda: bytes(32), "all zero bytes"),
    ("imported-repeated-128", lambda: b"\x5a" * 16, "repeated byte"),
    ("imported-ascending-256", lambda: bytes(range(0x10, 0x30)), "ascending bytes"),
]


@pytest.mark.parametrize(("label", "value", "why"), KEYS, ids=[k[0] for k in KEYS])
def test_published_token_key_refused_in_production_warned_in_development(
    softhsm: SoftHsm,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    label: str,
    value: object,
    why: str,
) -> None:
    monkeypatch.setenv("SOFTHSM2_CONF", str(softhsm.conf))
    monkeypatch.setenv(ALLOW, "1")  # so the refusal below is the published key's, not the software token's
    uri = import_aes(softhsm, label, value())  # type: ignore[operator]
    code, out = _encrypt(uri, tmp_path, "production")
    err = capsys.readouterr().err
    assert code == 4, err
    assert "published key" in err and why in err and "anyone can decrypt" in err, err
    assert value().hex() not in err  # type: ignore[operator]
    assert not Path(out).exists()
    code, out = _encrypt(uri, tmp_path, "development")
    err = capsys.readouterr().err
    assert code == 0, err
    assert "warning" in err and "published key" in err and why in err
    assert Path(out).stat().st_size == 816


def test_check_block_is_what_the_token_computes(softhsm: SoftHsm, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fingerprint hsmsign compares is SHA-256 of AES_K(0^16), and the token's own
    CKA_CHECK_VALUE is that block's first 3 bytes: the value computed from the published key
    and the one computed inside the token meet."""
    import hashlib

    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from hsmsign import token
    from hsmsign.formats import encrypt as enc
    from pkcs11 import Attribute

    monkeypatch.setenv("SOFTHSM2_CONF", str(softhsm.conf))
    value = _listed(SWUPDATE_DOC_KEY)
    uri = import_aes(softhsm, "imported-fw-key", value)
    encryptor = Cipher(algorithms.AES(value), modes.ECB()).encryptor()  # noqa: S305 - one block
    block = encryptor.update(bytes(16)) + encryptor.finalize()
    with token.open_secret_key(uri, mode="development") as aes:
        assert aes.fingerprint == hashlib.sha256(block).hexdigest() == enc.check_block_fingerprint(value)
        assert bytes(aes._key[Attribute.CHECK_VALUE]) == block[:3]
        assert enc.published_key(aes.fingerprint, aes.key_size) is not None
        assert enc.published_key(aes.fingerprint, 128) is None  # compared with keys of its own size only


def test_fresh_token_key_passes_in_production(
    softhsm: SoftHsm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SOFTHSM2_CONF", str(softhsm.conf))
    monkeypatch.setenv(ALLOW, "1")
    uri = softhsm.keygen("fw-encrypt-fresh", "aes:256")
    code, out = _encrypt(uri, tmp_path, "production")
    err = capsys.readouterr().err
    assert code == 0, err
    assert "published" not in err
    assert Path(out).stat().st_size == 816


IVS = [
    ("swupdate-doc-iv", lambda: _listed("swupdate documentation IV").hex(), "swupdate documentation IV"),
    ("sp800-38a-iv", lambda: "000102030405060708090a0b0c0d0e0f", "SP 800-38A"),
    ("zero-iv", lambda: "00" * 16, "all zero"),
    ("repeated-iv", lambda: "a5" * 16, "repeated byte"),
    ("published-key-as-iv", lambda: _listed("RFC 3602 AES-128-CBC test case 2").hex(), "RFC 3602"),
    ("ascii-iv", lambda: b"0123456789abcdef".hex(), "printable ASCII"),
    ("descending-iv", lambda: bytes(range(0x8F, 0x7F, -1)).hex(), "descending"),
]


@pytest.mark.parametrize(("name", "iv", "why"), IVS, ids=[i[0] for i in IVS])
def test_published_iv_refused_in_production_warned_in_development(
    softhsm: SoftHsm,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    name: str,
    iv: object,
    why: str,
) -> None:
    monkeypatch.setenv("SOFTHSM2_CONF", str(softhsm.conf))
    monkeypatch.setenv(ALLOW, "1")
    uri = softhsm.keygen("fw-encrypt-fresh", "aes:256")
    code, out = _encrypt(uri, tmp_path, "production", "--iv", iv())  # type: ignore[operator]
    err = capsys.readouterr().err
    assert code == 4, err
    assert "published example or a pattern" in err and why in err, err
    assert not Path(out).exists()
    code, out = _encrypt(uri, tmp_path, "development", "--iv", iv())  # type: ignore[operator]
    err = capsys.readouterr().err
    assert code == 0 and "warning" in err and why in err, err
    assert Path(out).exists()
