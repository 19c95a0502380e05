"""swupdate: the signature of ``sw-description`` and the ``.swu`` bundle around it.

swupdate checks one signature, over ``sw-description``; every image is then
covered by the ``sha256`` that sw-description lists for it (over the file as
stored in the bundle, so over the ciphertext of an encrypted image). Modes,
as swupdate's ``CONFIG_SIGALG_*`` name them:

* ``cms``: detached DER CMS SignedData with the signer certificate, like
  ``openssl cms -sign -binary -outform DER -nosmimecap`` (Debian's build knows
  only this one);
* ``rsa``: the raw RSA PKCS#1 v1.5 signature of SHA-256(sw-description), like
  ``openssl dgst -sha256 -sign``;
* ``rsa-pss``: the raw RSA-PSS signature; swupdate verifies with
  ``rsa_pss_saltlen:-2`` (auto), so our salt of 32 bytes verifies.

A bundle is a cpio newc/crc archive (``hsmsign.formats.cpio``) with
``sw-description`` first, ``sw-description.sig`` second, then the images.

sw-description is libconfig (or JSON, when swupdate is built with it). The
small parser in ``formats.libconfig`` reads the subset swupdate bundles use, to check before signing
that every image has a sha256 that matches the file next to it: a signed
sw-description without image hashes signs nothing but itself.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, VerificationError
from . import libconfig

MODES = ("cms", "rsa", "rsa-pss")
SW_DESCRIPTION = "sw-description"
SIGNATURE = "sw-description.sig"
MAX_DESCRIPTION = 4 << 20
HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
HEX32 = re.compile(r"^[0-9a-fA-F]{32}$")


# ---------------------------------------------------------------- signing


def sign_description(signer: Any, data: bytes, mode: str, cert: Any = None) -> bytes:
    """The bytes of ``sw-description.sig`` for ``data`` in ``mode``."""
    from ..signing import hash_bytes

    if mode not in MODES:
        raise ConfigError(f"swupdate signing mode '{mode}' is not one of {', '.join(MODES)}")
    digest = hash_bytes(data, "sha256")
    if mode == "cms":
        from . import cms

        if cert is None:
            raise ConfigError(
                "CMS mode needs the signer certificate",
                "pass --cert CERT.pem (make one with 'hsmsign cert --uri URI --subject CN=...')",
            )
        return cms.sign_detached(signer, cert=cert, content_digest=digest, hash_alg="sha256")
    if signer.key_type != "rsa":
        raise ConfigError(
            f"swupdate's {mode} mode needs an RSA key, not {signer.key_type}", "use --mode cms for ECDSA keys"
        )
    return bytes(signer.sign_digest(digest, "sha256", "pss" if mode == "rsa-pss" else "pkcs1v15"))


# ---------------------------------------------------------------- libconfig subset


def parse_description(data: bytes) -> dict[str, Any]:
    """Parse sw-description (libconfig subset, or JSON); VerificationError if it cannot be read."""
    if len(data) > MAX_DESCRIPTION:
        raise VerificationError(
            f"sw-description is {len(data)} bytes; more than {MAX_DESCRIPTION} is not plausible"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise VerificationError("sw-description is not UTF-8 text") from exc
    if text.lstrip().startswith("{"):
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise VerificationError(f"sw-description looks like JSON but does not parse: {exc}") from exc
        if not isinstance(obj, dict):
            raise VerificationError("sw-description JSON is not an object")
        return obj
    return libconfig.parse(text)


@dataclass(frozen=True)
class Artifact:
    """An entry of sw-description that names a file in the bundle."""

    filename: str
    sha256: str | None
    encrypted: bool
    ivt: str | None
    where: str


def artifacts(desc: Any, where: str = "") -> list[Artifact]:
    """Every group with a ``filename`` (images, files, scripts, bootenv, ...), anywhere in the tree."""
    out: list[Artifact] = []
    if isinstance(desc, dict):
        fn = desc.get("filename")
        if isinstance(fn, str):
            sha = desc.get("sha256")
            ivt = desc.get("ivt")
            enc = desc.get("encrypted")
            out.append(
                Artifact(
                    fn,
                    sha if isinstance(sha, str) else None,
                    enc is True or enc == "true",
                    ivt if isinstance(ivt, str) else None,
                    where or "/",
                )
            )
        for k, v in desc.items():
            out.extend(artifacts(v, f"{where}/{k}"))
    elif isinstance(desc, list):
        for i, v in enumerate(desc):
            out.extend(artifacts(v, f"{where}[{i}]"))
    return out


def check_artifacts(found: Sequence[Artifact], files: dict[str, str] | None = None) -> list[str]:
    """Refuse unprotected or malformed entries; compare hashes with ``files`` {name: path} if given.

    Returns the distinct file names sw-description references.
    """
    from ..signing import hash_file

    names: list[str] = []
    for a in found:
        if a.sha256 is None:
            raise ConfigError(
                f"sw-description entry {a.where} ('{a.filename}') has no sha256",
                "a signed sw-description protects an image only through its sha256: add one",
            )
        if not HEX64.match(a.sha256):
            raise ConfigError(f"sw-description entry '{a.filename}': sha256 is not 64 hex digits")
        if a.encrypted and a.ivt is not None and not HEX32.match(a.ivt):
            raise ConfigError(f"sw-description entry '{a.filename}': ivt is not 32 hex digits")
        if files is not None:
            path = files.get(a.filename)
            if path is None:
                raise ConfigError(f"sw-description names '{a.filename}', which is not among the images given")
            actual = hash_file(path).hex()
            if actual != a.sha256.lower():
                raise ConfigError(
                    f"sha256 of {path} is {actual}, sw-description says {a.sha256}",
                    "regenerate sw-description after the image changed",
                )
        if a.filename not in names:
            names.append(a.filename)
    return names


# ---------------------------------------------------------------- writing sw-description and bundles


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_description(
    *,
    version: str,
    hardware: Sequence[str],
    images: Sequence[dict[str, Any]],
    files: Sequence[dict[str, Any]] = (),
    description: str = "hsmsign",
) -> bytes:
    """A libconfig sw-description; each entry dict needs ``filename`` and ``path`` (to hash)."""
    from ..signing import hash_file

    def block(entries: Sequence[dict[str, Any]]) -> str:
        parts = []
        for e in entries:
            fields = {k: v for k, v in e.items() if k != "path"}
            fields.setdefault("sha256", hash_file(e["path"]).hex())
            body = []
            for k, v in fields.items():
                if not re.fullmatch(r"[A-Za-z][-A-Za-z0-9_]*", k):
                    raise ConfigError(f"'{k}' is not a sw-description setting name")
                if isinstance(v, bool):
                    body.append(f"\t\t\t{k} = {'true' if v else 'false'};")
                elif isinstance(v, int):
                    body.append(f"\t\t\t{k} = {v};")
                else:
                    body.append(f"\t\t\t{k} = {_q(str(v))};")
            parts.append("\t\t{\n" + "\n".join(body) + "\n\t\t}")
        return ",\n".join(parts)

    hw = ", ".join(_q(h) for h in hardware)
    text = (
        "software =\n{\n"
        f"\tversion = {_q(version)};\n"
        f"\tdescription = {_q(description)};\n"
        f"\thardware-compatibility: [ {hw} ];\n"
        f"\timages: (\n{block(images)}\n\t);\n"
    )
    if files:
        text += f"\tfiles: (\n{block(files)}\n\t);\n"
    text += "}\n"
    return text.encode()


def write_bundle(
    out: Any,
    description: bytes,
    signature: bytes | None,
    images: Sequence[tuple[str, str]],
    *,
    crc: bool = True,
) -> int:
    """sw-description, its signature, then the images, as swupdate reads them."""
    from . import cpio

    members: list[tuple[str, Any]] = [(SW_DESCRIPTION, description)]
    if signature is not None:
        members.append((SIGNATURE, signature))
    for name, path in images:
        if name in (SW_DESCRIPTION, SIGNATURE):
            raise ConfigError(f"an image cannot be called {name}")
        members.append((name, path))
    return cpio.write(out, members, crc=crc)


@dataclass
class Bundle:
    description: bytes
    signature: bytes | None
    entries: list[Any]


def read_bundle(path: str) -> Bundle:
    """Read a .swu's layout; VerificationError if swupdate would not accept its shape."""
    from . import cpio

    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    with fh:
        entries = list(cpio.iter_entries(fh))
        if not entries or entries[0].name != SW_DESCRIPTION:
            raise VerificationError(
                f"{path}: the first member is not sw-description",
                "swupdate reads sw-description first; rebuild the bundle",
            )
        desc = cpio.read_member(fh, entries[0], MAX_DESCRIPTION)
        sig = None
        if len(entries) > 1 and entries[1].name == SIGNATURE:
            sig = cpio.read_member(fh, entries[1], 1 << 20)
        for e in entries:
            cpio.check_sums(fh, e)
    return Bundle(desc, sig, entries)


