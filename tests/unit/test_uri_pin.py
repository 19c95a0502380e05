"""A PIN in a URI, in any spelling: never shown, refused in production (no token needed).

``hsmsign uri`` runs in-process (``cli.main``) as a user runs it; its whole output is
checked for the secret. The token-backed halves (signing, PIN files, child processes)
are in tests/integration/test_pin_sources.py.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from hsmsign import cli, pin
from hsmsign.errors import ConfigError, HsmsignError, PolicyError
from hsmsign.policy import check_uri
from hsmsign.uri import Pkcs11Uri, parse, pin_problems, pin_program_argv, redact, redact_uri
from hypothesis import given, settings
from hypothesis import strategies as st

SECRET = "S3cr3tPin7781"


def run_uri(uri: str, mode: str) -> tuple[int, str]:
    """``hsmsign uri --mode MODE URI`` in-process: exit code and everything it printed."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["uri", "--mode", mode, uri])
    return code, out.getvalue() + err.getvalue()


# ------------------------------------------------------------------ item 5: PIN-like attributes

PIN_LIKE = [
    f"pkcs11:token=t;object=k?pin-value{SECRET}",
    f"pkcs11:token=t;object=k;pin-value{SECRET}",
    f"pkcs11:token=t;object=k?pin_value={SECRET}",
    f"pkcs11:token=t;object=k?pin-value ={SECRET}",
    f"pkcs11:token=t;object=k? pin-value={SECRET}",
    f"pkcs11:token=t;object=k?pin%2Dvalue={SECRET}",
    f"pkcs11:token=t;object=k?pin%252dvalue={SECRET}",
    f"pkcs11:token=t;object=k?pinvalue={SECRET}",
    f"pkcs11:token=t;object=k?PIN={SECRET}",
    f"pkcs11:token=t;object=k?pin={SECRET}",
    f"pkcs11:token=t;object=k?user-pin={SECRET}",
    f"pkcs11:token=t;object=k?so_pin={SECRET}",
    f"pkcs11:token=t;object=k?password={SECRET}",
    f"pkcs11:token=t;object=k?x-pin={SECRET}",
    f"pkcs11:token=t;object=k?module-name=m&pin.value={SECRET}",
    f"pkcs11:token=t;pin_value={SECRET};object=k",
    f"pkcs11:token=t;object=k&pin-value={SECRET}",  # a forgotten '?': inside object's value
    f"pkcs11:token=t;object=k%26pin-value%3D{SECRET}",
    f"pkcs11:token=t;object=k?pin-value:{SECRET}",
    f"pkcs11:token=t;object=k?pin-value%3D{SECRET}",
    f"PKCS11:TOKEN=t?Pin_Value={SECRET}",
    f"pkcs11:token=t;object=k?\uff50\uff49\uff4e={SECRET}",  # full-width "pin"
    f"pkcs11:token=t;object=k;id=%70%69%6e%76%61%6c%75%65{SECRET}",  # an id whose bytes spell it
]


@pytest.mark.parametrize("uri", PIN_LIKE)
def test_pin_like_attribute_refused_in_production_and_never_shown(uri: str) -> None:
    code, output = run_uri(uri, "production")
    assert code == PolicyError.exit_code, output
    assert SECRET not in output and "Traceback" not in output
    assert output.startswith("hsmsign: error: ")
    assert "looks like a PIN" in output or "hides a PIN-like attribute" in output
    # development: a bad URI (exit 2), still never shown
    code, output = run_uri(uri, "development")
    assert code == ConfigError.exit_code, output
    assert SECRET not in output
    # and the parser's error, the redaction of the text and the layer's function agree
    with pytest.raises(ConfigError) as info:
        parse(uri)
    assert SECRET not in str(info.value)
    assert SECRET not in redact_uri(uri) and SECRET not in redact(uri)
    assert [p.kind for p in pin_problems(uri)] == ["pin-like"]


