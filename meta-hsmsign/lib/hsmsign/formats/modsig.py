"""Linux kernel module signatures: PKCS#7 appended to the ``.ko`` file.

The layout the kernel checks (``kernel/module/signing.c``, ``scripts/sign-file.c``,
``include/linux/module_signature.h``)::

    ELF module bytes | PKCS#7 | struct module_signature | "~Module signature appended~\\n"

* the PKCS#7 is a DER ContentInfo(SignedData), detached (the content is every
  byte before it), one SignerInfo named by issuer and serial of the signing
  certificate, no signed attributes, no certificates: what ``sign-file`` writes
  (``CMS_NOCERTS | CMS_BINARY | CMS_NOSMIMECAP | CMS_NOATTR``). The kernel finds
  the key by issuer and serial in its trusted keyrings (the certificate built in
  with ``CONFIG_SYSTEM_TRUSTED_KEYS``);
* ``struct module_signature`` is 12 bytes: algo 0, hash 0, id_type 2
  (``PKEY_ID_PKCS7``), signer_len 0, key_id_len 0, three pad bytes, then
  ``sig_len``, the PKCS#7 length as a big-endian u32;
* then the 28-byte magic.

The signature is made with :class:`hsmsign.formats.cms.DetachedSigner` (what
``cms.sign_detached`` writes without attributes and certificates; one token
operation per module). A module already signed is re-signed: every appended
signature is stripped first (the kernel checks only the last one, and a second
signature over a signed module would cover the first), so a module is never
signed twice.

Standard library only here; the CMS work is in ``cms``.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, VerificationError, printable

MAGIC = b"~Module signature appended~\n"
PKEY_ID_PKCS7 = 2
# struct module_signature: u8 algo, hash, id_type, signer_len, key_id_len, __pad[3]; __be32 sig_len
SIG_INFO = struct.Struct(">BBBBB3xI")
TRAILER_LEN = SIG_INFO.size + len(MAGIC)
HASHES = ("sha256", "sha384", "sha512")
ET_REL = 1
_ELF_MAGIC = b"\x7fELF"


class ModuleFormatError(ConfigError):
    """The input is not a kernel module hsmsign can sign (exit 2)."""


@dataclass(frozen=True)
class Module:
    """A module file split into the ELF body and its appended signatures (last first)."""

    path: str
    body: bytes
    signatures: tuple[bytes, ...]

    @property
    def signed(self) -> bool:
        return bool(self.signatures)


def split(data: bytes, what: str) -> Module:
    """The ELF body and the appended PKCS#7 signatures of a module file.

    Every appended signature is peeled off (a module signed twice by another tool
    has two). ``ModuleFormatError`` for a file that is not an ELF relocatable
    object, is cut short, or whose signature trailer is broken.
    """
    body = bytes(data)
    sigs: list[bytes] = []
    while body.endswith(MAGIC):
        if len(body) < TRAILER_LEN:
            raise ModuleFormatError(
                f"{what}: truncated module signature (the file is only {len(body)} bytes)"
            )
        algo, hash_id, id_type, signer_len, key_id_len, sig_len = SIG_INFO.unpack_from(
            body, len(body) - TRAILER_LEN
        )
        pad = body[len(body) - TRAILER_LEN + 5 : len(body) - TRAILER_LEN + 8]
        if id_type != PKEY_ID_PKCS7:
            raise ModuleFormatError(
                f"{what}: the module signature has id_type {id_type}, not PKCS#7 (2)",
                "only PKCS#7 module signatures exist since Linux 4.3; re-sign from the unsigned module",
            )
        if algo or hash_id or signer_len or key_id_len or any(pad):
            # the kernel's mod_check_sig: every field but id_type and sig_len is zero, padding too
            raise ModuleFormatError(
                f"{what}: the module signature's info block is malformed "
                f"(algo {algo}, hash {hash_id}, signer_len {signer_len}, key_id_len {key_id_len}, "
                f"padding {pad.hex()}: the kernel wants all zero)",
                "the file was changed after signing; re-sign from the unsigned module",
            )
        start = len(body) - TRAILER_LEN - sig_len
        if sig_len == 0 or start < 0:
            raise ModuleFormatError(
                f"{what}: truncated module signature (it claims {sig_len} bytes, "
                f"{len(body) - TRAILER_LEN} precede it)",
                "the file was cut short; re-sign from the unsigned module",
            )
        pkcs7 = body[start : len(body) - TRAILER_LEN]
        if _der_size(pkcs7) != sig_len:
            raise ModuleFormatError(
                f"{what}: truncated or corrupt module signature (its {sig_len} bytes are not one DER PKCS#7)",
                "the file was cut short or changed; re-sign from the unsigned module",
            )
        sigs.append(pkcs7)
        body = body[:start]
    check_elf(body, what)
    return Module(what, body, tuple(sigs))


def _der_size(der: bytes) -> int:
    """The full size of the DER SEQUENCE at the start of ``der`` (-1 when there is none)."""
    if len(der) < 2 or der[0] != 0x30:
        return -1
    first = der[1]
    if first < 0x80:
        return 2 + first
    n = first & 0x7F
    if n == 0 or n > 4 or len(der) < 2 + n:
        return -1
    return 2 + n + int.from_bytes(der[2 : 2 + n], "big")


def check_elf(body: bytes, what: str) -> None:
    """An ELF relocatable object (what every ``.ko`` is) whose section table lies inside the file."""
    if body[:4] != _ELF_MAGIC:
        raise ModuleFormatError(
            f"{what} is not an ELF file (no \\x7fELF header)", "pass kernel modules (.ko files) only"
        )
    if len(body) < 52:
        raise ModuleFormatError(f"{what}: truncated ELF header ({len(body)} bytes)")
    ei_class, ei_data = body[4], body[5]
    if ei_class not in (1, 2) or ei_data not in (1, 2):
        raise ModuleFormatError(f"{what}: ELF class {ei_class} / data encoding {ei_data} is not valid")
    end = "<" if ei_data == 1 else ">"
    if ei_class == 2:
        if len(body) < 64:
            raise ModuleFormatError(f"{what}: truncated ELF header ({len(body)} bytes)")
        (e_type,) = struct.unpack_from(end + "H", body, 16)
        (e_shoff,) = struct.unpack_from(end + "Q", body, 40)
        e_shentsize, e_shnum = struct.unpack_from(end + "HH", body, 58)
    else:
        (e_type,) = struct.unpack_from(end + "H", body, 16)
        (e_shoff,) = struct.unpack_from(end + "I", body, 32)
        e_shentsize, e_shnum = struct.unpack_from(end + "HH", body, 46)
    if e_type != ET_REL:
        raise ModuleFormatError(
            f"{what} is an ELF file of type {e_type}, not a relocatable kernel module (type 1)",
            "pass kernel modules (.ko files) only",
        )
    if e_shnum == 0 or e_shoff + e_shnum * e_shentsize > len(body):
        raise ModuleFormatError(
            f"{what}: truncated ELF module (its section table ends past the {len(body)} bytes of the file)",
            "the file was cut short; rebuild or copy it again",
        )


def trailer(pkcs7: bytes) -> bytes:
    """``struct module_signature`` and the magic for a PKCS#7 of this length."""
    return SIG_INFO.pack(0, 0, PKEY_ID_PKCS7, 0, 0, len(pkcs7)) + MAGIC


