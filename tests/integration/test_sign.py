"""The signing core against a real SoftHSMv2 token, checked by openssl and cryptography."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils

from tests.conftest import SoftHsm, require

SPY = "/usr/lib/x86_64-linux-gnu/pkcs11/pkcs11-spy.so"


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    path = tmp_path / "rootfs.ext4"
    path.write_bytes(os.urandom(3 << 20) + b"tail")
    return path


def _pubkey(softhsm: SoftHsm, uri: str, tmp_path: Path) -> Path:
    pub = tmp_path / "pub.pem"
    done = softhsm.run_cli("pubkey", "--uri", uri, "--mode", "development", "--output", str(pub))
    assert done.returncode == 0, done.stderr
    return pub


def _openssl_verify(
    pub: Path, sig: Path, data: Path, hash_alg: str, *sigopts: str
) -> subprocess.CompletedProcess:
    cmd = ["openssl", "dgst", f"-{hash_alg}", "-verify", str(pub), "-signature", str(sig)]
    for opt in sigopts:
        cmd += ["-sigopt", opt]
    return subprocess.run([*cmd, str(data)], capture_output=True, text=True, check=False)


@pytest.mark.parametrize(
    ("key_type", "hash_alg", "scheme"),
    [
        ("rsa:2048", "sha256", "pkcs1v15"),
        ("rsa:2048", "sha384", "pkcs1v15"),
        ("rsa:2048", "sha512", "pkcs1v15"),
        ("rsa:2048", "sha256", "pss"),
        ("rsa:2048", "sha512", "pss"),
        ("rsa:3072", "sha256", "pkcs1v15"),
        ("rsa:4096", "sha384", "pss"),
    ],
)
def test_rsa_signature_accepted_by_openssl(
    softhsm: SoftHsm, artifact: Path, tmp_path: Path, key_type: str, hash_alg: str, scheme: str
) -> None:
    uri = softhsm.keygen(key_type.replace(":", ""), key_type)
    sig = tmp_path / "rootfs.sig"
    done = softhsm.run_cli(
        "sign",
        "--mode",
        "development",
        "--uri",
        uri,
        "--hash",
        hash_alg,
        "--scheme",
        scheme,
        "--output",
        str(sig),
        str(artifact),
    )
    assert done.returncode == 0, done.stderr
    assert sig.stat().st_size == int(key_type.split(":")[1]) // 8
    pub = _pubkey(softhsm, uri, tmp_path)
    opts = []
    if scheme == "pss":
        salt = {"sha256": 32, "sha384": 48, "sha512": 64}[hash_alg]
        opts = ["rsa_padding_mode:pss", f"rsa_pss_saltlen:{salt}", f"rsa_mgf1_md:{hash_alg}"]
    ok = _openssl_verify(pub, sig, artifact, hash_alg, *opts)
    assert ok.returncode == 0 and "Verified OK" in ok.stdout, ok.stdout + ok.stderr
    # one changed byte and openssl refuses
    data = bytearray(artifact.read_bytes())
    data[12345] ^= 1
    tampered = tmp_path / "tampered"
    tampered.write_bytes(bytes(data))
    assert _openssl_verify(pub, sig, tampered, hash_alg, *opts).returncode != 0


@pytest.mark.parametrize(
    ("curve", "hash_alg", "size"), [("secp256r1", "sha256", 32), ("secp384r1", "sha384", 48)]
)
def test_ecdsa_der_and_raw(
    softhsm: SoftHsm, artifact: Path, tmp_path: Path, curve: str, hash_alg: str, size: int
) -> None:
    uri = softhsm.keygen(f"ec-{curve}", f"ec:{curve}")
    pub = _pubkey(softhsm, uri, tmp_path)
    der = tmp_path / "sig.der"
    raw = tmp_path / "sig.raw"
    for fmt, out in (("der", der), ("raw", raw)):
        done = softhsm.run_cli(
            "sign",
            "--mode",
            "development",
            "--uri",
            uri,
            "--hash",
            hash_alg,
            "--format",
            fmt,
            "-o",
            str(out),
            str(artifact),
        )
        assert done.returncode == 0, done.stderr
    ok = _openssl_verify(pub, der, artifact, hash_alg)
    assert ok.returncode == 0, ok.stderr
    raw_sig = raw.read_bytes()
    assert len(raw_sig) == 2 * size
    public = serialization.load_pem_public_key(pub.read_bytes())
    assert isinstance(public, ec.EllipticCurvePublicKey)
    digest = hashlib.new(hash_alg, artifact.read_bytes()).digest()
    hash_obj = hashes.SHA256() if hash_alg == "sha256" else hashes.SHA384()
    r, s = int.from_bytes(raw_sig[:size], "big"), int.from_bytes(raw_sig[size:], "big")
    public.verify(utils.encode_dss_signature(r, s), digest, ec.ECDSA(utils.Prehashed(hash_obj)))


def test_ed25519_where_the_token_offers_it(softhsm: SoftHsm, tmp_path: Path) -> None:
    own = softhsm.own_token("edwards-keys")  # libp11 0.4.12 cannot list a token with one in it
    try:
        uri = own.keygen("ed25519", "ed25519")
    except Exception as exc:  # noqa: BLE001 - SoftHSM built without EdDSA
        pytest.skip(f"this SoftHSM cannot make Ed25519 keys: {exc}")
    data = tmp_path / "small.bin"
    data.write_bytes(b"boot script\n" * 100)
    sig = tmp_path / "small.sig"
    done = softhsm.run_cli("sign", "--mode", "development", "--uri", uri, "-o", str(sig), str(data))
    assert done.returncode == 0, done.stderr
    pub = _pubkey(softhsm, uri, tmp_path)
    ok = subprocess.run(
        [
            "openssl",
            "pkeyutl",
            "-verify",
            "-pubin",
            "-inkey",
            str(pub),
            "-rawin",
            "-in",
            str(data),
            "-sigfile",
            str(sig),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr


def test_info_and_pubkey_agree_on_the_fingerprint(softhsm: SoftHsm, rsa2048: str, tmp_path: Path) -> None:
    info = softhsm.run_cli("info", "--uri", rsa2048, "--mode", "development", "--json")
    assert info.returncode == 0, info.stderr
    data = json.loads(info.stdout)
    der = softhsm.run_cli(
        "pubkey",
        "--uri",
        rsa2048,
        "--mode",
        "development",
        "--format",
        "der",
        "-o",
        str(tmp_path / "pub.der"),
    )
    assert der.returncode == 0
    assert data["fingerprint"] == hashlib.sha256((tmp_path / "pub.der").read_bytes()).hexdigest()
    assert data["key"]["type"] == "rsa" and data["key"]["size"] == 2048
    assert data["token"]["software"] is True


def test_token_listing_without_object(softhsm: SoftHsm, rsa2048: str) -> None:
    done = softhsm.run_cli("info", "--uri", softhsm.uri(), "--mode", "development", "--json")
    assert done.returncode == 0, done.stderr
    labels = {k["label"] for k in json.loads(done.stdout)["keys"]}
    assert "rsa2048" in labels


# ------------------------------------------------------------------ interop with pkcs11-tool


def test_interop_with_pkcs11_tool_both_ways(softhsm: SoftHsm, artifact: Path, tmp_path: Path) -> None:
    # a key made by pkcs11-tool, signed with by hsmsign
    made = softhsm.pkcs11_tool(
        "--keypairgen", "--key-type", "EC:prime256v1", "--label", "p11tool-ec", "--id", "a1b2"
    )
    assert made.returncode == 0, made.stderr
    uri = softhsm.uri("p11tool-ec")
    sig = tmp_path / "a.sig"
    done = softhsm.run_cli("sign", "--mode", "development", "--uri", uri, "-o", str(sig), str(artifact))
    assert done.returncode == 0, done.stderr
    assert _openssl_verify(_pubkey(softhsm, uri, tmp_path), sig, artifact, "sha256").returncode == 0
    # a key made by hsmsign, signed with by pkcs11-tool, verified with hsmsign's exported public key
    uri = softhsm.keygen("hsmsign-made", "rsa:2048", key_id=bytes.fromhex("c3d4"))
    p11sig = tmp_path / "b.sig"
    done = softhsm.pkcs11_tool(
        "--sign",
        "--mechanism",
        "SHA256-RSA-PKCS",
        "--id",
        "c3d4",
        "--input-file",
        str(artifact),
        "--output-file",
        str(p11sig),
    )
    assert done.returncode == 0, done.stderr
    assert _openssl_verify(_pubkey(softhsm, uri, tmp_path), p11sig, artifact, "sha256").returncode == 0
    # and both produce the same deterministic PKCS#1 v1.5 signature
    ours = tmp_path / "c.sig"
    assert (
        softhsm.run_cli(
            "sign", "--mode", "development", "--uri", uri, "-o", str(ours), str(artifact)
        ).returncode
        == 0
    )
    assert ours.read_bytes() == p11sig.read_bytes()


def test_generated_keys_are_sensitive_and_never_extractable(softhsm: SoftHsm, rsa2048: str) -> None:
    out = softhsm.pkcs11_tool("--list-objects", "--type", "privkey", "--label", "rsa2048")
    assert out.returncode == 0, out.stderr
    # pkcs11-tool may list every private key; look at the block of ours
    blocks = [b for b in out.stdout.split("Private Key Object") if "label:      rsa2048\n" in b]
    assert len(blocks) == 1, out.stdout
    block = blocks[0]
    assert "sensitive" in block and "never extractable" in block
    usage = block.split("Usage:")[1].split("\n")[0]
    assert "sign" in usage
    assert "decrypt" not in usage and "unwrap" not in usage and "derive" not in usage


# ------------------------------------------------------------------ PIN sources


def test_pin_from_environment_variable(
    softhsm: SoftHsm, rsa2048: str, artifact: Path, tmp_path: Path
) -> None:
    uri = softhsm.uri("rsa2048", with_query=False) + f"?module-path={softhsm.module}"
    pin = softhsm.pin_file.read_text().strip()
    done = softhsm.run_cli(
        "sign",
        "--mode",
        "development",
        "--uri",
        uri,
        "--pin-env",
        "CI_HSM_PIN",
        "-o",
        str(tmp_path / "s"),
        str(artifact),
        env={"CI_HSM_PIN": pin},
    )
    assert done.returncode == 0, done.stderr
    missing = softhsm.run_cli(
        "sign",
        "--mode",
        "development",
        "--uri",
        uri,
        "--pin-env",
        "NOT_SET_HERE",
        "-o",
        str(tmp_path / "t"),
        str(artifact),
    )
    assert missing.returncode == 2
    assert "NOT_SET_HERE is not set" in missing.stderr
    assert not (tmp_path / "t").exists()


def test_pin_from_program(softhsm: SoftHsm, rsa2048: str, artifact: Path, tmp_path: Path) -> None:
    uri = (
        softhsm.uri("rsa2048", with_query=False)
        + f"?module-path={softhsm.module}&pin-source=|/bin/cat%20{softhsm.pin_file}"
    )
    done = softhsm.run_cli(
        "sign", "--mode", "development", "--uri", uri, "-o", str(tmp_path / "s"), str(artifact)
    )
    assert done.returncode == 0, done.stderr


def test_pin_value_refused_in_production_accepted_in_development(
    softhsm: SoftHsm, rsa2048: str, artifact: Path, tmp_path: Path
) -> None:
    pin = softhsm.pin_file.read_text().strip()
    uri = softhsm.uri("rsa2048", with_query=False) + f"?module-path={softhsm.module}&pin-value={pin}"
    prod = softhsm.run_cli(
        "sign", "--mode", "production", "--uri", uri, "-o", str(tmp_path / "p"), str(artifact)
    )
    assert prod.returncode == 4
    assert "pin-source=file:" in prod.stderr
    assert pin not in prod.stderr + prod.stdout
    assert not (tmp_path / "p").exists()
    dev = softhsm.run_cli(
        "sign", "--mode", "development", "--uri", uri, "-o", str(tmp_path / "d"), str(artifact)
    )
    assert dev.returncode == 0, dev.stderr


def test_wrong_pin_is_reported_once_and_never_retried(
    softhsm: SoftHsm, rsa2048: str, artifact: Path, tmp_path: Path
) -> None:
    require(os.path.exists(SPY), "pkcs11-spy (OpenSC)", "apt-get install opensc-pkcs11")
    bad = tmp_path / "bad-pin"
    bad.write_text("not-the-pin\n")
    log = tmp_path / "spy.log"
    uri = softhsm.uri("rsa2048", with_query=False) + f"?module-path={SPY}&pin-source=file:{bad}"
    done = softhsm.run_cli(
        "sign",
        "--mode",
        "development",
        "--uri",
        uri,
        "-o",
        str(tmp_path / "s"),
        str(artifact),
        env={"PKCS11SPY": softhsm.module, "PKCS11SPY_OUTPUT": str(log)},
    )
    assert done.returncode == 3
    assert "PIN rejected" in done.stderr and "not retried" in done.stderr
    assert "not-the-pin" not in done.stderr
    assert "Traceback" not in done.stderr
    assert log.read_text().count("C_Login") == 1
    assert not (tmp_path / "s").exists()


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("case", "code", "needle"),
    [
        ("missing-module", 2, "does not exist"),
        ("not-a-module", 3, "cannot load PKCS#11 module"),
        ("no-token", 3, "no token matches"),
        ("missing-key", 3, "no private key matches"),
        ("secret-key-for-signing", 3, "no private key matches"),
        ("malformed-uri", 2, "not a PKCS#11 URI"),
        ("unknown-attribute", 2, "does not know: label"),
        ("public-object", 2, "needs the private key"),
        ("unreadable-file", 2, "no such file"),
        ("no-key-named", 2, "names no key"),
    ],
)
def test_bad_input_one_line_exit_code_no_output(
    softhsm: SoftHsm, rsa2048: str, artifact: Path, tmp_path: Path, case: str, code: int, needle: str
) -> None:
    softhsm.keygen("aes-for-sign-test", "aes:256")
    q = f"?module-path={softhsm.module}&pin-source=file:{softhsm.pin_file}"
    not_module = tmp_path / "libnot-pkcs11.so"
    not_module.write_bytes(b"\x7fELF but not really")
    uris = {
        "missing-module": f"pkcs11:token={softhsm.token_label};object=rsa2048"
        "?module-path=/nonexistent/lib.so",
        "not-a-module": f"pkcs11:token={softhsm.token_label};object=rsa2048?module-path={not_module}",
        "no-token": f"pkcs11:token=no-such-token;object=rsa2048{q}",
        "missing-key": f"pkcs11:token={softhsm.token_label};object=no-such-key{q}",
        "secret-key-for-signing": f"pkcs11:token={softhsm.token_label};object=aes-for-sign-test{q}",
        "malformed-uri": "token=x;object=y",
        "unknown-attribute": f"pkcs11:token={softhsm.token_label};label=rsa2048{q}",
        "public-object": f"pkcs11:token={softhsm.token_label};object=rsa2048;type=public{q}",
        "unreadable-file": rsa2048,
        "no-key-named": f"pkcs11:token={softhsm.token_label}{q}",
    }
    target = str(tmp_path / "missing.bin") if case == "unreadable-file" else str(artifact)
    out = tmp_path / "out.sig"
    done = softhsm.run_cli("sign", "--mode", "development", "--uri", uris[case], "-o", str(out), target)
    assert done.returncode == code, done.stderr
    assert needle in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("hsmsign: error: ")
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".hsmsign-tmp-")]


def test_two_keys_with_one_label_are_refused(softhsm: SoftHsm, artifact: Path, tmp_path: Path) -> None:
    softhsm.keygen("twin", "ec:secp256r1", key_id=b"\x01")
    # hsmsign keygen refuses a duplicate label, so make the twin with pkcs11-tool
    made = softhsm.pkcs11_tool("--keypairgen", "--key-type", "EC:prime256v1", "--label", "twin", "--id", "02")
    assert made.returncode == 0, made.stderr
    done = softhsm.run_cli(
        "sign",
        "--mode",
        "development",
        "--uri",
        softhsm.uri("twin"),
        "-o",
        str(tmp_path / "s"),
        str(artifact),
    )
    assert done.returncode == 3
    assert "refusing to guess" in done.stderr and "id=" in done.stderr
    ok = softhsm.run_cli(
        "sign",
        "--mode",
        "development",
        "--uri",
        softhsm.uri("twin", id="%02"),
        "-o",
        str(tmp_path / "s"),
        str(artifact),
    )
    assert ok.returncode == 0, ok.stderr


def test_production_refuses_development_token(
    softhsm: SoftHsm, rsa2048: str, artifact: Path, tmp_path: Path
) -> None:
    done = softhsm.run_cli(
        "sign", "--mode", "production", "--uri", rsa2048, "-o", str(tmp_path / "s"), str(artifact)
    )
    assert done.returncode == 4
    assert "software token" in done.stderr
    assert not (tmp_path / "s").exists()
    allowed = softhsm.run_cli(
        "sign",
        "--mode",
        "production",
        "--uri",
        rsa2048,
        "-o",
        str(tmp_path / "s"),
        str(artifact),
        env={"HSMSIGN_ALLOW_SOFTWARE_TOKEN": "1"},
    )
    assert allowed.returncode == 0, allowed.stderr
    assert "SOFTWARE token" in allowed.stderr


def test_pinned_fingerprint_mismatch_is_refused(
    softhsm: SoftHsm, rsa2048: str, ec256: str, artifact: Path, tmp_path: Path
) -> None:
    info = json.loads(softhsm.run_cli("info", "--uri", ec256, "--mode", "development", "--json").stdout)
    env = {"HSMSIGN_ALLOW_SOFTWARE_TOKEN": "1", "HSMSIGN_PUBKEY_SHA256": info["fingerprint"]}
    wrong = softhsm.run_cli(
        "sign", "--mode", "production", "--uri", rsa2048, "-o", str(tmp_path / "s"), str(artifact), env=env
    )
    assert wrong.returncode == 4 and "pinned" in wrong.stderr
    right = softhsm.run_cli(
        "sign", "--mode", "production", "--uri", ec256, "-o", str(tmp_path / "s"), str(artifact), env=env
    )
    assert right.returncode == 0, right.stderr


# ------------------------------------------------------------------ doctor, dev-init, in-process API


def test_doctor_reports_each_step(softhsm: SoftHsm, rsa2048: str) -> None:
    ok = softhsm.run_cli("doctor", "--uri", rsa2048, "--mode", "development", "--json")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    checks = {c["check"]: c["ok"] for c in json.loads(ok.stdout)["checks"]}
    assert checks == {
        "uri": True,
        "module": True,
        "token": True,
        "login": True,
        "key": True,
        "policy": True,
        "sign": True,
        "libp11": True,
    }
    bad = softhsm.run_cli("doctor", "--uri", softhsm.uri("nope"), "--mode", "development")
    assert bad.returncode == 3
    assert "[FAIL] key" in bad.stdout and "->" in bad.stdout
    prod = softhsm.run_cli("doctor", "--uri", rsa2048, "--mode", "production")
    assert prod.returncode == 4
    assert "[FAIL] policy" in prod.stdout and "software token" in prod.stdout


def test_doctor_signs_with_an_ed25519_key_and_names_what_libp11_cannot_list(
    softhsm: SoftHsm, rsa2048: str
) -> None:
    """An Ed25519 key gets a real test signature (pure EdDSA), and its token the note that tools
    going through libp11 before 0.4.18 find no key on it; the shared token (RSA and EC only) not."""
    own = softhsm.own_token("edwards-keys")
    try:
        uri = own.keygen("ed25519", "ed25519")
    except Exception as exc:  # noqa: BLE001 - SoftHSM built without EdDSA
        pytest.skip(f"this SoftHSM cannot make Ed25519 keys: {exc}")
    done = softhsm.run_cli("doctor", "--uri", uri, "--mode", "development", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    checks = {c["check"]: c for c in json.loads(done.stdout)["checks"]}
    assert checks["key"]["detail"].startswith("ed25519: ed25519 256") and checks["sign"]["ok"]
    assert "the token holds 'ed25519' (Ed25519/Ed448)" in checks["libp11"]["detail"]
    plain = softhsm.run_cli("doctor", "--uri", rsa2048, "--mode", "development")
    assert "[ok  ] libp11         every key on the token is one libp11 lists" in plain.stdout, plain.stdout


def test_doctor_checks_the_certificates_of_the_key(
    softhsm: SoftHsm, rsa2048: str, ec256: str, tmp_path: Path
) -> None:
    """--cert: each certificate must carry the key's public half (exit 2 otherwise); its expiry is
    told, with the signing commands' warning when it is near."""
    mine, soon, other = tmp_path / "mine.pem", tmp_path / "soon.pem", tmp_path / "other.pem"
    for uri, path, days in ((rsa2048, mine, "365"), (rsa2048, soon, "10"), (ec256, other, "365")):
        common = ("--mode", "development", "--uri", uri, "--subject", "CN=t")
        made = softhsm.run_cli("cert", *common, "--days", days, "--output", str(path))
        assert made.returncode == 0, made.stderr
    doctor = ("doctor", "--uri", rsa2048, "--mode", "development")
    ok = softhsm.run_cli(*doctor, "--cert", str(mine), "--cert", str(soon))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    lines = [line for line in ok.stdout.splitlines() if line.startswith("[ok  ] cert")]
    assert len(lines) == 2 and f"{mine} belongs to the key, valid until " in lines[0], ok.stdout
    assert "note:" not in lines[0] and f"(note: {soon} expires on " in lines[1], ok.stdout
    bad = softhsm.run_cli(*doctor, "--cert", str(other))
    assert bad.returncode == 2, bad.stdout + bad.stderr
    assert f"[FAIL] cert           {other}: the certificate does not belong to the token key" in bad.stdout


