"""CMS SignedData built around one token signature, checked by openssl cms -verify."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import SoftHsm, openssl_cms_verify

DEV = ("--mode", "development")


def _cert(softhsm: SoftHsm, uri: str, path: Path) -> Path:
    done = softhsm.run_cli("cert", *DEV, "--uri", uri, "--subject", "CN=cms test", "--output", str(path))
    assert done.returncode == 0, done.stderr
    return path


_openssl_verify = openssl_cms_verify


def _load(path: Path) -> object:
    from hsmsign.formats import cms

    return cms.read_certificate_file(str(path))


@pytest.mark.parametrize(
    ("key", "key_type", "scheme", "hash_alg"),
    [
        ("rsa2048", "rsa:2048", None, "sha256"),
        ("rsa2048", "rsa:2048", "pss", "sha256"),
        ("rsa2048", "rsa:2048", None, "sha512"),
        ("ec256", "ec:secp256r1", None, "sha256"),
        ("ec384", "ec:secp384r1", None, "sha384"),
    ],
)
@pytest.mark.parametrize("signed_attrs", [True, False])
def test_openssl_accepts_and_rejects(
    softhsm: SoftHsm,
    tmp_path: Path,
    key: str,
    key_type: str,
    scheme: str | None,
    hash_alg: str,
    signed_attrs: bool,
) -> None:
    from hsmsign import token
    from hsmsign.formats import cms

    uri = softhsm.keygen(key, key_type)
    cert_path = _cert(softhsm, uri, tmp_path / "c.pem")
    content = tmp_path / "content"
    content.write_bytes(os.urandom(5000) + b"\r\n\x00binary")
    with token.open_key(uri, mode="development") as signer:
        der = cms.sign_detached(
            signer,
            cert=_load(cert_path),
            content=content.read_bytes(),
            hash_alg=hash_alg,
            scheme=scheme,
            signed_attrs=signed_attrs,
        )
    sig = tmp_path / "content.p7s"
    sig.write_bytes(der)
    ok = _openssl_verify(sig, content, cert_path)
    assert ok.returncode == 0, ok.stderr
    printed = subprocess.run(
        ["openssl", "cms", "-cmsout", "-print", "-inform", "DER", "-in", str(sig)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "eContent: <ABSENT>" in printed
    assert ("messageDigest" in printed) == signed_attrs
    if scheme == "pss":
        assert "rsassaPss" in printed
    content.write_bytes(content.read_bytes()[:-1] + b"X")
    bad = _openssl_verify(sig, content, cert_path)
    assert bad.returncode != 0
    with pytest.raises(Exception) as err:
        cms.verify_detached(der, content=content.read_bytes(), trusted=[_load(cert_path)])
    assert type(err.value).__name__ == "VerificationError"


def test_same_shape_as_openssl_cms_sign(softhsm: SoftHsm, rsa2048: str, tmp_path: Path) -> None:
    """Same shape as 'openssl cms -sign -binary -outform DER -nosmimecap' (throwaway software key)."""
    from asn1crypto import cms as acms
    from hsmsign import token
    from hsmsign.formats import cms

    content = tmp_path / "sw-description"
    content.write_bytes(b'software = { version = "1"; };\n')
    key = tmp_path / "throwaway.key"  # made now, in tmp, only to get openssl's reference output
    ref_cert = tmp_path / "ref.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-subj",
            "/CN=ref",
            "-days",
            "1",
            "-out",
            str(ref_cert),
        ],
        capture_output=True,
        check=True,
    )
    ref = tmp_path / "ref.sig"
    subprocess.run(
        [
            "openssl",
            "cms",
            "-sign",
            "-binary",
            "-outform",
            "DER",
            "-nosmimecap",
            "-in",
            str(content),
            "-signer",
            str(ref_cert),
            "-inkey",
            str(key),
            "-out",
            str(ref),
        ],
        capture_output=True,
        check=True,
    )
    key.unlink()
    cert_path = _cert(softhsm, rsa2048, tmp_path / "c.pem")
    with token.open_key(rsa2048, mode="development") as signer:
        ours = cms.sign_detached(signer, cert=_load(cert_path), content=content.read_bytes())

    def shape(der: bytes) -> dict:
        ci = acms.ContentInfo.load(der)
        sd = ci["content"]
        si = sd["signer_infos"][0]
        return {
            "type": ci["content_type"].native,
            "version": sd["version"].native,
            "digests": [d["algorithm"].native for d in sd["digest_algorithms"]],
            "econtent": sd["encap_content_info"]["content"].native,
            "etype": sd["encap_content_info"]["content_type"].native,
            "ncerts": len(sd["certificates"]),
            "si_version": si["version"].native,
            "sid": si["sid"].name,
            "attrs": sorted(a["type"].native for a in si["signed_attrs"]),
            "sigalg": si["signature_algorithm"]["algorithm"].native,
            "unsigned": si["unsigned_attrs"].native,
        }

    assert shape(ours) == shape(ref.read_bytes())
    assert shape(ours)["attrs"] == ["content_type", "message_digest", "signing_time"]


def test_reproducible_with_source_date_epoch(
    softhsm: SoftHsm, rsa2048: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hsmsign import token
    from hsmsign.formats import cms

    cert = _load(_cert(softhsm, rsa2048, tmp_path / "c.pem"))
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    with token.open_key(rsa2048, mode="development") as signer:
        a = cms.sign_detached(signer, cert=cert, content=b"x")
        b = cms.sign_detached(signer, cert=cert, content=b"x")
    # RSA PKCS#1 v1.5 is deterministic: same time, same content -> same bytes
    assert a == b
    res = cms.verify_detached(a, content=b"x", trusted=[cert])
    assert int(res.signing_time.timestamp()) == 1700000000


def test_trust_is_checked(softhsm: SoftHsm, rsa2048: str, ec256: str, tmp_path: Path) -> None:
    from hsmsign import token
    from hsmsign.errors import VerificationError
    from hsmsign.formats import cms

    mine = _load(_cert(softhsm, rsa2048, tmp_path / "a.pem"))
    other = _load(_cert(softhsm, ec256, tmp_path / "b.pem"))
    with token.open_key(rsa2048, mode="development") as signer:
        der = cms.sign_detached(signer, cert=mine, content=b"payload")
    assert cms.verify_detached(der, content=b"payload", trusted=[mine]).hash_alg == "sha256"
    with pytest.raises(VerificationError, match="not trusted"):
        cms.verify_detached(der, content=b"payload", trusted=[other])


_FUZZ_SEED: dict[str, bytes] = {}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_cms_parse_and_verify(
    softhsm: SoftHsm, rsa2048: str, tmp_path: Path, data: st.DataObject
) -> None:
    """Mutated or random signatures only ever raise VerificationError."""
    from hsmsign import token
    from hsmsign.errors import VerificationError
    from hsmsign.formats import cms

    if "der" not in _FUZZ_SEED:
        path = _cert(softhsm, rsa2048, tmp_path / "fuzz.pem")
        _FUZZ_SEED["cert"] = path.read_bytes()
        with token.open_key(rsa2048, mode="development") as signer:
            _FUZZ_SEED["der"] = cms.sign_detached(
                signer, cert=cms.load_certificate(path.read_bytes()), content=b"fuzz"
            )
    der = bytearray(_FUZZ_SEED["der"])
    cert = cms.load_certificate(_FUZZ_SEED["cert"])
    kind = data.draw(st.sampled_from(["flip", "truncate", "random", "splice"]))
    if kind == "flip":
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(der) - 1))
            der[i] ^= data.draw(st.integers(1, 255))
    elif kind == "truncate":
        der = der[: data.draw(st.integers(0, len(der) - 1))]
    elif kind == "random":
        der = bytearray(data.draw(st.binary(max_size=400)))
    else:
        i = data.draw(st.integers(0, len(der)))
        der[i:i] = data.draw(st.binary(min_size=1, max_size=20))
    try:
        result = cms.verify_detached(bytes(der), content=b"fuzz", trusted=[cert])
    except VerificationError as exc:
        assert exc.message and "\n" not in exc.message
        return
    # a mutation that still verifies touched only bytes outside what is signed (e.g. the time's encoding
    # in an unsigned place); the signer must still be the trusted certificate
    assert result.certificate == cert


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    content=st.binary(max_size=2000),
    hash_alg=st.sampled_from(["sha256", "SHA384", "sha512", "md5", "sha1", ""]),
    scheme=st.sampled_from([None, "pss", "pkcs1v15", "ecdsa", "bogus"]),
    signed_attrs=st.booleans(),
    digest_len=st.one_of(st.none(), st.integers(0, 70)),
)
def test_fuzz_cms_building(
    softhsm: SoftHsm,
    rsa2048: str,
    tmp_path: Path,
    content: bytes,
    hash_alg: str,
    scheme: str | None,
    signed_attrs: bool,
    digest_len: int | None,
) -> None:
    """Any option mix gives a signature that verifies, or an HsmsignError; never another exception."""
    from hsmsign import token
    from hsmsign.errors import HsmsignError
    from hsmsign.formats import cms

    if "cert" not in _FUZZ_SEED:
        _FUZZ_SEED["cert"] = _cert(softhsm, rsa2048, tmp_path / "fuzz.pem").read_bytes()
    cert = cms.load_certificate(_FUZZ_SEED["cert"])
    kwargs: dict = {"content": content} if digest_len is None else {"content_digest": bytes(digest_len)}
    try:
        with token.open_key(rsa2048, mode="development") as signer:
            der = cms.sign_detached(
                signer, cert=cert, hash_alg=hash_alg, scheme=scheme, signed_attrs=signed_attrs, **kwargs
            )
    except HsmsignError as exc:
        assert exc.message and "\n" not in exc.message
        return
    result = cms.verify_detached(der, trusted=[cert], **kwargs)
    assert result.hash_alg == hash_alg.lower()


@pytest.mark.parametrize("epoch", ["946684800", "4102444800"])  # 2000 (UTCTime) and 2100 (GeneralizedTime)
def test_signing_time_encodings(
    softhsm: SoftHsm, rsa2048: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, epoch: str
) -> None:
    from hsmsign import token
    from hsmsign.formats import cms

    cert_path = _cert(softhsm, rsa2048, tmp_path / "c.pem")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", epoch)
    content = tmp_path / "content"
    content.write_bytes(b"time")
    with token.open_key(rsa2048, mode="development") as signer:
        der = cms.sign_detached(signer, cert=_load(cert_path), content=b"time")
    sig = tmp_path / "t.p7s"
    sig.write_bytes(der)
    assert _openssl_verify(sig, content, cert_path).returncode == 0
    res = cms.verify_detached(der, content=b"time", trusted=[_load(cert_path)])
    assert int(res.signing_time.timestamp()) == int(epoch)


def test_embedded_certificate_with_invalid_version_is_a_verification_error(
    softhsm: SoftHsm, rsa2048: str, tmp_path: Path
) -> None:
    """Found by the fuzz test above: cryptography raised InvalidVersion (not a ValueError)."""
    from hsmsign import token
    from hsmsign.errors import VerificationError
    from hsmsign.formats import cms

    path = _cert(softhsm, rsa2048, tmp_path / "v.pem")
    with token.open_key(rsa2048, mode="development") as signer:
        der = cms.sign_detached(signer, cert=cms.load_certificate(path.read_bytes()), content=b"x")
    version_v3 = bytes.fromhex("a003020102")  # [0] EXPLICIT INTEGER 2 (X.509 v3) in the embedded cert
    at = der.find(version_v3)
    assert at > 0
    broken = der[: at + 4] + b"\x03" + der[at + 5 :]
    with pytest.raises(VerificationError) as info:
        cms.verify_detached(broken, content=b"x", trusted=[cms.load_certificate(path.read_bytes())])
    assert "malformed certificate" in info.value.message
