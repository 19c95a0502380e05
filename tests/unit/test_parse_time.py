"""What BitBake loads at parse time: the standard library and a known set of hsmsign modules.

``addpylib`` imports ``hsmsign.bitbake`` with the host Python, where python-pkcs11,
cryptography and asn1crypto are absent. docs/dev/internals.md lists the same set.
"""

from __future__ import annotations

import ast
import base64
import importlib.util
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import hsmsign
import pytest
from hsmsign.bitbake import checks

LIB = Path(hsmsign.__file__).resolve().parents[1]
PARSE_TIME = {
    "hsmsign",
    "hsmsign.bitbake",
    "hsmsign.bitbake.checks",
    "hsmsign.bitbake.runtime",
    "hsmsign.devtoken",
    "hsmsign.errors",
    "hsmsign.frozen",
    "hsmsign.known_keys",
    "hsmsign.roles",
    "hsmsign.secrets",
    "hsmsign.settings",
    "hsmsign.uri",
}

# Import the classes' module with the heavy packages blocked, call what the classes call at
# parse time and in their task-time Python, and report what got loaded.
PROBE = """
import json, sys, sysconfig
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('cryptography', 'pkcs11', 'asn1crypto'):
            raise ImportError('blocked ' + name)
sys.meta_path.insert(0, Block())
before = set(sys.modules)
import hsmsign.bitbake as hb
d = hb.DictData({
    'HSM_PKCS11_URI': 'pkcs11:token=t;object=k?pin-source=file:/run/pin',
    'HSMSIGN_PUBKEY_SHA256': 'ab' * 32, 'HSMSIGN_MODE': 'development', 'TMPDIR': '/tmp',
    'SWUPDATE_PRIVATE_KEY': '/keys/k.pem', 'HSMSIGN_SWUPDATE_DIR': '/w', 'HSMSIGN_CMD': 'hsmsign',
    'HSMSIGN_SWUPDATE_MODE': 'cms',
})
hb.check_config(d, ['HSM_PKCS11_URI', 'FW_AES_KEY'])
hb.check_value('X', 'pkcs11:token=t?pin-value=1234', True)
for role in hb.ROLES:
    hb.key_identity(d, role); hb.key_name(d, role); hb.lockfile(d, role)
hb.img_key_name(d); hb.dev_default_uri(d, {}); hb.swupdate_sign_tool(d)
hb.child_env(d, {}, 'FITIMAGE'); hb.redact('pin-value=1')
stdlib = [sysconfig.get_paths()[k] for k in ('stdlib', 'platstdlib')]
loaded = {}
for name, mod in list(sys.modules.items()):
    if name in before or mod is None:
        continue
    loaded[name] = getattr(mod, '__file__', None) or ''
print(json.dumps({'loaded': loaded, 'stdlib': stdlib}))
"""


def test_parse_time_loads_only_the_standard_library_and_the_parse_time_modules() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(LIB)},
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    ours = {name for name in report["loaded"] if name.split(".")[0] == "hsmsign"}
    assert ours == PARSE_TIME
    for name in ours:
        assert str(Path(report["loaded"][name]).resolve()).startswith(str(LIB))
    stdlib = [os.path.realpath(p) for p in report["stdlib"]]
    foreign = {
        name: path
        for name, path in report["loaded"].items()
        if name.split(".")[0] != "hsmsign"
        and path
        and (
            "site-packages" in path
            or "dist-packages" in path
            or not any(os.path.realpath(path).startswith(p) for p in stdlib)
        )
    }
    assert foreign == {}