def test_dev_init_is_idempotent_and_marked(softhsm: SoftHsm, tmp_path: Path, artifact: Path) -> None:
    env = {"HSMSIGN_DEV_HOME": str(tmp_path / "dev"), "SOFTHSM2_CONF": ""}
    first = softhsm.run_cli("dev-init", "--json", env=env)
    assert first.returncode == 0, first.stderr
    made = json.loads(first.stdout)
    assert made["created_token"] is True
    assert {e["label"] for e in made["keys"].values()} >= {
        "dev-uboot",
        "dev-spl",
        "dev-fitimage",
        "dev-rootfs",
        "dev-swupdate",
        "dev-encrypt",
    }
    again = softhsm.run_cli("dev-init", "--json", env=env)
    second = json.loads(again.stdout)
    assert second["created_token"] is False
    assert not any(e["created"] for e in second["keys"].values())
    assert second["keys"]["uboot"]["fingerprint"] == made["keys"]["uboot"]["fingerprint"]
    envlines = softhsm.run_cli("dev-init", "--print-env", env=env).stdout
    assert "HSM_PKCS11_URI_ROOTFS=" in envlines and "pin-value" not in envlines
    # a development key signs in development and is refused in production, even with software tokens allowed
    env2 = {"SOFTHSM2_CONF": made["conf"], "HSMSIGN_ALLOW_SOFTWARE_TOKEN": "1"}
    uri = made["keys"]["rootfs"]["uri"]
    dev = softhsm.run_cli(
        "sign", "--mode", "development", "--uri", uri, "-o", str(tmp_path / "s"), str(artifact), env=env2
    )
    assert dev.returncode == 0, dev.stderr
    prod = softhsm.run_cli(
        "sign", "--mode", "production", "--uri", uri, "-o", str(tmp_path / "p"), str(artifact), env=env2
    )
    assert prod.returncode == 4 and "development key" in prod.stderr


