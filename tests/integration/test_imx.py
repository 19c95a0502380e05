"""NXP i.MX boot images signed through the token (SPSDK, ``hsmsign imx``), checked by NXP's tooling.

AHAB (i.MX 93): ``nxpimage ahab verify`` accepts the containers ``hsmsign imx ahab sign``
signed with SoftHSM keys, and refuses one changed byte, another SRK table, and a
signature made by another key. HAB (SPSDK builds HAB for i.MX RT; i.MX 8M's HAB4 CSF is
the same format): the image built through the token is byte-identical to SPSDK's own
with the same key from a file (a scratch key made here, imported into the scratch
token, deleted), and its CMS signature checks with openssl against the SRK certificate.
SPSDK 3.12's ``nxpimage hab verify`` checks the layout, not the signatures, so the
refusals are checked with openssl.

SPSDK is the optional extra ``hsmsign[nxp]``: without it these tests skip, unless
HSMSIGN_REQUIRE_SPSDK=1 (the CI step that installs it), where they fail. NXP's CLI runs
in this process (``spsdk.apps.nxpimage``, through click) to pay SPSDK's import once.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SoftHsm

pytestmark = pytest.mark.imx

try:
    import spsdk  # noqa: F401

    HAVE_SPSDK = True
except ImportError:
    HAVE_SPSDK = False


@pytest.fixture(scope="module", autouse=True)
def _need_spsdk() -> None:
    if HAVE_SPSDK:
        return
    if os.environ.get("HSMSIGN_REQUIRE_SPSDK") == "1":
        pytest.fail(
            "SPSDK is required here (HSMSIGN_REQUIRE_SPSDK=1) but not importable: pip install 'hsmsign[nxp]'"
        )
    pytest.skip("SPSDK not installed (optional extra): pip install 'hsmsign[nxp]' to run the i.MX tests")


FAMILY_AHAB = "mimx9352"
FAMILY_HAB = "mimxrt1060"
DEV = ["--mode", "development"]


def nxpimage(*argv: str) -> tuple[int, str]:
    """NXP's own 'nxpimage' command line, in this process."""
    from click.testing import CliRunner
    from spsdk.apps.nxpimage import main

    result = CliRunner().invoke(main, list(argv), catch_exceptions=True)
    return result.exit_code, result.output


def hsmsign(*argv: str) -> tuple[int, str, str]:
    """'hsmsign ARGV' in this process (SPSDK is imported once for the whole module)."""
    import contextlib
    import io

    from hsmsign.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data, indent=1))  # JSON is YAML; SPSDK reads both
    return path


# --------------------------------------------------------------------------- AHAB