def _module_file(name: str) -> Path:
    path = LIB.joinpath(*name.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _is_stdlib(top: str) -> bool:
    if top in sys.builtin_module_names or top == "__future__":
        return True
    spec = importlib.util.find_spec(top)
    origin = (spec.origin or "") if spec is not None else ""
    if origin in ("built-in", "frozen"):
        return True
    stdlib = [os.path.realpath(sysconfig.get_paths()[k]) for k in ("stdlib", "platstdlib")]
    path = os.path.realpath(origin)
    return "-packages" not in path and any(path.startswith(p + os.sep) for p in stdlib)


def test_parse_time_modules_import_only_stdlib_and_each_other_at_module_level() -> None:
    """The static half: a new module-level import in a parse-time module must be one of them."""
    for name in sorted(PARSE_TIME):
        tree = ast.parse(_module_file(name).read_text())
        package = name if _module_file(name).name == "__init__.py" else name.rpartition(".")[0]
        for node in tree.body:
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                    targets = [prefix] if node.module else [f"{prefix}.{a.name}" for a in node.names]
                else:
                    targets = [node.module or ""]
            else:
                continue
            for target in targets:
                top = target.split(".")[0]
                if top == "hsmsign":
                    # a name imported from a module is fine; a module must be a parse-time one
                    module = target if _module_file(target).exists() else target.rpartition(".")[0]
                    assert module in PARSE_TIME, f"{name} imports {target} at module level"
                else:
                    assert _is_stdlib(top), f"{name} imports {target} at module level"


# --- the parse-time secret check: every variable, the leak scanner's patterns -----------------

SWUPDATE_DOC_KEY = "390ad54490a4a5f53722291023c19e08ffb5c4677a59e958c96ffa6e641df040"  # known_keys.json


def _published_keys() -> list[tuple[str, str]]:
    with open(os.path.join(str(LIB), "hsmsign", "data", "known_keys.json"), encoding="utf-8") as fh:
        return [(e["hex"], e.get("name", "")) for e in json.load(fh)["symmetric_keys"]]


def _fatal(values: dict, mode: str = "production", flags: dict | None = None) -> dict:
    from hsmsign import bitbake as hb

    base = {"HSMSIGN_MODE": mode, "HSMSIGN_ENABLE": "1", "HSM_PKCS11_URI": "pkcs11:token=t;object=k"}
    problems = hb.check_config(hb.DictData({**base, **values}, flags))
    return {p.variable: p for p in problems if p.fatal}


def _never_shows(problems: dict, secret: str) -> None:
    for p in problems.values():
        text = p.format()
        assert secret not in text, text
        assert "chars redacted" not in text  # not even its length


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MKIMAGE_SIGN_PIN", "24681357"),
        ("HSM_PIN", "1234"),
        ("HSM_USER_PIN", "0000aaaa"),
        ("ACME_TOKEN_PIN", "S3cr3t-Pin"),
        ("SIGNING_PASSWORD", "hunter2hunter2"),
        ("SWUPDATE_PASSPHRASE", "correct-horse"),
        ("MKIMAGE_SIGN_PIN:pn-u-boot", "24681357"),  # an override does not hide it
        ("FW_AES_KEY:board-name", "5f0e1c2b9a8d7c6b5a49382716051423"),  # nor a public-sounding override
    ],
)
def test_a_pin_or_key_under_any_name_stops_the_parse(name: str, value: str) -> None:
    problems = _fatal({name: value})
    assert name in problems, problems
    _never_shows(problems, value)


def test_pin_value_under_another_name_and_in_a_flag_stops_the_parse_in_both_modes() -> None:
    for mode in ("production", "development"):
        problems = _fatal(
            {"ACME_SIGN_URI": "pkcs11:token=a;object=b?pin-value=7531", "SIGNING_PKCS11_URI": None},
            mode,
            flags={"SIGNING_PKCS11_URI": {"fit": "pkcs11:serial=1;object=rauc?pin-value=86420"}},
        )
        assert {"ACME_SIGN_URI", "SIGNING_PKCS11_URI[fit]"} <= set(problems), (mode, problems)
        _never_shows(problems, "7531")
        _never_shows(problems, "86420")


@pytest.mark.parametrize(("key", "name"), _published_keys())
def test_every_published_aes_key_stops_the_parse_whatever_the_variable_is_called(key: str, name: str) -> None:
    raw = bytes.fromhex(key)
    for variable, value in (
        ("SWUPDATE_AES_KEY", key),
        ("FIRMWARE_BLOB", key.upper()),
        ("EXTRA_SIGN_ARGS", f"-K 0x{key} --mode cbc"),
        ("SECURE_DATA", base64.b64encode(raw).decode()),
    ):
        problems = _fatal({variable: value})
        assert variable in problems, (name, variable)
        assert "published" in problems[variable].message
        _never_shows(problems, key)
        _never_shows(problems, key.upper())


def test_findings_other_than_pin_value_and_private_keys_are_warnings_in_development() -> None:
    from hsmsign import bitbake as hb

    d = hb.DictData({"HSMSIGN_MODE": "development", "HSM_PKCS11_URI": "pkcs11:token=t;object=k",
                     "MKIMAGE_SIGN_PIN": "24681357", "FW_KEY": SWUPDATE_DOC_KEY})  # fmt: skip
    found = {p.variable: p for p in hb.check_config(d)}
    assert not found["MKIMAGE_SIGN_PIN"].fatal and not found["FW_KEY"].fatal


