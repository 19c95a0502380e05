"""Test fixtures: one real SoftHSMv2 token per test session.

The token lives in a private temp directory with its own softhsm2.conf;
SOFTHSM2_CONF is set before the module is first loaded in this process. Keys are
generated inside the token at run time (sensitive, non-extractable) through the
library's own keygen; no key file exists anywhere.

Without SoftHSM the token tests skip with an install hint, unless
HSMSIGN_REQUIRE_SOFTHSM=1 (CI sets it), where they fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIB = ROOT / "meta-hsmsign" / "lib"
if str(LIB) not in sys.path:
    sys.path.insert(0, str(LIB))

TOKEN_LABEL = "hsmsign-test"
# tokens of their own, for keys libp11 0.4.12 cannot list (SoftHsm.keygen says why); none may
# begin with TOKEN_LABEL: pkcs11-tool's --token-label takes the first token whose label it begins
OWN_TOKENS = ("edwards-keys",)
assert not any(label.startswith(TOKEN_LABEL) for label in OWN_TOKENS)


def _softhsm_module() -> str | None:
    from hsmsign import token

    return token.default_softhsm_module()


def require(tool_ok: bool, what: str, hint: str, env: str = "HSMSIGN_REQUIRE_SOFTHSM") -> None:
    """Skip with a hint, or fail when CI demands the tool."""
    if tool_ok:
        return
    if os.environ.get(env) == "1" or os.environ.get("HSMSIGN_REQUIRE_TOOLS") == "1":
        pytest.fail(f"{what} is required here ({env}=1) but missing: {hint}")
    pytest.skip(f"{what} missing: {hint}")


def tool(name: str, package: str) -> str:
    """The path of a command-line tool, or a skip (a failure under HSMSIGN_REQUIRE_TOOLS)."""
    path = shutil.which(name)
    require(path is not None, name, f"apt-get install {package}", env="HSMSIGN_REQUIRE_TOOLS")
    assert path is not None
    return path


@dataclass
class SoftHsm:
    """A live SoftHSM token for the test session."""

    dir: Path
    conf: Path
    module: str
    token_label: str
    pin_file: Path
    so_pin_file: Path
    env: dict[str, str]
    _made: dict[str, str] = field(default_factory=dict)
    _tokens: dict[str, dict[str, str]] = field(default_factory=dict)  # own tokens' keys made

    def uri(self, label: str | None = None, *, with_query: bool = True, **extra: str) -> str:
        text = f"pkcs11:token={self.token_label}"
        if label:
            text += f";object={label}"
        for name, value in extra.items():
            text += f";{name.replace('_', '-')}={value}"
        if with_query:
            text += f"?module-path={self.module}&pin-source=file:{self.pin_file}"
        return text

    def keygen(self, label: str, key_type: str = "rsa:2048", **kwargs: Any) -> str:
        """Generate a key in the token once per session; return its URI."""
        if key_type.startswith("ed") and self.token_label == TOKEN_LABEL:
            # libp11 before 0.4.18 (Debian bookworm's 0.4.12, which sbsign, rauc and mkimage
            # -N pkcs11 load here) stops listing a token's keys at the first one it does not
            # know: one Ed25519 key in the shared token and every later libp11 test fails
            raise AssertionError(f"make {key_type} keys in softhsm.own_token(...), not the shared token")
        if label not in self._made:
            from hsmsign import keys
            from hsmsign.uri import Pkcs11Uri

            keys.generate(
                Pkcs11Uri.parse(self.uri(label)), keys.parse_key_type(key_type), mode="development", **kwargs
            )
            self._made[label] = key_type
        elif self._made[label] != key_type:
            raise AssertionError(f"key {label} exists with type {self._made[label]}, not {key_type}")
        return self.uri(label)

    def own_token(self, label: str) -> SoftHsm:
        """Another token of this SoftHSM (same PINs and configuration), one of ``OWN_TOKENS``: the
        session fixture makes them before the module is loaded in this process, which would not
        see a token another process initialised later."""
        assert label in OWN_TOKENS, f"add {label!r} to OWN_TOKENS in tests/conftest.py"
        return replace(self, token_label=label, _made=self._tokens.setdefault(label, {}), _tokens={})

    def pkcs11_tool(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """OpenSC's pkcs11-tool, logged in to this token: the independent PKCS#11 client."""
        tool = shutil.which("pkcs11-tool")
        require(tool is not None, "pkcs11-tool", "apt-get install opensc")
        base = [
            str(tool),
            "--module",
            self.module,
            "--token-label",
            self.token_label,
            "--login",
            "--pin",
            self.pin_file.read_text().strip(),
        ]
        return subprocess.run([*base, *argv], capture_output=True, text=True, env=self.env, check=False)

    def run_cli(
        self, *argv: str, env: dict[str, str] | None = None, input: bytes | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run ``python -m hsmsign ARGV`` as a user would, in a subprocess."""
        full_env = dict(self.env)
        if env:
            full_env.update(env)
        return subprocess.run(
            [sys.executable, "-m", "hsmsign", *argv],
            capture_output=True,
            text=True,
            env=full_env,
            timeout=timeout,
            check=False,
        )


@pytest.fixture(scope="session")
def softhsm() -> Iterator[SoftHsm]:
    module = _softhsm_module()
    util = shutil.which("softhsm2-util")
    require(
        bool(module and util), "SoftHSMv2", "apt-get install softhsm2 (or run ./scripts/test, which does)"
    )
    assert module is not None and util is not None
    base = Path(tempfile.mkdtemp(prefix="hsmsign-test-token-"))
    tokens = base / "tokens"
    tokens.mkdir()
    conf = base / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    pin_file = base / "user-pin"
    so_pin_file = base / "so-pin"
    pin_file.write_text("test-user-pin-1234\n")
    so_pin_file.write_text("test-so-pin-5678\n")
    os.chmod(pin_file, 0o600)
    os.environ["SOFTHSM2_CONF"] = str(conf)
    env = dict(os.environ)
    env["SOFTHSM2_CONF"] = str(conf)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(LIB), env.get("PYTHONPATH", "")]))
    env.pop("HSM_PKCS11_URI", None)
    env.pop("HSMSIGN_MODE", None)
    for label in (TOKEN_LABEL, *OWN_TOKENS):
        subprocess.run(
            [
                util,
                "--init-token",
                "--free",
                "--label",
                label,
                "--pin",
                "test-user-pin-1234",
                "--so-pin",
                "test-so-pin-5678",
            ],
            check=True,
            capture_output=True,
            env=env,
        )
    yield SoftHsm(base, conf, module, TOKEN_LABEL, pin_file, so_pin_file, env)
    from hsmsign import token

    token.close_all()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def rsa2048(softhsm: SoftHsm) -> str:
    return softhsm.keygen("rsa2048", "rsa:2048")


@pytest.fixture(scope="session")
def ec256(softhsm: SoftHsm) -> str:
    return softhsm.keygen("ec256", "ec:secp256r1")


@pytest.fixture(scope="session")
def ec384(softhsm: SoftHsm) -> str:
    return softhsm.keygen("ec384", "ec:secp384r1")


def mutations(seed: bytes, pieces: Sequence[bytes], count: int, rng_seed: int) -> Iterator[bytes]:
    """``count`` mutations of ``seed`` for the tests that compare a parser of hsmsign with the
    device's (libconfig, GLib's key file): each changes one to three places, by a flipped bit,
    one of ``pieces`` put in, one to four bytes cut, or up to twelve of its own bytes copied
    elsewhere. Seeded, so a failure comes back the same."""
    import random

    rng = random.Random(rng_seed)
    for _ in range(count):
        text = bytearray(seed)
        for _ in range(rng.randint(1, 3)):
            at, op = rng.randrange(len(text)), rng.random()
            if op < 0.3:
                text[at] ^= 1 << rng.randrange(8)
            elif op < 0.6:
                text[at:at] = rng.choice(pieces)
            elif op < 0.8:
                del text[at : at + rng.randint(1, 4)]
            else:
                src = rng.randrange(len(text))
                text[at:at] = text[src : src + rng.randint(1, 12)]
        yield bytes(text)


def cms_field_offset(der: bytes, field: str) -> int:
    """The offset in a DER CMS SignedData of one byte the signature does not cover, for the
    tests that check hsmsign refuses what the device's verifier (OpenSSL, the kernel) refuses:

    - ``content-type``: eContentType id-data (1.2.840.113549.1.7.1), its last byte;
    - ``embedded-certificate-serial``: the last byte of the first certificate's serial, so
      the signer the SignerInfo names is no longer among the signature's certificates;
    - ``digest-algorithm-set``: the last byte of SignedData.digestAlgorithms (SHA-256 becomes
      an unknown OID);
    - ``embedded-certificate-unused-bits``: the unused-bits byte of the first certificate's
      signature BIT STRING;
    - ``signed-data-version``, ``signer-info-version``: the value byte of the version;
    - ``signer-issuer``: the last byte of the issuer name that identifies the signer (the last
      character of its last attribute, the common name of hsmsign's certificates).
    """
    from asn1crypto import cms as acms

    sd = acms.ContentInfo.load(der)["content"]
    si = sd["signer_infos"][0]

    def value_byte(part: Any) -> int:  # a one-byte INTEGER: its value after tag and length
        whole = part.dump()
        return der.find(whole) + len(whole) - len(part.contents) + 2

    if field == "content-type":
        return der.find(bytes.fromhex("06092a864886f70d010701")) + 10
    if field == "digest-algorithm-set":
        return der.find(sd["digest_algorithms"].dump()) + len(sd["digest_algorithms"].dump()) - 1
    if field == "signed-data-version":
        return value_byte(sd)
    if field == "signer-info-version":
        return value_byte(si)
    if field == "signer-issuer":
        issuer = si["sid"].chosen["issuer"].dump()
        return der.find(issuer) + len(issuer) - 1
    cert = sd["certificates"][0].chosen
    if field == "embedded-certificate-serial":
        tbs = cert["tbs_certificate"].dump()
        serial = cert["tbs_certificate"]["serial_number"].dump()
        return der.find(tbs) + tbs.find(serial) + len(serial) - 1
    assert field == "embedded-certificate-unused-bits", field
    return der.find(cert["signature_value"].dump()) + 4


def openssl_cms_verify(
    signature: Path | str, content: Path | str, ca: Path | str, certfile: Path | str | None = None
) -> subprocess.CompletedProcess[str]:
    """The independent check of a detached DER CMS signature: ``openssl cms -verify -binary``.

    ``certfile``: the signer certificate when the signature carries none (kernel module signatures).
    """
    return subprocess.run(
        [
            "openssl",
            "cms",
            "-verify",
            "-binary",
            "-inform",
            "DER",
            "-in",
            str(signature),
            "-content",
            str(content),
            "-CAfile",
            str(ca),
            "-purpose",
            "any",
            "-out",
            os.devnull,
            *(["-certfile", str(certfile)] if certfile else []),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
