"""The known-public-key denylist and the patterned-key rules."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hsmsign import known_keys

ROOT = Path(__file__).resolve().parents[2]
GENERATOR = ROOT / "scripts" / "update-known-keys"

# Checked facts (shared/FACTS.md): fingerprints of published keys and where they live.
FACTS = {
    "5f7c50e793c142244a545bdd455f14aa2a4df44eabdceef21b53e97825786dcd": "bcmns3/fit/keys/dev.key",
    "00acfeb4d70d02eeabb36d01690d2b450f471ad40f7fde5f8247673567ddc0b0": "arch/arm/mach-k3/keys/custMpk",
    "d7ea6035b786bc3ee6a33d361d4027f6d9e29faa2e8b77aa940ea7d2fb873ef0": "dev.key",
    "b0f382091297d83a377a72471bec3273e99232e24959f65e8b4a4a46d8229ada": "arm_rotprivk_rsa.pem",
    "cac7bcfaf8674a57e5eaa8ef1a7c9b67af1fd5562a06440d88d5e3c632e88c48": "keys/default.pem",
    "a14bcb1bf9bb821146ba32838217e476f5412621320534ffe490a1890c994660": "root-",
    "8fb6bad671cfe698393c453357da61b56d757ab8c0f3fb9c87f2849e63131878": "RFC 9500",
}


def spki_sha256(key: object) -> str:
    der = key.public_key().public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def test_denylist_is_broad_and_well_formed() -> None:
    doc = json.loads(Path(known_keys.DATA_FILE).read_text())
    pubs = doc["public_keys"]
    assert len(pubs) >= 500
    repos = {s["repo"] for e in pubs for s in e["sources"] if "repo" in s}
    assert {
        "u-boot/u-boot",
        "ARM-software/arm-trusted-firmware",
        "OP-TEE/optee_os",
        "mcu-tools/mcuboot",
        "rauc/rauc",
        "openembedded/openembedded-core",
    } <= repos
    for e in pubs:
        assert re.fullmatch(r"[0-9a-f]{64}", e["spki_sha256"])
        assert e["algo"] in {"rsa", "ec", "ed25519", "ed448", "dsa"}
        assert e["sources"], e
        for src in e["sources"]:
            assert ("repo" in src and "path" in src and re.fullmatch(r"[0-9a-f]{40}", src["commit"])) or (
                "document" in src
            )
    assert len(doc["symmetric_keys"]) >= 10
    raw = Path(known_keys.DATA_FILE).read_text()
    assert "PRIVATE" + " KEY-----" not in raw and "MII" not in raw  # fingerprints only, no key material


@pytest.mark.parametrize("fp,where", sorted(FACTS.items()))
def test_facts_fingerprints_are_listed_with_their_source(fp: str, where: str) -> None:
    hit = known_keys.lookup_spki_sha256(fp)
    assert hit is not None
    assert hit.kind == "public-key"
    assert where in hit.where()
    assert where in hit.source


def test_fingerprint_forms_are_normalised() -> None:
    fp = "5f7c50e793c142244a545bdd455f14aa2a4df44eabdceef21b53e97825786dcd"
    colons = ":".join(fp[i : i + 2] for i in range(0, 64, 2)).upper()
    for form in (fp.upper(), colons, "sha256:" + fp, f"  {fp}\n"):
        hit = known_keys.lookup_spki_sha256(form)
        assert hit is not None and hit.fingerprint == fp
    assert known_keys.lookup_spki_sha256("not-a-fingerprint") is None
    assert known_keys.lookup_spki_sha256(fp[:-2]) is None


def test_fresh_keys_are_not_known() -> None:
    for key in (
        rsa.generate_private_key(65537, 2048),
        ec.generate_private_key(ec.SECP256R1()),
        ed25519.Ed25519PrivateKey.generate(),
    ):
        assert known_keys.lookup_spki_sha256(spki_sha256(key)) is None


def test_published_symmetric_keys() -> None:
    nist = known_keys.lookup_symmetric(bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c"))
    assert (
        nist is not None and nist.kind == "symmetric" and "800-38A" in nist.description and nist.bits == 128
    )
    swu = known_keys.lookup_symmetric(
        bytes.fromhex("390ad54490a4a5f53722291023c19e08ffb5c4677a59e958c96ffa6e641df040")
    )
    assert swu is not None and swu.kind == "symmetric" and "swupdate" in swu.where()
    binman = known_keys.lookup_symmetric(b"1234567890abcdefghijklmnopqrstuv")
    assert binman is not None and binman.bits == 256


@pytest.mark.parametrize(
    "key,why",
    [
        (bytes(16), "all zero"),
        (b"\xaa" * 32, "repeated byte"),
        (bytes.fromhex("deadbeef") * 4, "pattern repeated"),
        (bytes(range(5, 37)), "ascending"),
        (bytes(range(200, 184, -1)), "descending"),
        (b"correct horse battery staple!!!!", "ASCII"),
    ],
)
def test_patterned_keys(key: bytes, why: str) -> None:
    hit = known_keys.lookup_symmetric(key)
    assert hit is not None and hit.kind == "patterned"
    assert why in hit.description


def test_random_keys_are_not_flagged() -> None:
    # a random 16-byte key is printable ASCII with probability (95/256)^16 ~ 1e-7: retry is not needed
    for size in (16, 24, 32):
        assert known_keys.lookup_symmetric(os.urandom(size)) is None


def test_data_file_can_be_swapped(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    fp = spki_sha256(key)
    data = tmp_path / "kk.json"
    data.write_text(
        json.dumps(
            {
                "public_keys": [
                    {
                        "spki_sha256": fp,
                        "algo": "ec",
                        "bits": 256,
                        "curve": "secp256r1",
                        "sources": [{"repo": "x/y", "path": "k.pem", "commit": "0" * 40}],
                    }
                ]
            }
        )
    )
    hit = known_keys.lookup_spki_sha256(fp, data_file=str(data))
    assert hit is not None and hit.curve == "secp256r1" and hit.where() == "x/y: k.pem"
    assert known_keys.lookup_spki_sha256(fp) is None


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(repo), *args],
        check=True,
        capture_output=True,
        env={
            **os.environ,
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@e",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@e",
        },
    )


def test_generator_reproduces_fingerprints_from_a_tree(tmp_path: Path) -> None:
    """scripts/update-known-keys finds keys in every encoding a tree holds them, keeps only fingerprints."""
    repo = tmp_path / "src"
    (repo / "keys").mkdir(parents=True)
    nosec = serialization.NoEncryption()
    k_pkcs1 = rsa.generate_private_key(65537, 2048)
    (repo / "keys" / "dev.key").write_bytes(
        k_pkcs1.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, nosec
        )
    )
    k_p8 = ec.generate_private_key(ec.SECP384R1())
    (repo / "keys" / "p8.pem").write_bytes(
        k_p8.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, nosec)
    )
    k_enc = ec.generate_private_key(ec.SECP256R1())
    (repo / "keys" / "enc.pem").write_bytes(
        k_enc.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"PolarSSLTest"),
        )
    )
    k_der = rsa.generate_private_key(3, 1024)  # noqa: S505 - a weak key, as published test trees hold
    (repo / "keys" / "raw.der").write_bytes(
        k_der.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, nosec)
    )
    k_ssh = ed25519.Ed25519PrivateKey.generate()
    (repo / "keys" / "id_ed25519").write_bytes(
        k_ssh.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, nosec)
    )
    k_c = ec.generate_private_key(ec.SECP256R1())
    pem_lines = (
        k_c.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, nosec)
        .decode()
        .splitlines()
    )
    (repo / "test_keys.c").write_text(
        "static const char key[] =\n" + "\n".join(f'    "{ln}\\n"' for ln in pem_lines) + ";\n"
        'static const char *aes = "2b7e151628aed2a6abf7158809cf4f3c";\n'
    )
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "keys")
    out = tmp_path / "out.json"
    proc = subprocess.run(
        [sys.executable, str(GENERATOR), "--output", str(out), f"acme/src={repo / '.git'}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    got = {e["spki_sha256"]: e for e in doc["public_keys"]}
    expected = {
        spki_sha256(k_pkcs1): ("keys/dev.key", "rsa"),
        spki_sha256(k_p8): ("keys/p8.pem", "ec"),
        spki_sha256(k_enc): ("keys/enc.pem", "ec"),
        spki_sha256(k_der): ("keys/raw.der", "rsa"),
        spki_sha256(k_ssh): ("keys/id_ed25519", "ed25519"),
        spki_sha256(k_c): ("test_keys.c", "ec"),
    }
    for fp, (path, algo) in expected.items():
        assert fp in got, path
        assert got[fp]["algo"] == algo
        assert got[fp]["sources"][0]["path"] == path and got[fp]["sources"][0]["repo"] == "acme/src"
    assert got[spki_sha256(k_der)]["exponent"] == 3 and got[spki_sha256(k_der)]["bits"] == 1024
    assert got[spki_sha256(k_p8)]["curve"] == "secp384r1"
    sym = {s["hex"]: s for s in doc["symmetric_keys"]}
    assert sym["2b7e151628aed2a6abf7158809cf4f3c"]["sources"][0]["path"] == "test_keys.c"
    text = out.read_text()
    assert "PRIVATE" not in text and "BEGIN" not in text
    # --merge onto its own output adds nothing and keeps the counts
    again = tmp_path / "again.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(GENERATOR),
            "--merge",
            str(out),
            "--output",
            str(again),
            f"acme/src={repo / '.git'}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(again.read_text())["public_keys"] == doc["public_keys"]