@pytest.mark.parametrize(
    "uri",
    [
        "pkcs11:token=t;object=k?pin-source=|/bin/echo 24681357",
        "pkcs11:token=t;object=k?pin-source=%7C/bin/echo%2024681357",
        "pkcs11:token=t;object=k?module-path=/usr/lib/p.so&PIN-SOURCE=|/usr/bin/printf%09%s 2468",
        "pkcs11:token=t;object=k?pin-source=|/bin/sh -c 'cat /run/pin'",
        'pkcs11:token=t;object=k?pin-source=|"/bin/echo" 2468',
        'pkcs11:token=t;object=k?pin-source=|"unterminated 2468',
        "pkcs11:token=t;object=k?pin-source= | /bin/echo 2468&module-name=p11-kit-proxy",
        # an allowlisted program without its subcommand, or its name on another program
        "pkcs11:token=t;object=k?pin-source=|hsmsign-remote 2468",
        "pkcs11:token=t;object=k?pin-source=|/bin/secret-tools lookup 2468",
        # in a command line, after a quoted URI that is fine
        "hsmsign sign --uri 'pkcs11:a?pin-source=|/usr/bin/getpin' "
        '--uri "pkcs11:b?pin-source=|/bin/echo 2468"',
    ],
)
def test_a_pin_source_program_with_arguments_stops_the_parse_in_both_modes(uri: str) -> None:
    for mode in ("production", "development"):
        problems = _fatal({"HSM_PKCS11_URI_ROOTFS": uri}, mode)
        assert "HSM_PKCS11_URI_ROOTFS" in problems, (mode, problems)
        assert "pin-source" in problems["HSM_PKCS11_URI_ROOTFS"].message
        _never_shows(problems, "2468")


@pytest.mark.parametrize(
    "value",
    [
        "pkcs11:token=t;object=k?pin-source=|/usr/local/bin/get-hsm-pin",
        "pkcs11:token=t;object=k?pin-source=%7C/usr/local/bin/get-hsm-pin&module-name=p11-kit-proxy",
        'pkcs11:token=t;object=k?pin-source=|"/opt/acme tools/get-pin"',
        "pkcs11:token=t;object=k?pin-source=file:/run/secrets/hsm pin",
        "hsmsign sign --uri 'pkcs11:token=t;object=k?pin-source=|/usr/bin/getpin' payload.bin",
        # the programs production accepts with arguments: they name where the PIN is kept
        "pkcs11:token=t;object=k?pin-source=|hsmsign-remote pin builder@hsm-host",
        "pkcs11:token=t;object=k?pin-source=%7C/usr/bin/systemd-creds%20cat%20hsm-pin",
        "pkcs11:token=t;object=k?pin-source=|secret-tool lookup service acme-hsm",
    ],
)
def test_a_pin_source_program_alone_passes(value: str) -> None:
    from hsmsign import bitbake as hb

    assert not hb.pin_program_with_arguments(value)


def test_stock_values_pass() -> None:
    """Values like OE-Core's and meta-oe's own (the real parse on three releases checks them all)."""
    stock = {
        "SRCREV": "a" * 40,
        "HSMSIGN_PUBKEY_SHA256": "ab" * 32,
        "SSTATE_SIG_KEY": "",
        "PACKAGE_FEED_GPG_PASSPHRASE_FILE": "/run/gpg-passphrase",
        "BB_HASHSERVE": "auto",
        "EXTRA_USERS_PARAMS": "usermod -p '' root;",
        "SIGNING_PKCS11_URI": "pkcs11:token=${PN};object=fit",
        "UBOOT_SIGN_KEYNAME": "dev",
        "PINCTRL_DRIVER": "pinctrl-imx8mm",
        "ROOTFS_POSTPROCESS_COMMAND": "rootfs_update_timestamp; ",
        "SDK_DEPLOY": "/build/tmp/deploy/sdk",
        "UNINATIVE_CHECKSUM:x86_64": "d81c54284be2bb886931fc87281d58177a2cd381cf99d1981f8923039a72a302",
    }
    assert _fatal(stock) == {}


