"""Where the PIN comes from, against a real SoftHSM token: what production refuses, what no
message shows, and that no child process hsmsign starts inherits a PIN variable."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import SoftHsm
from tests.integration.test_fit import build_fit, control_dtb, tools  # noqa: F401 - fixture

# production refuses SoftHSM unless told otherwise: the PIN rules are what is under test here
PRODUCTION = {"HSMSIGN_ALLOW_SOFTWARE_TOKEN": "1"}


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    path = tmp_path / "rootfs.ext4"
    path.write_bytes(b"rootfs" * 1000)
    return path


def pin_of(softhsm: SoftHsm) -> str:
    return softhsm.pin_file.read_text().strip()


def base_uri(softhsm: SoftHsm, label: str) -> str:
    return softhsm.uri(label, with_query=False) + f"?module-path={softhsm.module}"


def script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o700)
    return path


def sign(softhsm: SoftHsm, uri: str, mode: str, out: Path, artifact: Path, *extra: str, env=None):
    return softhsm.run_cli(
        "sign", "--mode", mode, "--uri", uri, *extra, "-o", str(out), str(artifact),
        env={**PRODUCTION, **(env or {})},
    )  # fmt: skip


# ------------------------------------------------------------------ item 4: pin-source=|PROGRAM ARGS


def test_pin_program_arguments_refused_in_production_and_never_printed(
    softhsm: SoftHsm, rsa2048: str, artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pin = pin_of(softhsm)
    monkeypatch.setenv("HSMSIGN_ALLOW_SOFTWARE_TOKEN", "1")
    variants = [
        f"|/bin/echo%20{pin}",
        f"|/bin/echo {pin}",
        f"|/usr/bin/printf%20%25s%20{pin}",
        f"|/bin/sh%20-c%20%22echo%20{pin}%22",
        f"|%22/bin/echo%22%20%22{pin}%22",
    ]
    out = tmp_path / "p.sig"
    for source in variants:
        uri = base_uri(softhsm, "rsa2048") + f"&pin-source={source}"
        for verb in (["sign", "-o", str(out), str(artifact)], ["doctor"], ["info"], ["pubkey"]):
            code, output = main_in_process(*verb, "--mode", "production", "--uri", uri)
            assert code == 4, (source, verb, output)
            assert "has arguments (not shown)" in output and pin not in output, output
        assert not out.exists()
    # development signs with it (the real program runs), warns, and never prints the arguments
    uri = base_uri(softhsm, "rsa2048") + f"&pin-source={variants[0]}"
    dev = sign(softhsm, uri, "development", out, artifact)
    assert dev.returncode == 0, dev.stderr
    assert "warning: pin-source=|/bin/echo has arguments" in dev.stderr and pin not in dev.stderr + dev.stdout
    # an error line that prints the URI (no such key) shows the program without its arguments
    code, output = main_in_process(
        "sign", "--mode", "development", "--uri", uri.replace("object=rsa2048", "object=nope"),
        "-o", str(out), str(artifact),
    )  # fmt: skip
    assert code == 3 and "|/bin/echo [arguments redacted]" in output and pin not in output, output


def main_in_process(*argv: str) -> tuple[int, str]:
    """``hsmsign ARGV`` in this process (the token fixture's SoftHSM): exit code and all it printed."""
    from hsmsign import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue() + err.getvalue()


def test_pin_program_without_arguments_or_allowlisted_signs_in_production(
    softhsm: SoftHsm, rsa2048: str, artifact: Path, tmp_path: Path
) -> None:
    get_pin = script(tmp_path / "get-hsm-pin", f"cat '{softhsm.pin_file}'\n")
    done = sign(softhsm, base_uri(softhsm, "rsa2048") + f"&pin-source=|{get_pin}", "production",
                tmp_path / "a.sig", artifact)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr
    # an allowlisted program keeps its arguments (matched by name and subcommand: a stand-in here)
    (tmp_path / "bin").mkdir()
    tool = script(tmp_path / "bin" / "secret-tool", f'[ "$1" = lookup ] && cat \'{softhsm.pin_file}\'\n')
    uri = base_uri(softhsm, "rsa2048") + f"&pin-source=|{tool}%20lookup%20service%20hsm-pin"
    done = sign(softhsm, uri, "production", tmp_path / "b.sig", artifact)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "b.sig").stat().st_size > 0


# ------------------------------------------------------------------ item 15a: bad program lines