def check_hash(hash_alg: str) -> str:
    if hash_alg not in HASHES:
        raise ConfigError(f"hash '{hash_alg}' is not supported for modules", "use sha256, sha384 or sha512")
    return hash_alg


class Signer:
    """Signs module bodies with one key and certificate (a batch shares the prepared PKCS#7)."""

    def __init__(self, signer: Any, cert: Any, hash_alg: str = "sha256") -> None:
        from . import cms

        self.hash_alg = check_hash(hash_alg)
        self._cms = cms.DetachedSigner(signer, cert, hash_alg)

    def sign(self, body: bytes) -> bytes:
        """The bytes to append to ``body``: PKCS#7 (one token operation), info block, magic."""
        return self.sign_digest(hashlib.new(self.hash_alg, body).digest())

    def sign_digest(self, digest: bytes) -> bytes:
        """The bytes to append to a body whose ``hash_alg`` digest is ``digest``."""
        pkcs7 = self._cms.sign(digest)
        return pkcs7 + trailer(pkcs7)


def sign(signer: Any, cert: Any, body: bytes, hash_alg: str = "sha256") -> bytes:
    """The bytes to append to one module ``body`` (see ``Signer`` for many)."""
    return Signer(signer, cert, hash_alg).sign(body)


@dataclass
class ModuleSignature:
    """A verified module signature."""

    certificate: Any
    hash_alg: str
    body_sha256: str


def verify(data: bytes, trusted: Sequence[Any], what: str) -> ModuleSignature:
    """The last appended signature verifies over the module body with one of ``trusted``.

    Like the kernel, only the last signature counts; it must have no signed
    attributes' surprises (they are checked when present) and be by a trusted
    certificate (the same certificate, or one issued by a trusted one).
    """
    from . import cms

    mod = split(data, what)
    if not mod.signed:
        raise VerificationError(f"{what} is not signed (no module signature appended)")
    pkcs7 = mod.signatures[0]
    body = data[: len(data) - TRAILER_LEN - len(pkcs7)]
    sd = cms.parse(pkcs7)
    infos = sd["signer_infos"]
    if len(infos) == 1:
        sid = infos[0]["sid"]
        try:
            cms.find_signer(sid, trusted, exact=True)
        except VerificationError:
            raise VerificationError(
                f"{what} is signed by another key ({describe_sid(sid)}), not by the given certificate",
                "verify with the certificate of the key that signed it, or re-sign the module",
            ) from None
    try:
        found = cms.verify_detached(pkcs7, content=bytes(body), trusted=trusted, like_kernel=True)
    except VerificationError as exc:
        raise VerificationError(f"{what}: {exc.message}", exc.hint) from exc
    return ModuleSignature(found.certificate, found.hash_alg, hashlib.sha256(body).hexdigest())


def describe_sid(sid: Any) -> str:
    """The issuer and serial (or key identifier) a SignerInfo names, for messages."""
    if sid.name == "issuer_and_serial_number":
        ias = sid.chosen
        return printable(f"issuer {ias['issuer'].human_friendly}, serial {ias['serial_number'].native:x}")
    return f"key identifier {sid.chosen.native.hex()}"