def test_functions_and_non_text_values_are_left_out_and_counted() -> None:
    from hsmsign import bitbake as hb

    d = hb.DictData(
        {"HSMSIGN_MODE": "production", "HSMSIGN_ENABLE": "1", "HSM_PKCS11_URI": "pkcs11:token=t;object=k",
         # meta-oe's signing.bbclass writes its build-time SoftHSM token's PIN in a function
         "signing_import_define_role": 'echo "pkcs11:token=${PN};object=$role;pin-value=1111"',
         "BB_ORIGENV": {"HSM_PIN": "24681357"}, "__BBTASKS": ["do_build"], "HSM_PIN": "9753"},
        flags={"signing_import_define_role": {"func": "1"}},
    )  # fmt: skip
    stats: dict = {}
    problems = {p.variable for p in hb.check_config(d, None, stats) if p.fatal}
    assert problems == {"HSM_PIN"}
    assert stats["functions"] == 1 and stats["variables"] == 4 and stats["seconds"] >= 0


def test_the_check_is_fast_on_a_datastore_of_bitbake_size() -> None:
    """5,000 variables, 1.2 MB (a real base configuration: ~2,400 variables, 150 KB; -D logs its time)."""
    import random
    import time

    from hsmsign import bitbake as hb

    rnd = random.Random(17)
    values = {"HSMSIGN_MODE": "production", "HSMSIGN_ENABLE": "1"}
    values["HSM_PKCS11_URI"] = "pkcs11:token=t;object=k"
    for i in range(5000):
        words = [f"word{rnd.randrange(10**6)}/path-{i}" for _ in range(rnd.choice((1, 2, 4, 40)))]
        values[f"VAR_{i}_{rnd.choice(('FLAGS', 'DIR', 'SRC', 'OPTS', 'KEYNAME'))}"] = " ".join(words)
    start = time.monotonic()
    stats: dict = {}
    assert [p for p in hb.check_config(hb.DictData(values), None, stats) if p.fatal] == []
    assert stats["variables"] == len(values)
    assert time.monotonic() - start < 5.0  # ~0.2 s here; bound far away from a slow CI machine


@pytest.mark.parametrize(
    "text",
    [
        "pin-source=" * 50_000,
        "pkcs11:a?pin-source=|/x&" * 25_000,
        "'pkcs11:a?pin-source=|\"/a b\"' " * 20_000,
        "pin-source=|" + "x" * 600_000,
        ("0" * 64 + " ") * 10_000,
        "A" * 600_000,
    ],
)
def test_the_value_checks_run_in_linear_time_on_hostile_values(text: str) -> None:
    import time

    from hsmsign import bitbake as hb

    start = time.monotonic()
    hb.check_value("ACME_BLOB", text, True)
    assert time.monotonic() - start < 3.0  # a linear scan takes well under 1 s here


def test_expansion_happens_in_a_copy_of_the_datastore() -> None:
    """Inline Python may set variables (BitBake's get_autorev does): the configuration keeps none."""
    from hsmsign import bitbake as hb

    class Recording(hb.DictData):
        copies: list = []

        def createCopy(self) -> hb.DictData:  # noqa: N802 - BitBake's API
            copy = Recording(self.values, self.flags)
            Recording.copies.append(copy)
            return copy

        def getVar(self, name: str, expand: bool = True) -> object:  # noqa: N802 - BitBake's API
            if expand and name == "SRCPV":
                self.values["__BBAUTOREV_SEEN"] = "1"  # what ${@bb.fetch2.get_autorev(d)} does
            return super().getVar(name, expand)

    d = Recording({"HSMSIGN_MODE": "production", "HSMSIGN_ENABLE": "1", "SRCPV": "${@...}",
                   "HSM_PKCS11_URI": "pkcs11:token=t;object=k"})  # fmt: skip
    hb.scan_datastore(d, True)
    assert "__BBAUTOREV_SEEN" not in d.values and len(Recording.copies) == 1


# --------------------------------------------------------------------------- recipe files

KEY_HEADER = "-----BEGIN RSA PRIVATE" + " KEY-----"  # split: no key header in a tracked file


def _recipe_problems(tmp_path: Path, text: str, mode: str = "production", name: str = "u-boot_%.bbappend"):
    path = tmp_path / name
    path.write_text(text)
    d = checks.DictData({"FILE": str(tmp_path / "u-boot_2024.01.bb"), "__BBAPPEND": str(path)})
    return checks.check_recipe_files(d, mode == "production"), str(path)