def verify_bundle(
    path: str, *, mode: str = "cms", trusted: Sequence[Any] = (), public_key: Any = None
) -> list[str]:
    """hsmsign's own check of a bundle (tests also run swupdate -c): signature, then every image's sha256."""
    from . import cpio

    b = read_bundle(path)
    if b.signature is None:
        raise VerificationError(f"{path} has no sw-description.sig as its second member")
    verify_description_signature(
        b.description, b.signature, mode=mode, trusted=trusted, public_key=public_key
    )
    desc = parse_description(b.description)
    found = artifacts(desc)
    by_name = {e.name: e for e in b.entries}
    checked: list[str] = []
    with open(path, "rb") as fh:
        for a in found:
            if a.sha256 is None:
                raise VerificationError(f"'{a.filename}' has no sha256 in sw-description")
            e = by_name.get(a.filename)
            if e is None:
                continue  # swupdate allows entries installed from elsewhere (e.g. install-if-different)
            h = hashlib.sha256()
            for chunk in cpio.iter_member(fh, e):
                h.update(chunk)
            if h.hexdigest() != a.sha256.lower():
                raise VerificationError(f"'{a.filename}' does not match its sha256 in sw-description")
            checked.append(a.filename)
    return checked


def verify_description_signature(
    description: bytes,
    signature: bytes,
    *,
    mode: str = "cms",
    trusted: Sequence[Any] = (),
    public_key: Any = None,
) -> None:
    from ..errors import SigningError
    from ..signing import hash_bytes, verify_digest

    if mode == "cms":
        from . import cms

        cms.verify_detached(signature, content=description, trusted=trusted)
        return
    if public_key is None:
        raise ConfigError(f"checking a {mode} signature needs the public key")
    try:
        verify_digest(
            public_key,
            signature,
            hash_bytes(description),
            "sha256",
            "pss" if mode == "rsa-pss" else "pkcs1v15",
        )
    except SigningError as exc:
        raise VerificationError("sw-description.sig does not verify") from exc


def read_limited(path: str, limit: int = MAX_DESCRIPTION) -> bytes:
    from ..atomic import read_input

    return read_input(path, "sw-description", limit)