@pytest.mark.parametrize(
    "uri",
    [
        f"pkcs11:token=t;object=k?pin-value={SECRET}",
        f"pkcs11:token=t;object=k?PIN-VALUE={SECRET}",
        f"pkcs11:token=t;object=k?module-path=/m.so&Pin-Value={SECRET}",
        f"pkcs11:token=t;object=k?pin-value=%20{SECRET}",
        f"pkcs11:token=t;object=k?pin-value= {SECRET}",
    ],
)
def test_rfc_pin_value_refused_in_production_redacted_in_development(uri: str) -> None:
    code, output = run_uri(uri, "production")
    assert code == 4 and SECRET not in output and "carries a pin-value" in output, output
    code, output = run_uri(uri, "development")
    assert code == 0 and SECRET not in output and "pin-value=REDACTED" in output, output


def test_names_that_are_not_pins_still_parse() -> None:
    uri = parse("pkcs11:token=spin;object=pinned-key;slot-description=Opinion?module-name=opensc")
    assert uri.object == "pinned-key" and not pin_problems(uri)
    assert parse("pkcs11:token=R%26D%20pins;object=secret-signing;type=secret-key").token == "R&D pins"
    assert pin_problems("pkcs11:token=t;object=k?pin-source=file:/run/pin") == []


# ------------------------------------------------------------------ item 4: pin-source programs

PROGRAM_ARGS = [
    f"|/bin/echo%20{SECRET}",
    f"|/bin/echo {SECRET}",
    f"|/bin/echo%09{SECRET}",
    f'|"/bin/echo" "{SECRET}"',
    f"|'/bin/echo' {SECRET}",
    f"|/bin/sh%20-c%20%22echo%20{SECRET}%22",
    f"|printf%20%25s%20{SECRET}",
    f"|/usr/bin/env%20{SECRET}=1%20/bin/true",
    f"%7C/bin/echo%20{SECRET}",
    f"|systemd-creds%20echo%20{SECRET}",  # allowlisted program, other subcommand
]


@pytest.mark.parametrize("source", PROGRAM_ARGS)
def test_pin_program_with_arguments_refused_in_production_warned_in_development(source: str) -> None:
    uri = f"pkcs11:token=t;object=k?pin-source={source}"
    code, output = run_uri(uri, "production")
    assert code == 4, output
    assert SECRET not in output and "has arguments (not shown)" in output, output
    code, output = run_uri(uri, "development")
    assert code == 0, output
    assert SECRET not in output
    assert "hsmsign: warning: pin-source=|" in output and "[arguments redacted]" in output, output
    # every printed form of the URI hides the arguments
    parsed = parse(uri)
    for shown in (str(parsed), parsed.redacted(), repr(parsed), redact(uri), redact_uri(uri)):
        assert SECRET not in shown, shown
    with pytest.raises(PolicyError):
        check_uri(parsed, "production")


@pytest.mark.parametrize(
    "source",
    [
        "|/usr/local/bin/get-hsm-pin",
        "|%22/opt/acme%20tools/get-pin%22",
        "|/usr/local/bin/hsmsign-remote%20pin%20-o%20Port=2222%20builder@hsm1",
        "|systemd-creds%20cat%20hsm-pin",
        "|/usr/bin/secret-tool%20lookup%20service%20hsm%20token%20acme-prod",
    ],
)
def test_program_without_arguments_or_on_the_allowlist_passes_production(source: str) -> None:
    uri = f"pkcs11:token=t;object=k?pin-source={source}"
    code, output = run_uri(uri, "production")
    assert code == 0, output
    assert "warning" not in output
    assert check_uri(uri, "production") == []
    argv = pin_program_argv(parse(uri).pin_source or "")
    if argv and len(argv) > 1:  # allowed, but the arguments are still not printed
        assert argv[-1] not in output and "[arguments redacted]" in output


# ------------------------------------------------------------------ item 15a: unsplittable programs

@pytest.mark.parametrize(
    "source",
    ['|"unterminated', "|'unterminated", f"|/bin/get-pin%20%22{SECRET}", "|/bin/get-pin%20\\", "|", "|%20"],
)
@pytest.mark.parametrize("mode", ["production", "development"])
def test_unsplittable_pin_program_is_a_configuration_error(source: str, mode: str) -> None:
    code, output = run_uri(f"pkcs11:token=t;object=k?pin-source={source}", mode)
    assert code == ConfigError.exit_code, output
    assert "internal error" not in output and SECRET not in output
    assert output.startswith("hsmsign: error: PKCS#11 URI: ")
    assert len([line for line in output.splitlines() if not line.startswith("  hint:")]) == 1, output


