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
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, VerificationError, printable
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
        return cms.sign_detached(
            signer, cert=cert, content_digest=digest, hash_alg="sha256", like_openssl=True
        )
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
        _check_json_as_swupdate_reads(obj)
        return obj
    return libconfig.parse(text)


_NOT_TEXT = re.compile("[\x00\ud800-\udfff]")
JSON_MAX_DEPTH = 32  # json-c's JSON_TOKENER_DEFAULT_DEPTH: swupdate's parser refuses deeper nesting


def _check_json_as_swupdate_reads(value: Any) -> None:
    """What swupdate's JSON parser (json-c) would read otherwise, or not at all, in a JSON
    sw-description: containers nested deeper than json-c's 32 levels; a NUL (``\\u0000``:
    swupdate reads a C string, so only up to it); an unpaired surrogate (``\\ud800``: not a
    character; it cannot be named or printed), in any key or string. Iterative."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)) and depth > JSON_MAX_DEPTH:
            raise VerificationError(
                f"sw-description JSON nests more than {JSON_MAX_DEPTH} levels deep",
                "swupdate's JSON parser (json-c) stops at that depth and would refuse the file",
            )
        if isinstance(item, dict):
            stack.extend((k, depth + 1) for k in item)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, str) and (bad := _NOT_TEXT.search(item)):
            nul = bad.group() == "\x00"
            raise VerificationError(
                f"sw-description JSON holds {'a NUL character' if nul else 'an unpaired surrogate'} "
                f"(\\u{ord(bad.group()):04x}) in a string",
                "swupdate reads the string only up to it: remove it"
                if nul
                else "it is no character: write the character itself, or both halves of its pair",
            )


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


def check_artifacts(
    found: Sequence[Artifact],
    files: dict[str, str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Refuse unprotected or malformed entries; compare hashes with ``files`` {name: path} if given
    (``progress(bytes)`` is told how many bytes of them were hashed so far).

    Returns the distinct file names sw-description references.
    """
    from ..signing import hash_file

    names: list[str] = []
    hashes: dict[str, str] = {}
    hashed = 0
    checked: set[str] = set()
    for a in found:
        name = printable(a.filename)
        if a.sha256 is None:
            raise ConfigError(
                f"sw-description entry {printable(a.where)} ('{name}') has no sha256",
                "a signed sw-description protects an image only through its sha256: add one",
            )
        if not HEX64.match(a.sha256):
            raise ConfigError(f"sw-description entry '{name}': sha256 is not 64 hex digits")
        if a.encrypted and a.ivt is not None and not HEX32.match(a.ivt):
            raise ConfigError(f"sw-description entry '{name}': ivt is not 32 hex digits")
        problem = member_name_problem(a.filename)
        if problem:
            raise ConfigError(f"sw-description names '{name}', which {problem}", "use a plain file name")
        if hashes.setdefault(a.filename, a.sha256.lower()) != a.sha256.lower():
            raise ConfigError(
                f"sw-description gives '{name}' two different sha256 values",
                "one file cannot match both; swupdate would refuse the bundle",
            )
        if files is not None:
            path = files.get(a.filename)
            if path is None:
                raise ConfigError(f"sw-description names '{name}', which is not among the images given")
            if a.filename in checked:  # named twice with one sha256 (checked above): hashed once
                continue
            checked.add(a.filename)

            def told(done: int, before: int = hashed) -> None:
                if progress is not None:
                    progress(before + done)

            actual = hash_file(path, progress=told).hex()
            hashed += os.path.getsize(path)
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
        problem = member_name_problem(name)
        if problem:
            raise ConfigError(f"image name '{printable(name)}' {problem}", "use a plain file name")
        members.append((name, path))
    return cpio.write(out, members, crc=crc)


# swupdate's MAX_IMAGE_FNAME: a cpio name of this many bytes, NUL included, is refused ("CPIO Header
# filelength too big"), wherever it is in the archive
SWUPDATE_NAME_LIMIT = 256


@dataclass
class Bundle:
    description: bytes
    signature: bytes | None
    entries: list[Any]
    trailing: int = 0  # bytes after the trailer's 512-byte block that are not zero padding


@dataclass
class Verified:
    """What ``verify_bundle`` found: the images it hashed and what swupdate would skip."""

    images: list[str]
    unsigned: list[str]  # members sw-description does not name (swupdate reads past them)
    trailing: int


