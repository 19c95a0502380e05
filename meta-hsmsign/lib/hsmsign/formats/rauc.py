"""RAUC bundles: where the signature is, what it covers, and hsmsign's own check of both.

A bundle (RAUC's "Bundle Formats" reference, ``src/bundle.c``) is::

    [payload][CMS SignedData, DER][size of the CMS: uint64, big-endian]

* ``plain``: the payload is a SquashFS image; the CMS is detached and covers the payload.
* ``verity`` and ``crypt``: the payload is a SquashFS image (``crypt``: encrypted) followed
  by its dm-verity hash tree (sha256, 4096-byte blocks, no superblock). The CMS
  encapsulates the manifest, whose ``[bundle]`` section names the tree: ``verity-hash``
  (the root hash), ``verity-salt`` and ``verity-size`` (the tree's bytes). The device's
  kernel checks the payload against that root hash through dm-verity when it mounts the
  bundle; ``rauc info`` checks the signature only, so a payload changed after signing
  passes it. hsmsign checks both: the signature, and every payload block with
  ``veritysetup verify`` against the signed root hash.
* A ``crypt`` bundle encrypted for its recipients (``rauc encrypt``) wraps the SignedData
  in an EnvelopedData: only a recipient's key opens it, so it is checked before encryption.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import struct
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError, VerificationError, printable

SIZE_FIELD = 8
MAX_CMS = 16 << 20  # a signature with its certificate chain is a few KiB
MAX_MANIFEST = 1 << 20
VERITY_BLOCK = 4096
SQUASHFS_MAGIC = b"hsqs"
HEX32 = re.compile(r"[0-9a-fA-F]{64}")  # rauc's r_hex_decode(value, 32): 32 bytes, either case
TIMEOUT_S = 3600
FORMATS = ("plain", "verity", "crypt")
OID_ENVELOPED_DATA = "1.2.840.113549.1.7.3"


@dataclass
class Layout:
    """Where the parts of a bundle are."""

    size: int
    payload_size: int
    cms: bytes
    squashfs: bool  # the payload starts as a SquashFS image (plain, verity; not crypt: encrypted)


@dataclass
class BundleCheck:
    """What :func:`verify_bundle` found."""

    format: str
    signer: Any  # cryptography x509.Certificate
    hash_alg: str
    payload_size: int
    manifest: dict[str, dict[str, str]] = field(default_factory=dict)
    verity_root: str = ""

    def describe(self) -> str:
        update = self.manifest.get("update", {})
        parts = [f"format {self.format}"]
        if update.get("compatible"):
            parts.append(f"compatible '{printable(update['compatible'], 80)}'")
        if update.get("version"):
            parts.append(f"version '{printable(update['version'], 40)}'")
        if self.verity_root:
            parts.append(f"payload checked against verity root {self.verity_root[:16]}...")
        return ", ".join(parts)


def read_layout(path: str) -> Layout:
    """The size field, the payload's length and the CMS bytes of the bundle at ``path``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(
            f"cannot read bundle {path}: {exc.strerror}", "give the .raucb file rauc wrote"
        ) from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{path} is not a regular file", "give the .raucb file rauc wrote")
        size = st.st_size
        if size < SIZE_FIELD + len(SQUASHFS_MAGIC):
            raise not_a_bundle(path)
        (cms_size,) = struct.unpack(">Q", os.pread(fd, SIZE_FIELD, size - SIZE_FIELD))
        if cms_size == 0 or cms_size > MAX_CMS or cms_size > size - SIZE_FIELD - len(SQUASHFS_MAGIC):
            raise VerificationError(
                f"{path}: its signature size field says {cms_size} bytes, which does not fit the bundle",
                "the bundle is cut short or is not a RAUC bundle; build it again",
            )
        payload_size = size - SIZE_FIELD - cms_size
        cms = os.pread(fd, cms_size, payload_size)
        if len(cms) != cms_size:
            raise VerificationError(f"{path} changed while it was read", "check it once it is complete")
        return Layout(size, payload_size, cms, os.pread(fd, len(SQUASHFS_MAGIC), 0) == SQUASHFS_MAGIC)
    except OSError as exc:
        raise ConfigError(f"cannot read bundle {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)


def not_a_bundle(path: str) -> VerificationError:
    return VerificationError(
        f"{path} is not a RAUC bundle",
        "a bundle is a SquashFS payload, a CMS signature and its size (rauc bundle writes them)",
    )


_KEYFILE_SPACE = " \t\n\r\f"  # g_ascii_isspace() without \v
_KEYFILE_ESCAPES = {"s": " ", "n": "\n", "t": "\t", "r": "\r", "\\": "\\"}
_KEY = re.compile(r"[^\[\]]+(\[[^\[\]]+\])?")  # g_key_file_is_key_name: brackets only for a locale


def parse_manifest(data: bytes, what: str = "manifest") -> dict[str, dict[str, str]]:
    """A RAUC manifest, read as rauc reads it: a GLib key file (``GKeyFile``), values as
    ``g_key_file_get_string`` gives them.

    A line is stripped of one trailing CR and of leading whitespace (space, tab, CR, LF, form
    feed: GLib's, not vertical tab); then it is empty, a ``#`` comment, ``[group]`` (only
    spaces and tabs after it), or ``key=value`` in a group (the key without trailing
    whitespace, the value without leading whitespace; trailing whitespace is the value's).
    Escapes ``\\s \\n \\t \\r \\\\`` are read; a later key or group of the same name wins
    or merges, as GLib's do. What GLib refuses, this refuses: a key before any group, an
    empty or bracketed group name, a group line with text after ``]``, a key that is empty
    or holds a bracket (but for a locale suffix, ``key[de]``), and a NUL byte (GLib cuts a
    value there and refuses it in a key). It is stricter on escapes GLib keeps as written
    (``\\x``), a backslash at the end of a value, and text that is not UTF-8."""
    if len(data) > MAX_MANIFEST:
        raise VerificationError(f"the {what} is larger than {MAX_MANIFEST >> 10} KiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise VerificationError(f"the {what} is not UTF-8 text") from exc
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None

    def bad(number: int, why: str) -> VerificationError:
        return VerificationError(
            f"the {what}, line {number}: {why}",
            "rauc reads it as a GLib key file, and would refuse it or read it otherwise; "
            "build the bundle again",
        )

    if "\0" in text:
        raise bad(text.count("\n", 0, text.index("\0")) + 1, "a NUL byte")
    for number, raw in enumerate(text.split("\n"), 1):
        line = (raw[:-1] if raw.endswith("\r") else raw).lstrip(_KEYFILE_SPACE)
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            name, close, rest = line[1:].partition("]")
            if not close or rest.strip(" \t") or not name or "[" in name or _has_control(name):
                raise bad(number, f"'{printable(line, 60)}' is not a valid [group] line")
            current = sections.setdefault(name, {})
            continue
        key, sep, value = line.partition("=")
        key = key.rstrip(_KEYFILE_SPACE)
        if not sep or current is None:
            raise bad(number, "a line that is not key=value in a [group]")
        if not _KEY.fullmatch(key):
            raise bad(number, f"'{printable(key, 60)}' is not a valid key")
        try:
            current[key] = _keyfile_unescape(value.lstrip(_KEYFILE_SPACE))
        except ValueError as exc:
            raise bad(number, str(exc)) from None
    return sections


def _has_control(name: str) -> bool:
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in name)


def _keyfile_unescape(value: str) -> str:
    """A key file value as ``g_key_file_get_string`` reads it; ValueError for what it would not."""
    if "\\" not in value:
        return value
    out: list[str] = []
    chars = iter(value)
    for c in chars:
        if c != "\\":
            out.append(c)
            continue
        nxt = next(chars, "")
        if nxt not in _KEYFILE_ESCAPES:
            known = "\\s \\n \\t \\r \\\\"
            escape = printable(nxt, 4)
            raise ValueError(f"the escape '\\{escape}', which GLib keeps as written (it reads {known})")
        out.append(_KEYFILE_ESCAPES[nxt])
    return "".join(out)


def _signed_data(der: bytes, path: str) -> Any:
    from asn1crypto import cms as acms

    try:
        info = acms.ContentInfo.load(der, strict=True)
        kind = info["content_type"].dotted
    except Exception as exc:  # noqa: BLE001 - asn1crypto raises ValueError, TypeError, ...
        raise VerificationError(
            f"{path}: the signature at its end is not a DER CMS object",
            "the bundle is damaged or not a RAUC bundle; build it again",
        ) from exc
    if kind == OID_ENVELOPED_DATA:
        raise VerificationError(
            f"{path} is encrypted for its recipients (rauc encrypt): only a recipient's key opens "
            "its signature",
            "check the bundle before 'rauc encrypt' (the layer checks it in do_bundle)",
        )
    from . import cms

    return cms.parse(der)


def verify_bundle(
    path: str,
    trusted: Sequence[Any],
    *,
    check_payload: bool = True,
    veritysetup: str | None = None,
) -> BundleCheck:
    """Check the bundle's signature against ``trusted`` certificates, and what it covers.

    ``plain``: the detached signature over the whole payload. ``verity`` and ``crypt``:
    the signature over the manifest, then (``check_payload``) every payload block against
    the manifest's verity root hash with ``veritysetup verify``, as dm-verity on the device.
    Raises ``VerificationError`` naming what failed.
    """
    from . import cms

    layout = read_layout(path)
    if not layout.squashfs and not layout.cms.startswith(b"\x30"):
        raise not_a_bundle(path)
    sd = _signed_data(layout.cms, path)
    encap = sd["encap_content_info"]
    if encap["content_type"].native != "data":
        raise VerificationError(f"{path}: the signed content is {encap['content_type'].native}, not data")
    content = encap["content"].native if encap["content"].native is not None else None
    if content is None:
        if not layout.squashfs:
            raise not_a_bundle(path)
        digest_alg = (
            sd["signer_infos"][0]["digest_algorithm"]["algorithm"].native if len(sd["signer_infos"]) else ""
        )
        if digest_alg not in cms.HASH_OIDS:
            raise VerificationError(f"{path}: the signature's digest algorithm {digest_alg} is not accepted")
        digest = hash_range(path, layout.payload_size, digest_alg)
        try:
            found = cms.verify_detached(
                layout.cms, content_digest=digest, trusted=trusted, like_openssl=True
            )
        except VerificationError as exc:
            raise VerificationError(f"{path} (plain bundle): {exc.message}", exc.hint) from exc
        return BundleCheck("plain", found.certificate, found.hash_alg, layout.payload_size)
    try:
        found = cms.verify_detached(
            layout.cms, content=bytes(content), trusted=trusted, like_openssl=True
        )
    except VerificationError as exc:
        raise VerificationError(f"{path} (manifest signature): {exc.message}", exc.hint) from exc
    manifest = parse_manifest(bytes(content), f"signed manifest of {path}")
    fmt = manifest.get("bundle", {}).get("format", "plain")
    if fmt not in ("verity", "crypt"):
        raise VerificationError(
            f"{path}: the signature holds the manifest, but the manifest says format '{printable(fmt, 40)}'",
            "RAUC writes an inline signature only for verity and crypt bundles; build it again",
        )
    if fmt == "verity" and not layout.squashfs:
        raise VerificationError(
            f"{path}: the signed manifest says format verity, but the payload is not a SquashFS image",
            "the bundle was changed after signing; build it again",
        )
    check = BundleCheck(fmt, found.certificate, found.hash_alg, layout.payload_size, manifest)
    root, salt, tree = verity_params(manifest, path)
    data_size = layout.payload_size - tree
    if data_size <= 0 or data_size % VERITY_BLOCK:
        raise VerificationError(
            f"{path}: the payload ({layout.payload_size} bytes) minus the signed hash tree size ({tree}) "
            f"is not a whole number of {VERITY_BLOCK}-byte blocks",
            "the bundle was cut or extended after signing; build it again",
        )
    if check_payload:
        verify_payload(path, data_size, root, salt, veritysetup)
    check.verity_root = root
    return check


def verity_params(manifest: dict[str, dict[str, str]], path: str) -> tuple[str, str, int]:
    """``verity-hash``, ``verity-salt`` and ``verity-size`` of a signed manifest, checked as
    rauc's ``check_manifest_external`` checks them: hash and salt 32 bytes in hex each, the
    size a non-zero multiple of 4096 (in ASCII digits: ``str.isdigit`` takes others)."""
    section = manifest.get("bundle", {})
    root = section.get("verity-hash", "")
    salt = section.get("verity-salt", "")
    size = section.get("verity-size", "")
    if not HEX32.fullmatch(root) or not HEX32.fullmatch(salt):
        raise VerificationError(
            f"{path}: the signed manifest lacks a sha256 verity-hash and a 32-byte verity-salt, in hex",
            "build the bundle with rauc 1.5 or later",
        )
    root, salt = root.lower(), salt.lower()
    if not re.fullmatch(r"[0-9]+", size) or int(size) == 0 or int(size) % VERITY_BLOCK:
        raise VerificationError(
            f"{path}: the signed manifest's verity-size '{printable(size, 40)}' is not valid"
        )
    return root, salt, int(size)


def verify_payload(path: str, data_size: int, root: str, salt: str, veritysetup: str | None = None) -> None:
    """Every data block of the payload against its hash tree and the signed root hash."""
    from .verity import veritysetup as find_veritysetup

    argv = [
        veritysetup or find_veritysetup(),
        "verify",
        "--no-superblock",
        "--format=1",
        "--hash=sha256",
        f"--data-block-size={VERITY_BLOCK}",
        f"--hash-block-size={VERITY_BLOCK}",
        f"--data-blocks={data_size // VERITY_BLOCK}",
        f"--hash-offset={data_size}",
        f"--salt={salt}",
        path,
        path,
        root,
    ]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    except OSError as exc:
        raise ConfigError(f"cannot run {argv[0]}: {exc.strerror}", "apt-get install cryptsetup-bin") from exc
    except subprocess.TimeoutExpired as exc:
        raise ConfigError(f"veritysetup verify of {path} took more than {TIMEOUT_S} s") from exc
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise VerificationError(
            f"{path}: the payload does not match the signed verity root hash "
            f"({' '.join(lines[-2:]) if lines else 'veritysetup exit ' + str(done.returncode)})",
            "the bundle was changed after signing; build it again",
        )


def hash_range(path: str, length: int, hash_alg: str, chunk: int = 1 << 20) -> bytes:
    """The digest of the first ``length`` bytes of ``path``, read in chunks."""
    h = hashlib.new(hash_alg)
    buf = bytearray(chunk)
    view = memoryview(buf)
    try:
        with open(path, "rb", buffering=0) as fh:
            left = length
            while left:
                n = fh.readinto(view[: min(chunk, left)])
                if not n:
                    raise VerificationError(
                        f"{path} changed while it was read", "check it once it is complete"
                    )
                h.update(view[:n])
                left -= n
    except OSError as exc:
        raise ConfigError(f"cannot read bundle {path}: {exc.strerror}") from exc
    return h.digest()