@pytest.fixture(scope="module")
def ahab(softhsm: SoftHsm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("ahab")
    srk_uris = [softhsm.keygen(f"imx-srk{i}", "ec:secp384r1") for i in range(4)]
    other = softhsm.keygen("imx-other", "ec:secp384r1")
    for i, uri in enumerate([*srk_uris, other]):
        rc, _, err = hsmsign("pubkey", "--uri", uri, "-o", str(work / f"k{i}.pub"), *DEV)
        assert rc == 0, err
    payload = work / "payload.bin"
    payload.write_bytes(os.urandom(4096))
    export = {
        "family": FAMILY_AHAB,
        "revision": "latest",
        "target_memory": "standard",
        "output": str(work / "unsigned.bin"),
        "containers": [
            {
                "container": {
                    "srk_set": "none",
                    "images": [
                        {
                            "image_path": str(payload),
                            "load_address": "0x1FFC0000",
                            "entry_point": "0x1FFC0000",
                            "image_type": "executable",
                            "core_id": "cortex-m33",
                        }
                    ],
                }
            }
        ],
    }
    rc, out = nxpimage("ahab", "export", "-c", str(write_yaml(work / "export.yaml", export)))
    assert rc == 0, out

    def sign_config(name: str, keys: list[int]) -> Path:
        return write_yaml(
            work / name,
            {
                "family": FAMILY_AHAB,
                "revision": "latest",
                "srk_set": "oem",
                "used_srk_id": 0,
                # what the template says: the command puts the token key in its place
                "signer": "type=file;file_path=my_prv_key.pem",
                "srk_table": {"srk_array": [f"k{i}.pub" for i in keys]},
            },
        )

    yield {
        "work": work,
        "uris": srk_uris,
        "other": other,
        "payload": payload,
        "unsigned": work / "unsigned.bin",
        "config": sign_config("sign.yaml", [0, 1, 2, 3]),
        "config_other": sign_config("sign-other.yaml", [4, 1, 2, 3]),
    }


def ahab_verify(path: Path) -> tuple[int, str]:
    return nxpimage("ahab", "verify", "-f", FAMILY_AHAB, "-b", str(path))


@pytest.fixture(scope="module")
def ahab_signed(softhsm: SoftHsm, ahab: dict[str, Any]) -> dict[str, Any]:
    work = ahab["work"]
    out = work / "signed.bin"
    rc, stdout, err = hsmsign(
        "imx", "ahab", "sign", "--uri", ahab["uris"][0], "--config", str(ahab["config"]),
        "-o", str(out), str(ahab["unsigned"]), "--json", *DEV,
    )  # fmt: skip
    assert rc == 0, err
    rc, stdout_srk, err = hsmsign(
        "imx", "srk", "--kind", "ahab", "--table", str(work / "srk.bin"), "--fuses", str(work / "fuses.txt"),
        *ahab["uris"], "--json", *DEV,
    )  # fmt: skip
    assert rc == 0, err
    return {"image": out, "sign": json.loads(stdout), "srk": json.loads(stdout_srk)}


def test_ahab_image_signed_in_the_token_passes_nxpimage_verify(
    ahab: dict[str, Any], ahab_signed: dict[str, Any]
) -> None:
    rc, out = ahab_verify(ahab_signed["image"])
    assert rc == 0, out[-2000:]
    assert "Signed by OEM keys" in out
    # the unsigned input is no signed container: the signature is ours
    assert "Signed by OEM keys" not in ahab_verify(ahab["unsigned"])[1]
    # 'hsmsign imx srk' made the same SRK table and the fuse words nxpimage prints for the image
    table = (ahab["work"] / "srk.bin").read_bytes()
    assert table in ahab_signed["image"].read_bytes()
    assert ahab_signed["srk"]["srk_hash"] == ahab_signed["sign"]["srk_hash"]
    for word in ahab_signed["srk"]["fuse_words"]:
        assert f"Value: {word}" in out, word


def test_ahab_one_changed_byte_is_refused(ahab: dict[str, Any], ahab_signed: dict[str, Any]) -> None:
    data = ahab_signed["image"].read_bytes()
    at = data.find(ahab["payload"].read_bytes()[:64])
    assert at > 0
    for offset in (at + 1000, 0x10):  # the payload, and the signed container header
        bad = bytearray(data)
        bad[offset] ^= 0x01
        path = ahab["work"] / f"flip-{offset:x}.bin"
        path.write_bytes(bytes(bad))
        rc, out = ahab_verify(path)
        assert rc != 0, f"a changed byte at 0x{offset:x} was accepted"



def test_outputs_never_replace_the_configuration_or_each_other(ahab: dict[str, Any]) -> None:
    """Before SPSDK or the token: --output onto the SPSDK configuration, two SRK outputs onto one file."""
    work, config = ahab["work"], ahab["config"]
    before = config.read_bytes()
    for argv, said in (
        (["imx", "ahab", "sign", "--uri", ahab["uris"][0], "--config", str(config), "-o", str(config),
          str(ahab["unsigned"])], "is also --config"),
        (["imx", "hab", "sign", "--uri", ahab["uris"][0], "--config", str(config), "-o", str(config)],
         "is also --config"),
        (["imx", "srk", "--kind", "ahab", "--table", str(work / "t.bin"), "--fuses", str(work / "t.bin"),
          *ahab["uris"]], "--table and --fuses name one file"),
    ):  # fmt: skip
        rc, _, err = hsmsign(*argv, *DEV)
        assert rc == 2 and said in err and "Traceback" not in err, err
    assert config.read_bytes() == before and not (work / "t.bin").exists()

def test_ahab_another_srk_table_is_refused(ahab: dict[str, Any], ahab_signed: dict[str, Any]) -> None:
    work = ahab["work"]
    rc, stdout, err = hsmsign(
        "imx", "srk", "--kind", "ahab", "--table", str(work / "srk-other.bin"),
        "--fuses", str(work / "fuses-other.txt"), ahab["other"], *ahab["uris"][1:], "--json", *DEV,
    )  # fmt: skip
    assert rc == 0, err
    assert json.loads(stdout)["srk_hash"] != ahab_signed["srk"]["srk_hash"]
    table, other = (work / "srk.bin").read_bytes(), (work / "srk-other.bin").read_bytes()
    assert len(table) == len(other)
    swapped = work / "swapped-table.bin"
    swapped.write_bytes(ahab_signed["image"].read_bytes().replace(table, other))
    rc, out = ahab_verify(swapped)
    assert rc != 0, "the image verified against an SRK table it was not signed for"


def test_ahab_container_signed_by_another_key_is_refused(
    ahab: dict[str, Any], ahab_signed: dict[str, Any]
) -> None:
    from spsdk.image.ahab.ahab_image import AHABImage
    from spsdk.utils.family import FamilyRevision

    work = ahab["work"]
    by_other = work / "by-other.bin"
    rc, _, err = hsmsign(
        "imx", "ahab", "sign", "--uri", ahab["other"], "--config", str(ahab["config_other"]),
        "-o", str(by_other), str(ahab["unsigned"]), *DEV,
    )  # fmt: skip
    assert rc == 0, err
    assert ahab_verify(by_other)[0] == 0  # a good image of its own SRK table

    def signature(path: Path) -> bytes:
        image = AHABImage.parse(path.read_bytes(), family=FamilyRevision(FAMILY_AHAB))
        return bytes(image.ahab_containers[0].signature_block.signature.signature_data)

    ours, theirs = signature(ahab_signed["image"]), signature(by_other)
    assert ours != theirs and len(ours) == len(theirs)
    forged = work / "forged.bin"
    forged.write_bytes(ahab_signed["image"].read_bytes().replace(ours, theirs))
    rc, out = ahab_verify(forged)
    assert rc != 0, "a container signature made by a key outside the SRK table was accepted"


def test_ahab_token_key_must_be_the_selected_srk(ahab: dict[str, Any]) -> None:
    out = ahab["work"] / "mismatch.bin"
    rc, _, err = hsmsign(
        "imx", "ahab", "sign", "--uri", ahab["other"], "--config", str(ahab["config"]),
        "-o", str(out), str(ahab["unsigned"]), *DEV,
    )  # fmt: skip
    assert rc != 0 and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 2, err
    assert not out.exists()


def test_ahab_pin_in_the_configuration_is_refused_in_production(
    softhsm: SoftHsm, ahab: dict[str, Any], tmp_path: Path
) -> None:
    config = tmp_path / "pin.yaml"
    text = (
        ahab["config"]
        .read_text()
        .replace(
            "type=file;file_path=my_prv_key.pem",
            "type=pkcs11;so_path=/usr/lib/softhsm/libsofthsm2.so;pin=1234",
        )
    )
    config.write_text(text)
    out = tmp_path / "o.bin"
    done = softhsm.run_cli(
        "imx", "ahab", "sign", "--uri", ahab["uris"][0], "--config", str(config), "-o", str(out),
        str(ahab["unsigned"]), "--mode", "production",
    )  # fmt: skip
    assert done.returncode == 4, done.stderr
    assert "holds a PIN" in done.stderr and "1234" not in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()
    audit = softhsm.run_cli("audit", str(config))
    assert audit.returncode != 0 and "spsdk-pin" in audit.stdout and "1234" not in audit.stdout


def test_provider_from_an_spsdk_signer_string(softhsm: SoftHsm, ahab: dict[str, Any]) -> None:
    """SPSDK itself (no hsmsign command) finds type=hsmsign and signs in the token."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, utils
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
    from hsmsign.nxp.signer import signer_string
    from spsdk.crypto.signature_provider import get_signature_provider_from_config_str

    os.environ["HSMSIGN_MODE"] = "development"
    try:
        provider = get_signature_provider_from_config_str(signer_string(ahab["uris"][1]))
        sig = provider.get_signature(b"boot image")
    finally:
        del os.environ["HSMSIGN_MODE"]
    assert type(provider).__name__ == "HsmsignSP" and len(sig) == provider.signature_length == 96
    public = load_pem_public_key((ahab["work"] / "k1.pub").read_bytes())
    assert isinstance(public, ec.EllipticCurvePublicKey)
    r, s = int.from_bytes(sig[:48], "big"), int.from_bytes(sig[48:], "big")
    public.verify(utils.encode_dss_signature(r, s), b"boot image", ec.ECDSA(hashes.SHA384()))


# --------------------------------------------------------------------------- HAB


@pytest.fixture(scope="module")
def hab(softhsm: SoftHsm, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A scratch RSA key (file) imported into the token, its SRK certificate and table."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    work = tmp_path_factory.mktemp("hab")
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = work / "scratch-key.pem"  # SPSDK's type=file reference; deleted by the test
    key_file.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    der = work / "k.der"
    der.write_bytes(
        private.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    pub = work / "k.pub.der"
    pub.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    for kind, path in (("privkey", der), ("pubkey", pub)):
        done = softhsm.pkcs11_tool(
            "--write-object", str(path), "--type", kind, "--label", "hab-scratch", "--id", "4801",
            "--usage-sign",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    der.unlink()
    uri = softhsm.uri("hab-scratch")
    other = softhsm.keygen("hab-other", "rsa:2048")
    rc, _, err = hsmsign(
        "cert", "--uri", uri, "--subject", "CN=HAB SRK 1", "--der", "-o", str(work / "srk.der"), *DEV
    )
    assert rc == 0, err
    for name, keys in (("srk-table.bin", [uri]), ("srk-table-other.bin", [other])):
        rc, _, err = hsmsign(
            "imx", "srk", "--kind", "hab", "--table", str(work / name), "--fuses", str(work / f"{name}.txt"),
            *keys, *DEV,
        )  # fmt: skip
        assert rc == 0, err
    app = work / "app.bin"  # a Cortex-M vector table (SP, reset vector) and code
    app.write_bytes(struct.pack("<II", 0x20001000, 0x60002001) + os.urandom(8192 - 8))

    def config(name: str, signer: str, table: str = "srk-table.bin") -> Path:
        section = {"AuthenticateCSF_EngineConfiguration": 0, "AuthenticateCSF_CertificateFormat": "x509",
                   "AuthenticateCSF_SignatureFormat": "CMS", "Signer": signer}  # fmt: skip
        return write_yaml(
            work / name,
            {
                "options": {
                    "flags": 8,
                    "startAddress": 0x60000000,
                    "entryPointAddress": 0x60002000,
                    "family": FAMILY_HAB,
                    "bootDevice": "flexspi_nor",
                    "signatureTimestamp": "31/05/2026 11:22:33",
                },
                "inputImageFile": "app.bin",
                "output_format": "bin",
                "sections": [
                    {
                        "Header": {
                            "Header_Version": "4.2",
                            "Header_HashAlgorithm": "sha256",
                            "Header_Engine": "ANY",
                            "Header_EngineConfiguration": 0,
                            "Header_CertificateFormat": "x509",
                            "Header_SignatureFormat": "CMS",
                        }
                    },
                    {"InstallSRK": {"InstallSRK_Table": table, "InstallSRK_SourceIndex": 0}},
                    {
                        "InstallNOCAK": {
                            "InstallNOCAK_File": "srk.der",
                            "InstallNOCAK_CertificateFormat": "x509",
                        }
                    },
                    {"AuthenticateCSF": section},
                    {
                        "AuthenticateData": {
                            "AuthenticateData_VerificationIndex": 0,
                            "AuthenticateData_Engine": "ANY",
                            "AuthenticateData_EngineConfiguration": 0,
                            "Signer": signer,
                        }
                    },
                ],
            },  # fmt: skip
        )

    return {
        "work": work,
        "uri": uri,
        "key_file": key_file,
        "config_file": config("hab-file.yaml", f"type=file;file_path={key_file.name}"),
        "config_token": config("hab-token.yaml", "type=file;file_path=not-used.pem"),
    }


def cms_verifies(signature: Path, content: Path, cert: Path) -> bool:
    """openssl's check of HAB's detached CMS (no certificates inside: the SRK certificate is given)."""
    done = subprocess.run(
        ["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", str(signature),
         "-content", str(content), "-certfile", str(cert), "-CAfile", str(cert), "-purpose", "any",
         "-out", os.devnull],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return done.returncode == 0


def hab_data_signature(path: Path) -> tuple[bytes, bytes]:
    """(signed bytes, CMS signature) of the image's AuthenticateData command, as the ROM reads them."""
    from spsdk.image.hab.hab_image import HabImage
    from spsdk.utils.family import FamilyRevision

    data = path.read_bytes()
    image = HabImage.parse(data, FamilyRevision(FAMILY_HAB))
    ivt = image.segments[0]
    base = ivt.ivt_address - ivt.offset
    for cmd in image.csf_segment.commands:
        blocks = getattr(cmd, "_blocks", None)
        if blocks:
            signed = b"".join(data[addr - base : addr - base + size] for addr, size in blocks)
            return signed, bytes(cmd._signature.data)
    raise AssertionError("no AuthenticateData command")


def test_hab_image_through_the_token_is_byte_identical_to_spsdk_with_the_key_file(
    hab: dict[str, Any],
) -> None:
    work = hab["work"]
    by_file, by_token = work / "hab-file.bin", work / "hab-token.bin"
    rc, out = nxpimage("hab", "export", "-c", str(hab["config_file"]), "-o", str(by_file))
    assert rc == 0, out
    hab["key_file"].unlink()  # the scratch key file is gone before the token signs
    rc, _, err = hsmsign(
        "imx", "hab", "sign", "--uri", hab["uri"], "--config", str(hab["config_token"]),
        "-o", str(by_token), *DEV,
    )  # fmt: skip
    assert rc == 0, err
    assert by_token.read_bytes() == by_file.read_bytes()
    rc, out = nxpimage("hab", "verify", "-f", FAMILY_HAB, "-b", str(by_token))
    assert rc == 0, out[-2000:]

    # the ROM's check, independently: the CMS signature over the authenticated blocks with the SRK cert
    signed, cms = hab_data_signature(by_token)
    (work / "sig.der").write_bytes(cms)
    (work / "signed.bin").write_bytes(signed)
    srk_pem = work / "srk.pem"
    subprocess.run(["openssl", "x509", "-inform", "DER", "-in", str(work / "srk.der"), "-out", str(srk_pem)],
                   check=True)  # fmt: skip
    assert cms_verifies(work / "sig.der", work / "signed.bin", srk_pem)

    # one changed byte in the application: the signature no longer holds
    bad = bytearray(signed)
    bad[len(bad) // 2] ^= 1
    (work / "signed-bad.bin").write_bytes(bytes(bad))
    assert not cms_verifies(work / "sig.der", work / "signed-bad.bin", srk_pem)

    # the SRK table in the image is the one 'hsmsign imx srk' made (whose hash is fused), not another
    image = by_token.read_bytes()
    assert (work / "srk-table.bin").read_bytes() in image
    assert (work / "srk-table-other.bin").read_bytes() not in image
    fuses = (work / "srk-table.bin.txt").read_text()
    assert fuses != (work / "srk-table-other.bin.txt").read_text()


def test_hab_signature_by_another_key_is_refused(softhsm: SoftHsm, hab: dict[str, Any]) -> None:
    work = hab["work"]
    other = work / "hab-other.bin"
    rc, _, err = hsmsign(
        "imx", "hab", "sign", "--uri", softhsm.uri("hab-other"), "--config", str(hab["config_token"]),
        "-o", str(other), *DEV,
    )  # fmt: skip
    # the CSF installs the certificate of another key: the boot ROM would refuse, so hsmsign does
    assert rc == 5, err
    assert "is not the key of the InstallNOCAK certificate" in err and "Traceback" not in err
    assert not other.exists()
    # and what SPSDK alone builds with another key's file: openssl refuses it with the SRK certificate
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = work / "stranger.pem"
    key_file.write_bytes(
        stranger.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    config = work / "hab-stranger.yaml"
    config.write_text(hab["config_file"].read_text().replace(hab["key_file"].name, key_file.name))
    rc, out = nxpimage("hab", "export", "-c", str(config), "-o", str(other))
    key_file.unlink()
    assert rc == 0, out
    signed, cms = hab_data_signature(other)
    (work / "sig-other.der").write_bytes(cms)
    (work / "signed-other.bin").write_bytes(signed)
    srk_pem = work / "srk.pem"
    assert not cms_verifies(work / "sig-other.der", work / "signed-other.bin", srk_pem)