def test_pin_problems_for_the_layer() -> None:
    """What the parse-time check calls: never raises, one problem per thing to fix, no secret."""
    cases = {
        "pkcs11:token=t;object=k?pin-source=file:/run/pin": [],
        f"pkcs11:token=t?pin-value={SECRET}": ["pin-value"],
        f"pkcs11:token=t?pin_value={SECRET}": ["pin-like"],
        f"pkcs11:token=t?pin-source=|/bin/echo%20{SECRET}": ["program-arguments"],
        'pkcs11:token=t?pin-source=|"x': ["program-unsplittable"],
        f"not a uri pin={SECRET}": ["pin-like"],
        "": [],
    }
    for text, kinds in cases.items():
        problems = pin_problems(text)
        assert [p.kind for p in problems] == kinds, text
        for p in problems:
            assert SECRET not in p.message + p.hint and p.message and p.hint
    assert not any(p.refused_in_development for p in pin_problems(f"pkcs11:token=t?pin-value={SECRET}"))


def test_redact_free_text() -> None:
    cases = [
        f"hsmsign sign --uri 'pkcs11:token=t?pin-source=|/bin/echo {SECRET}' -o s f",
        f'HSM_PKCS11_URI = "pkcs11:token=t?pin-source=|/bin/echo {SECRET}"',
        f"PIN_VALUE = {SECRET}",
        f"pkcs11-tool --pin={SECRET} -O",
        f"MKIMAGE_SIGN_PIN={SECRET}",
        f"url pkcs11:token=t?passphrase={SECRET}&x=1 next",
        f"pin%2Dvalue%3D{SECRET}",
    ]
    for text in cases:
        assert SECRET not in redact(text), (text, redact(text))
    # words in messages are left alone
    for text in ("the URI carries a pin-value; use pin-source", "--pin-env HSM_PIN", "pin-value is refused"):
        assert redact(text) == text
    kept = "hsmsign sign --uri 'pkcs11:token=t?pin-source=|/usr/local/bin/get-pin' -o s f"
    assert redact(kept) == kept


def test_redaction_runs_in_linear_time() -> None:
    n = 100_000
    for text in ("pin" + " " * n + "x", "pin-source=|" + "'" * n, "pin" + "-" * n + "value", "pin = " * n):
        start = time.monotonic()
        redact(text)
        pin_problems(text)
        assert time.monotonic() - start < 5, text[:20]


# ------------------------------------------------------------------ fuzz

_names = st.builds(
    lambda prefix, core: prefix + core,
    st.sampled_from(["", "user", "so-", "x-", "USER_", "hsm-"]),
    st.sampled_from(
        ["pin", "PIN", "Pin", "pin-value", "PIN-VALUE", "pin_value", "pinvalue", "pin value", "pin%2Dvalue",
         "pin%2dvalue", "pin%5Fvalue", "pin.value", "pin-code", "password", "passphrase", "passwd", "pwd",
         "secret", "\uff50\uff49\uff4e", "pin%252Dvalue", "pIn-VaLuE"]
    ),
)  # fmt: skip
_seps = st.sampled_from(["=", "", " =", "= ", " = ", ":", "%3D", "==", "%3d%20"])
_secrets = st.text(alphabet="abcdefghjkmnpqrstuvwxyzACDEFHJKLMNPRTUVWXY34679", min_size=6, max_size=12)
_places = st.sampled_from(
    [
        "pkcs11:token=t;object=k?{attr}",
        "pkcs11:token=t;object=k?module-name=m&{attr}",
        "pkcs11:token=t;{attr};object=k",
        "pkcs11:token=t;object=k&{attr}",
        "pkcs11:token=t;object=k?module-name=m%26{quoted}",
        "pkcs11:token=t;object=k%3B{quoted}",
        "PKCS11:TOKEN=t?{attr}",
        "pkcs11:{attr}",
        "pkcs11:token=t?{attr}&module-path=/m.so",
    ]
)


