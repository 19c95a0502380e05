"""Production policy against real keys: a key U-Boot publishes, a site denylist, development keys."""

from __future__ import annotations

import glob
import hashlib
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tests.conftest import SoftHsm, require

ALLOW = {"HSMSIGN_ALLOW_SOFTWARE_TOKEN": "1"}


def _published_keys() -> list[Path]:
    explicit = os.environ.get("HSMSIGN_UBOOT_TOOLS")
    cache = os.environ.get("HSMSIGN_CACHE", os.path.expanduser("~/.cache/hsmsign"))
    dirs = [explicit] if explicit else sorted(glob.glob(os.path.join(cache, "uboot-tools", "*")))
    for d in dirs:
        keys = sorted(Path(d, "published-keys").glob("*"))
        if keys:
            return keys
    return []


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    path = tmp_path / "u-boot.itb"
    path.write_bytes(os.urandom(64 << 10))
    return path


def test_a_key_published_in_the_uboot_tree_is_refused_in_production(
    softhsm: SoftHsm, artifact: Path, tmp_path: Path
) -> None:
    """Like the head-unit incident: someone imports an example key into a real token."""
    keys = _published_keys()
    require(
        bool(keys),
        "U-Boot's published example keys (from Debian's u-boot source)",
        "run scripts/deps/fit.setup (./scripts/install-deps does)",
        env="HSMSIGN_REQUIRE_TOOLS",
    )
    key_file = keys[0]
    private = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    spki = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    fingerprint = hashlib.sha256(spki).hexdigest()
    # import it into the token (DER private key, and its public half) as an innocent-looking label
    der = tmp_path / "k.der"
    der.write_bytes(
        private.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    pub = tmp_path / "k.pub.der"
    pub.write_bytes(spki)
    for kind, path in (("privkey", der), ("pubkey", pub)):
        done = softhsm.pkcs11_tool(
            "--write-object",
            str(path),
            "--type",
            kind,
            "--label",
            "acme-fw-2024",
            "--id",
            "7a01",
            "--usage-sign",
        )
        assert done.returncode == 0, done.stderr
    der.unlink()
    uri = softhsm.uri("acme-fw-2024")
    info = softhsm.run_cli("info", "--uri", uri, "--mode", "development", "--json")
    assert fingerprint in info.stdout

    prod = softhsm.run_cli(
        "sign", "--mode", "production", "--uri", uri, "-o", str(tmp_path / "p.sig"), str(artifact), env=ALLOW
    )
    assert prod.returncode == 4, prod.stderr
    assert "published" in prod.stderr and "u-boot" in prod.stderr.lower()
    assert not (tmp_path / "p.sig").exists()
    # development mode signs (developers may test with anything) but says what production will say
    dev = softhsm.run_cli(
        "sign", "--mode", "development", "--uri", uri, "-o", str(tmp_path / "d.sig"), str(artifact)
    )
    assert dev.returncode == 0, dev.stderr
    assert "warning" in dev.stderr and "published" in dev.stderr
    # and the leak audit recognises the key file itself
    audit = softhsm.run_cli("audit", str(key_file.parent))
    assert audit.returncode != 0
    assert key_file.name in audit.stdout


def test_site_denylist_refuses_a_revoked_key(softhsm: SoftHsm, artifact: Path, tmp_path: Path) -> None:
    uri = softhsm.keygen("revoked-2025", "ec:secp256r1")
    info = softhsm.run_cli("info", "--uri", uri, "--mode", "development", "--json")
    import json

    fp = json.loads(info.stdout)["fingerprint"]
    denylist = tmp_path / "revoked.txt"
    denylist.write_text(f"# keys we revoked\nsha256:{fp.upper()}  # laptop stolen 2025-03\n")
    env = {**ALLOW, "HSMSIGN_DENYLIST": str(denylist)}
    done = softhsm.run_cli(
        "sign", "--mode", "production", "--uri", uri, "-o", str(tmp_path / "s"), str(artifact), env=env
    )
    assert done.returncode == 4
    assert "laptop stolen" in done.stderr
    missing = softhsm.run_cli(
        "sign",
        "--mode",
        "production",
        "--uri",
        uri,
        "-o",
        str(tmp_path / "s"),
        str(artifact),
        env={**ALLOW, "HSMSIGN_DENYLIST": str(tmp_path / "nope.txt")},
    )
    assert missing.returncode == 4 and "cannot read the site denylist" in missing.stderr
    assert not (tmp_path / "s").exists()
    clean = softhsm.run_cli(
        "sign", "--mode", "production", "--uri", uri, "-o", str(tmp_path / "s"), str(artifact), env=ALLOW
    )
    assert clean.returncode == 0, clean.stderr
