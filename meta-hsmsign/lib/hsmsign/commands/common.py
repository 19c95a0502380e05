"""What the verbs share: opening the key from options, policy, output, progress, ledger."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

from ..errors import ConfigError, printable

PROGRESS_MIN_BYTES = 100 << 20


def require_uri(args: Any) -> str:
    """The key URI of the options, its PIN rules checked for the mode (``checked_uri``)."""
    uri = getattr(args, "uri", None)
    if not uri:
        raise ConfigError(
            "no key given",
            "pass --uri 'pkcs11:token=TOKEN;object=KEY?pin-source=file:/path/to/pin' or set HSM_PKCS11_URI",
        )
    return checked_uri(args, str(uri))


def checked_uri(args: Any, uri: str) -> str:
    """``uri`` once its PIN rules pass for the mode (``hsmsign.policy.check_uri``); warnings printed.

    Runs on the text, before it is parsed: production refuses a PIN in any spelling, even in
    a URI that does not parse, with the policy exit code, and no message shows it.
    """
    from ..policy import check_uri
    from ..settings import effective_mode

    warned = getattr(args, "uri_warnings", None)
    if warned is None:  # a verb may check one URI more than once: each warning once per command
        warned = set()
        setattr(args, "uri_warnings", warned)  # noqa: B010 - args is any namespace
    for warning in check_uri(uri, effective_mode(getattr(args, "mode", None))):
        if warning not in warned:
            warned.add(warning)
            warn(warning)
    return uri


def role_fingerprints(args: Any) -> list[Any]:
    """The pinned fingerprints for the key role of this call (``--role`` / ``HSMSIGN_ROLE``).

    ``HSMSIGN_PUBKEY_SHA256_<ROLE>``, else its fallback role's, else ``HSMSIGN_PUBKEY_SHA256``
    (see ``hsmsign.roles``).
    """
    from ..settings import Settings

    settings = Settings.from_env()
    return settings.fingerprints_for_role(getattr(args, "role", None) or settings.role)


@contextlib.contextmanager
def open_key_from_args(
    args: Any, uri: str | None = None, check_policy: bool = True, pinned: list[Any] | None = None
) -> Iterator[Any]:
    """Open the signing key the options name and apply the mode's policy, pinned included.

    Every signing path comes through here, so the pin is checked before the token signs.
    """
    from .. import policy, token

    text = checked_uri(args, uri) if uri else require_uri(args)
    with token.open_key(text, mode=args.mode, module=args.module, pin_env=args.pin_env) as key:
        if check_policy:
            wanted = role_fingerprints(args) if pinned is None else pinned
            for warning in policy.check_signer(key, args.mode, wanted):
                warn(warning)
        yield key


@contextlib.contextmanager
def open_secret_key_from_args(args: Any, uri: str | None = None) -> Iterator[Any]:
    from .. import token
    from ..errors import PolicyError
    from ..settings import Settings

    text = checked_uri(args, uri) if uri else require_uri(args)
    with token.open_secret_key(text, mode=args.mode, module=args.module, pin_env=args.pin_env) as key:
        from ..policy import Pinned

        # the pin of the AES role (HSMSIGN_PUBKEY_SHA256_ENCRYPT) holds in every mode
        Pinned(_encrypt_fingerprints()).check(key)
        from ..formats.encrypt import published_key

        # through the key's check block (AES_K of a zero block): its value never leaves the token
        published = published_key(key.fingerprint, key.key_size)
        if published is not None:
            label = printable(key.label)
            msg = f"AES key '{label}' is a published key ({published}); anyone can decrypt with it"
            if args.mode == "production":
                raise PolicyError(
                    msg,
                    "generate a new key inside the token ('hsmsign keygen --type aes:256'); never import one",
                )
            warn(msg + "; acceptable for tests only")
        if args.mode == "production":
            if key.is_development:
                raise PolicyError(
                    f"secret key '{key.label}' is a development key",
                    "production builds must use the production encryption key",
                )
            if key.token_info.is_software and not Settings.from_env(check=False).allow_software_token:
                raise PolicyError(
                    f"token '{key.token_info.label}' is a software token",
                    "use a hardware token in production, or set HSMSIGN_ALLOW_SOFTWARE_TOKEN=1",
                )
        yield key


def _encrypt_fingerprints() -> list[Any]:
    from ..settings import Settings

    return Settings.from_env().fingerprints_for_role("ENCRYPT")


def warn(message: str) -> None:
    """One warning line on stderr; what it quotes from an artifact cannot break the line (printable)."""
    print(f"hsmsign: warning: {printable(message, None)}", file=sys.stderr)


def emit(args: Any, text: str, data: dict[str, Any] | list[Any]) -> None:
    """Human text by default, JSON with --json."""
    if getattr(args, "json", False):
        import json

        json.dump(data, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    elif text:
        print(text)


class Progress:
    """A one-line progress meter on stderr for long work, only when stderr is a terminal."""

    def __init__(self, label: str, total: int, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.label = label
        self.total = total
        self.enabled = total >= PROGRESS_MIN_BYTES and bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.monotonic()
        self._last = 0.0

    def __call__(self, done: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < 0.2 and done < self.total:
            return
        self._last = now
        pct = 100.0 * done / self.total if self.total else 100.0
        rate = done / max(now - self.start, 1e-6) / (1 << 20)
        self.stream.write(f"\r{self.label}: {pct:5.1f}% of {self.total >> 20} MiB, {rate:6.0f} MiB/s")
        self.stream.flush()

    def done(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def file_progress(label: str, path: str) -> Progress:
    try:
        size = os.path.getsize(path)
    except OSError:
        size = 0
    return Progress(label, size)


class SignedOutputs:
    """The outputs of one signing command and their ledger entries (see :func:`signed_outputs`)."""

    def __init__(self, staged: Any, batch: Any) -> None:
        self.staged = staged
        self.batch = batch

    def open(self, path: str, mode: int | None = None) -> Any:
        """A temporary file (``.fh``, ``.tmp_path``) that becomes ``path`` when the command succeeds."""
        return self.staged.open(path, mode)

    def adopt(self, f: Any) -> Any:
        """A temporary file made by ``atomic.create_temporary`` before the command began, now one of
        its outputs (renamed with them, or removed)."""
        return self.staged.adopt(f)

    def write(self, path: str, data: bytes, mode: int | None = None) -> None:
        self.staged.write_bytes(path, data, mode)

    def record(self, *, artifact: str, sha256_hex: str, key: Any, mechanism: str, kind: str) -> None:
        """One ledger entry for a signature just made (no-op without a ledger)."""
        self.batch.add(
            artifact=os.path.abspath(artifact),
            sha256_hex=sha256_hex,
            key_fingerprint=key.fingerprint,
            uri_redacted=key.uri.identity(),
            mechanism=mechanism,
            kind=kind,
        )


@contextlib.contextmanager
def signed_outputs(args: Any) -> Iterator[SignedOutputs]:
    """Outputs and ledger entries that land together, or not at all.

    Enter it before the token is opened: the ledger (``--ledger`` / ``HSMSIGN_LEDGER``)
    is checked first (directory, append, lock, a tail that verifies). Outputs are written
    to temporary files; when the block ends without an exception the entries are
    appended and the outputs renamed into place, and if either fails neither remains.
    """
    from .. import atomic, ledger

    batch = ledger.Batch(getattr(args, "ledger", None))
    with atomic.staged(batch.appended) as staged:
        yield SignedOutputs(staged, batch)


@contextlib.contextmanager
def keys_by_hint(args: Any, uri_for: Any, pinned: list[Any] | None = None) -> Iterator[Any]:
    """A ``signer_for(hint)`` that opens (and caches) one token key per URI (policy, fingerprints)."""
    with contextlib.ExitStack() as stack:
        cache: dict[str, Any] = {}

        def signer_for(hint: str | None) -> Any:
            uri = uri_for(hint)
            if uri not in cache:
                cache[uri] = stack.enter_context(open_key_from_args(args, uri=uri, pinned=pinned))
            return cache[uri]

        yield signer_for
