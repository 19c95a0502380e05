"""Errors that are part of hsmsign's contract.

Every failure a user can cause or meet is an ``HsmsignError`` with a stable exit
code per family, a one-line message saying what failed, and a hint saying what to
do next. Messages never carry a PIN or key material: URIs are redacted before they
reach a message (see ``hsmsign.uri.Pkcs11Uri.redacted``).

Exit codes (documented in docs/reference/exit-codes.md):

====  ==============================================================
0     success
1     internal error (a bug: please report it)
2     configuration or usage error (bad URI, bad option, unreadable file)
3     token error (module, slot, token, login, key lookup, session)
4     policy refusal (development key in production, known-public key, a PIN in the URI, ...)
5     signing error (the token refused or returned an unusable signature)
6     verification error (an artifact or signature does not verify)
130   interrupted (SIGINT)
143   terminated (SIGTERM)
====  ==============================================================

On SIGINT and SIGTERM the temporary files of unfinished outputs are removed
(``hsmsign.atomic``) and one line says so.
"""

from __future__ import annotations


def printable(text: str, limit: int | None = 200) -> str:
    """``text`` safe for a one-line message: every non-printable character escaped, at most ``limit``
    characters (None: no limit).

    Names inside artifacts (a certificate's subject, a FIT node, a cpio member) are attacker-controlled:
    a newline or carriage return there must not forge a second log line, an escape sequence must not
    rewrite the terminal, and a Unicode format character (the bidi overrides U+202A-U+202E and
    U+2066-U+2069, zero-width characters) must not reorder or hide what is shown. ``str.isprintable``
    is False for all of them (categories Cc, Cf, Cs, Co, Cn, Zl, Zp and every space but ' '), so each is
    shown as its escape (``\n``, ``\x1b``, ``\u202e``). Escaping is idempotent: the result is printable.
    """
    out = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    return out if limit is None or len(out) <= limit else out[: limit - 3] + "..."


class HsmsignError(Exception):
    """Base class: a failure with a message for the user and a stable exit code."""

    exit_code = 1
    family = "internal"

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class InternalError(HsmsignError):
    """A bug in hsmsign: the CLI turns any exception it did not expect into one (exit 1)."""

    exit_code = 1
    family = "internal"


class ConfigError(HsmsignError):
    """Bad URI, option, input file or environment."""

    exit_code = 2
    family = "config"


class TokenError(HsmsignError):
    """The PKCS#11 module, slot, token, login, session or key lookup failed."""

    exit_code = 3
    family = "token"


class PolicyError(HsmsignError):
    """The configured policy refuses this key, token or operation."""

    exit_code = 4
    family = "policy"


class SigningError(HsmsignError):
    """The token refused to sign, or returned a signature that does not verify."""

    exit_code = 5
    family = "signing"


class VerificationError(HsmsignError):
    """An artifact or signature does not verify."""

    exit_code = 6
    family = "verification"


class Interrupted(HsmsignError):
    exit_code = 130
    family = "interrupted"


EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "internal error (a bug in hsmsign: please report it with -v output)",
    2: "configuration or usage error (URI, option, input file, environment)",
    3: "token error (module, slot, token, PIN/login, session, key lookup)",
    4: "policy refusal (development or known-public key in production, pinning, key strength, a PIN in "
    "the URI or in a file others can read)",
    5: "signing error (the token refused, or its signature did not verify)",
    6: "verification error (an artifact or signature does not verify)",
    130: "interrupted (SIGINT); unfinished outputs are removed",
    143: "terminated (SIGTERM); unfinished outputs are removed",
}