def member_name_problem(name: str) -> str | None:
    """Why swupdate refuses a member called ``name`` (or would write it outside its directory), or None.

    swupdate refuses a name of 255 bytes or more (all versions) and, since 2026.05, one that starts
    with '/' or contains '../' (upstream's ``is_filename_valid``, for any member, even one it would
    skip). hsmsign also refuses a '..' path component anywhere: swupdate extracts a member to
    ``$TMPDIR/<name>``, and no bundle needs a name that leaves that directory.
    """
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) + 1 >= SWUPDATE_NAME_LIMIT:
        limit = SWUPDATE_NAME_LIMIT - 1
        return f"is {len(raw)} bytes long; swupdate refuses member names of {limit} bytes or more"
    if name.startswith("/"):
        return "is an absolute path; swupdate refuses it"
    if "../" in name or ".." in name.split("/"):
        return "contains '..'; swupdate refuses it"
    return None


def read_bundle(path: str) -> Bundle:
    """Read a .swu's layout; VerificationError if swupdate would not accept its shape."""
    from . import cpio

    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    with fh:
        try:
            entries = list(cpio.iter_entries(fh))
        except VerificationError as exc:  # the archive's own words, with the file they are about
            raise VerificationError(f"{path}: {exc.message}", exc.hint) from exc
        end = fh.tell()
        for e in entries:
            problem = member_name_problem(e.name)
            if problem:
                raise VerificationError(
                    f"{path}: member '{printable(e.name)}' {problem}",
                    "rebuild the bundle with 'hsmsign swupdate bundle'; do not install this file",
                )
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
        trailing = _trailing_bytes(fh, end)
    return Bundle(desc, sig, entries, trailing)


def _trailing_bytes(fh: Any, end: int) -> int:
    """Bytes after the trailer beyond its zero padding to 512 bytes (swupdate never reads them)."""
    fh.seek(0, os.SEEK_END)
    total = fh.tell()
    block_end = end + (512 - end % 512) % 512
    fh.seek(end)
    padding = fh.read(max(0, min(block_end, total) - end))
    if padding.strip(b"\0"):
        return total - end
    return max(0, total - block_end)


def verify_bundle(
    path: str, *, mode: str = "cms", trusted: Sequence[Any] = (), public_key: Any = None
) -> Verified:
    """hsmsign's own check of a bundle, as swupdate -c checks it (tests run both on malformed bundles).

    The signature over sw-description, then every member sw-description names: present, and every
    copy of it matches its sha256 (swupdate hashes each copy it meets, so one bad copy fails the
    update). Members sw-description does not name are returned as ``unsigned``: swupdate skips
    them, so they do not fail the check, but the caller shows them.
    """
    from . import cpio

    b = read_bundle(path)
    if b.signature is None:
        raise VerificationError(
            f"{path} has no sw-description.sig as its second member",
            "swupdate built with signed images refuses it; sign with 'hsmsign swupdate bundle'",
        )
    verify_description_signature(
        b.description, b.signature, mode=mode, trusted=trusted, public_key=public_key
    )
    desc = parse_description(b.description)
    wanted: dict[str, str] = {}  # name -> sha256
    for a in artifacts(desc):
        name = printable(a.filename)
        try:
            a.filename.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise VerificationError(
                f"sw-description entry {printable(a.where)}: '{name}' is not UTF-8"
            ) from exc
        if a.sha256 is None or not HEX64.match(a.sha256):
            raise VerificationError(
                f"'{name}' has no valid sha256 in sw-description",
                "swupdate refuses an image without a sha256 when it checks signatures",
            )
        problem = member_name_problem(a.filename)
        if problem:
            raise VerificationError(f"sw-description names '{name}', which {problem}")
        other = wanted.setdefault(a.filename, a.sha256.lower())
        if other != a.sha256.lower():
            raise VerificationError(
                f"sw-description gives '{name}' two different sha256 values",
                "one file cannot match both; swupdate refuses the bundle",
            )
    data = b.entries[2:]  # sw-description and its signature are read as such, never as images
    seen: set[str] = set()
    unsigned: list[str] = []
    with open(path, "rb") as fh:
        for e in data:
            expected = wanted.get(e.name)
            if expected is None:
                unsigned.append(e.name)
                continue
            h = hashlib.sha256()
            for chunk in cpio.iter_member(fh, e):
                h.update(chunk)
            if h.hexdigest() != expected:
                again = " (another copy of it)" if e.name in seen else ""
                raise VerificationError(
                    f"'{printable(e.name)}'{again} does not match its sha256 in sw-description",
                    "swupdate hashes every copy of an image it reads; rebuild the bundle",
                )
            seen.add(e.name)
    missing = [n for n in wanted if n not in seen]
    if missing:
        raise VerificationError(
            f"sw-description names {', '.join(repr(printable(n)) for n in missing[:5])}"
            f"{' and more' if len(missing) > 5 else ''}, missing from the bundle",
            "swupdate refuses a bundle without every image it installs; rebuild the bundle",
        )
    return Verified(list(wanted), unsigned, b.trailing)


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

        cms.verify_detached(signature, content=description, trusted=trusted, like_openssl=True)
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