def test_a_secret_in_a_bbappend_stops_the_parse_naming_file_line_and_variable(tmp_path: Path) -> None:
    text = (
        'SUMMARY = "board tweaks"\n'
        'ACME_SIGN_URI = "pkcs11:token=a;object=b?pin-value=7531"\n'
        "EXTRA_ARGS = \\\n"
        '    "-k ' + KEY_HEADER + 'MIIE"\n'
        'ACME_PIN_URI[fit] = "pkcs11:token=a;object=b?pin-source=|/bin/echo%2086420"\n'
        f'FW_BLOB = "{SWUPDATE_DOC_KEY}"\n'
    )
    for mode in ("production", "development"):
        problems, path = _recipe_problems(tmp_path, text, mode)
        names = [p.variable for p in problems if p.fatal]
        expected = [f"{path}:2: ACME_SIGN_URI", f"{path}:3: EXTRA_ARGS", f"{path}:5: ACME_PIN_URI[fit]"]
        if mode == "production":
            expected.append(f"{path}:6: FW_BLOB")  # a published key: fatal in production
        else:
            assert [p.variable for p in problems if not p.fatal] == [f"{path}:6: FW_BLOB"]
        assert names == expected, (mode, names)
        for problem in problems:
            for value in ("7531", "86420", "MIIE", SWUPDATE_DOC_KEY):
                assert value not in problem.format()


def test_what_only_looks_like_a_pin_in_a_recipe_passes(tmp_path: Path) -> None:
    """oe-core's builder recipe has BUILDER_PASSWORD, meta-oe's openldap a PACKAGECONFIG[passwd]:
    names alone are judged in the user's configuration, not in every recipe of every layer."""
    text = (
        'BUILDER_PASSWORD = "builder"\n'
        'PACKAGECONFIG[passwd] = "--enable-passwd,--disable-passwd"\n'
        'MKIMAGE_SIGN_PIN_FILE = "/run/secrets/pin"\n'
        'HSM_PKCS11_URI = "pkcs11:token=a;object=b?pin-source=file:/run/secrets/hsm-pin"\n'
        "do_install() {\n    install -d ${D}/etc\n}\n"
    )
    assert _recipe_problems(tmp_path, text)[0] == []


def test_recipe_files_are_the_recipe_its_appends_and_its_includes(tmp_path: Path) -> None:
    d = checks.DictData(
        {
            "FILE": "/l/recipes/u-boot_2024.01.bb",
            "__BBAPPEND": "/a/u-boot_%.bbappend /b/u-boot_2024.01.bbappend",
            "__depends": [("/l/recipes/u-boot-common.inc", 1.0), ("/l/classes/uboot-sign.bbclass", 1.0),
                          ("/l/conf/machine/board.conf", 1.0), ("/a/u-boot_%.bbappend", 1.0)],
        }
    )  # fmt: skip
    assert checks.recipe_files(d) == [
        "/l/recipes/u-boot_2024.01.bb", "/a/u-boot_%.bbappend", "/b/u-boot_2024.01.bbappend",
        "/l/recipes/u-boot-common.inc",
    ]  # fmt: skip


def test_a_recipe_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    problems, _ = _recipe_problems(tmp_path, 'SUMMARY = "x"\n')
    assert problems == []
    problems, _ = _recipe_problems(tmp_path, 'SUMMARY = "x"\nA_URI = "pkcs11:object=k?pin-value=24680"\n')
    assert [p.fatal for p in problems] == [True]


def test_every_stock_recipe_of_the_snapshots_passes() -> None:
    """No recipe, .bbappend or .inc of oe-core, meta-oe, meta-swupdate, meta-rauc or
    meta-freescale trips the check (it runs for every recipe of every layer a user has)."""
    root = Path(os.environ.get("HSMSIGN_YOCTO_CACHE", "/home/bbuser/.cache/hsmsign/yocto"))
    scanned = 0
    for release in ("scarthgap", "wrynose", "master"):
        top = root / release
        if not top.is_dir():
            continue
        for path in top.rglob("*"):
            if path.suffix in (".bb", ".bbappend", ".inc") and path.is_file():
                scanned += 1
                for line, name, value in checks._recipe_file_findings(str(path)):
                    assert checks.recipe_value_problem(name, value, True) is None, (str(path), line, name)
    if not scanned:
        pytest.skip(f"no Yocto snapshots in {root}")