def test_bad_pin_program_line_is_a_configuration_error(
    softhsm: SoftHsm, rsa2048: str, artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HSMSIGN_ALLOW_SOFTWARE_TOKEN", "1")
    out = tmp_path / "s.sig"
    for source in ['|"unterminated', "|/bin/cat%20'", "|/bin/cat%20\\", "|%20", "|/bin/ca%00t"]:
        uri = base_uri(softhsm, "rsa2048") + f"&pin-source={source}"
        for mode in ("development", "production"):
            code, output = main_in_process(
                "sign", "--mode", mode, "--uri", uri, "-o", str(out), str(artifact)
            )
            assert code == 2, (source, mode, output)
            assert "internal error" not in output and "Traceback" not in output
            assert output.startswith("hsmsign: error: ")
            assert not out.exists()


# ------------------------------------------------------------------ PIN file permissions


def test_pin_file_others_can_read_stops_production(
    softhsm: SoftHsm, rsa2048: str, artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pin_file = tmp_path / "pin"
    shutil.copy(softhsm.pin_file, pin_file)
    uri = base_uri(softhsm, "rsa2048") + f"&pin-source=file:{pin_file}"
    out = tmp_path / "s.sig"
    monkeypatch.setenv("HSMSIGN_ALLOW_SOFTWARE_TOKEN", "1")
    argv = ("sign", "--mode", "production", "--uri", uri, "-o", str(out), str(artifact))
    for mode in (0o644, 0o604, 0o640, 0o660, 0o620):
        pin_file.chmod(mode)
        code, output = main_in_process(*argv)
        assert code == 4, (oct(mode), output)
        assert f"chmod 600 {pin_file}" in output and f"mode {mode:04o}" in output
        assert not out.exists()
    code, output = main_in_process("doctor", "--mode", "production", "--uri", uri)
    assert code == 4 and "chmod 600" in output, output
    # development signs and warns
    dev = sign(softhsm, uri, "development", out, artifact)
    assert dev.returncode == 0 and "production refuses it: chmod 600" in dev.stderr, dev.stderr
    # 0600 and 0400 sign in production
    for mode in (0o600, 0o400):
        pin_file.chmod(mode)
        assert sign(softhsm, uri, "production", tmp_path / f"{mode:o}.sig", artifact).returncode == 0


# ------------------------------------------------------------------ no child inherits a PIN variable


def test_pin_variables_do_not_reach_child_processes(
    softhsm: SoftHsm, tools: Path, tmp_path: Path  # noqa: F811 - fixture
) -> None:
    """fit_check_sign, U-Boot's mkimage and the PIN program run without any PIN variable."""
    pin = pin_of(softhsm)
    softhsm.keygen("fit-dev", "rsa:2048")
    dumps = tmp_path / "env"
    dumps.mkdir()
    check = script(
        tmp_path / "fit_check_sign", f'env > "{dumps}/fit_check_sign"\nexec "{tools}/fit_check_sign" "$@"\n'
    )
    mkimage = script(tmp_path / "mkimage", f'env > "{dumps}/mkimage"\nexec "{tools}/mkimage" "$@"\n')
    env = {
        "HSMSIGN_MODE": "development",
        "SOURCE_DATE_EPOCH": "1700000000",
        "HSM_PIN": pin,
        "MKIMAGE_SIGN_PIN": pin,
        "HSM_PKCS11_MODULE": softhsm.module,
        "HSMSIGN_MKIMAGE": str(mkimage),
        "HSMSIGN_FIT_CHECK_SIGN": str(check),
    }
    # 'fit sign' with --pin-env: the PIN from the environment, U-Boot's verifier as the child
    image = build_fit(tools, tmp_path, "declared.its")
    uri = softhsm.uri("fit-dev", with_query=False)
    done = softhsm.run_cli("fit", "sign", "--uri", uri, "--pin-env", "CI_TOKEN_SECRET", "--fit-check-sign",
                           str(check), str(image), env={**env, "CI_TOKEN_SECRET": pin})  # fmt: skip
    assert done.returncode == 0, done.stderr
    first_check = (dumps / "fit_check_sign").read_text()
    # the mkimage drop-in: MKIMAGE_SIGN_PIN is the PIN (as for mkimage); the real mkimage runs first
    dtb = control_dtb(tmp_path)
    done = softhsm.run_cli("mkimage", "-F", "-k", f"pkcs11:token={softhsm.token_label};object=fit-dev",
                           "-K", str(dtb), "-r", str(image), env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    # the PIN program itself
    program = script(tmp_path / "get-pin", f'env > "{dumps}/pin-program"\ncat "{softhsm.pin_file}"\n')
    uri = softhsm.uri("fit-dev", with_query=False) + f"?pin-source=|{program}"
    done = softhsm.run_cli("sign", "--uri", uri, "-o", str(tmp_path / "s"), str(image), env=env)
    assert done.returncode == 0, done.stderr
    for child, seen in [
        ("fit_check_sign (fit sign)", first_check),
        *[(name, (dumps / name).read_text()) for name in ("fit_check_sign", "mkimage", "pin-program")],
    ]:
        assert pin not in seen, child
        for name in ("CI_TOKEN_SECRET", "HSM_PIN", "MKIMAGE_SIGN_PIN"):
            assert f"\n{name}=" not in "\n" + seen, (child, name)
        assert f"SOFTHSM2_CONF={softhsm.conf}" in seen  # the rest of the environment is passed on
    assert os.environ.get("CI_TOKEN_SECRET") is None