@settings(max_examples=120, deadline=1000)
@given(name=_names, sep=_seps, secret=_secrets, place=_places)
def test_fuzz_pin_like_attributes_never_shown(name: str, sep: str, secret: str, place: str) -> None:
    secret = "Q8" + secret  # never a word of a message
    attr = name + sep + secret
    uri = place.format(attr=attr, quoted=quote(attr, safe=""))
    code, output = run_uri(uri, "production")
    assert code == 4, (uri, output)
    assert secret not in output, (uri, output)
    code, output = run_uri(uri, "development")
    assert code in (0, 2), (uri, output)
    assert secret not in output, (uri, output)
    assert secret not in redact(uri) and secret not in redact_uri(uri)


@settings(max_examples=150, deadline=1000)
@given(
    text=st.text(max_size=60),
    shape=st.sampled_from(
        ["{t}", "pkcs11:{t}", "pkcs11:token=t?pin-source=|{t}", "pkcs11:token=t?pin-source={t}"]
    ),
    mode=st.sampled_from(["production", "development"]),
)
def test_fuzz_no_uri_input_is_an_internal_error(text: str, shape: str, mode: str) -> None:
    uri = shape.format(t=text)
    if not uri.strip() or uri.startswith("-"):
        return  # argparse's own usage errors
    code, output = run_uri(uri, mode)
    assert code in (0, 2, 4), (uri, output)
    assert "internal error" not in output and "Traceback" not in output
    # the library's own doors: only hsmsign's errors, whatever the text
    with contextlib.suppress(HsmsignError):
        pin.pin_source_for(Pkcs11Uri.parse(uri), None, mode)


# ------------------------------------------------------------------ PIN files and child environments

def test_pin_file_exposure_rule(tmp_path: Path) -> None:
    path = tmp_path / "pin"
    path.write_text("1234\n")
    me, other = os.geteuid(), os.geteuid() + 1
    for mode, mine, theirs in [
        (0o600, "", ""),
        (0o400, "", ""),
        (0o644, "every user", "every user"),
        (0o604, "every user", "every user"),
        (0o602, "every user", "every user"),
        (0o640, "readable by its group", ""),  # another owner may share it with a group on purpose
        (0o620, "writable by its group", "writable by its group"),
        (0o660, "writable by its group", "writable by its group"),
    ]:
        path.chmod(mode)
        st_ = path.stat()
        assert (mine in pin.pin_file_exposure(st_, me)) and bool(pin.pin_file_exposure(st_, me)) == bool(mine)
        assert bool(pin.pin_file_exposure(st_, other)) == bool(theirs), oct(mode)
        if theirs:
            assert theirs in pin.pin_file_exposure(st_, other)


def test_pin_variables_are_withheld_for_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI_TOKEN_SECRET", "1111")
    monkeypatch.setenv("HSM_PIN", "2222")
    monkeypatch.setenv("MKIMAGE_SIGN_PIN", "3333")
    monkeypatch.setenv("HSMSIGN_PIN_ENV", "CI_TOKEN_SECRET")
    monkeypatch.setenv("PASSWORD_STORE_DIR", "/store")
    with pin.env_withheld(["CI_TOKEN_SECRET", "MKIMAGE_SIGN_PIN"]) as moved:
        assert moved == ["CI_TOKEN_SECRET", "HSM_PIN", "MKIMAGE_SIGN_PIN"]
        for name in moved:
            assert name not in os.environ and name not in pin.child_env()
        assert os.environ["HSMSIGN_PIN_ENV"] == "CI_TOKEN_SECRET"  # a name, not a PIN
        assert os.environ["PASSWORD_STORE_DIR"] == "/store"  # pass(1) in a PIN program needs it
        source = pin.PinSource("env", "CI_TOKEN_SECRET")
        assert pin.read_pin(source, parse("pkcs11:token=t")) == "1111"
    assert os.environ["CI_TOKEN_SECRET"] == "1111" and os.environ["HSM_PIN"] == "2222"
    assert not pin.is_withheld("CI_TOKEN_SECRET")