def test_in_process_session_is_reused(softhsm: SoftHsm, rsa2048: str) -> None:
    from hsmsign import token

    with token.open_key(rsa2048, mode="development") as a, token.open_key(rsa2048, mode="development") as b:
        assert a._opened is b._opened
        sig = a.sign_digest(hashlib.sha256(b"x").digest(), "sha256")
        a.public_key().verify(sig, b"x", padding.PKCS1v15(), hashes.SHA256())


def test_module_name_and_p11kit_proxy_resolve_like_p11kit(
    softhsm: SoftHsm, rsa2048: str, artifact: Path, tmp_path: Path
) -> None:
    from hsmsign import token

    require(
        os.path.exists("/usr/share/p11-kit/modules/softhsm2.module"),
        "p11-kit softhsm2 module config",
        "apt-get install softhsm2 p11-kit",
    )
    require(token.p11kit_proxy_path() is not None, "p11-kit-proxy", "apt-get install p11-kit-modules")
    q = f"?pin-source=file:{softhsm.pin_file}"
    by_name = softhsm.run_cli(
        "sign",
        "--mode",
        "development",
        "--uri",
        f"pkcs11:token={softhsm.token_label};object=rsa2048{q}&module-name=softhsm2",
        "-o",
        str(tmp_path / "a"),
        str(artifact),
    )
    assert by_name.returncode == 0, by_name.stderr
    # no module anywhere: the p11-kit proxy finds the token through p11-kit's module configs
    env = {"HSM_PKCS11_MODULE": ""}
    proxied = softhsm.run_cli(
        "sign",
        "--mode",
        "development",
        "--uri",
        f"pkcs11:token={softhsm.token_label};object=rsa2048{q}",
        "-o",
        str(tmp_path / "b"),
        str(artifact),
        env=env,
    )
    assert proxied.returncode == 0, proxied.stderr
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()  # PKCS#1 v1.5 is deterministic
    # HSM_PKCS11_MODULE is used when the URI names no module
    via_env = softhsm.run_cli(
        "info",
        "--mode",
        "development",
        "--json",
        "--uri",
        f"pkcs11:token={softhsm.token_label};object=rsa2048{q}",
        env={"HSM_PKCS11_MODULE": softhsm.module},
    )
    assert json.loads(via_env.stdout)["token"]["module"] == softhsm.module
    unknown = softhsm.run_cli(
        "info",
        "--mode",
        "development",
        "--uri",
        f"pkcs11:token={softhsm.token_label};object=rsa2048{q}&module-name=no-such-module",
    )
    assert unknown.returncode == 2 and "no-such-module" in unknown.stderr
