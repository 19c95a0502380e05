"""FIT signing proved by U-Boot itself: fit_check_sign, fdtgrep + openssl, mkimage -N pkcs11.

Keys are generated inside the session's SoftHSM token; FITs are built from the
.its sources in tests/assets/fit with U-Boot's mkimage; the verifiers are the
tools scripts/deps/fit.setup builds from Debian's u-boot source package
(found through HSMSIGN_UBOOT_TOOLS or the cache; skipped with a hint when
absent, failed when HSMSIGN_REQUIRE_TOOLS=1).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hsmsign.formats import fit
from hsmsign.formats.fdt import Fdt

from tests.conftest import require

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "fit"
EPOCH = "1700000000"
TOOLS = ("fit_check_sign", "fdtgrep", "mkimage")


def uboot_tools_dir() -> Path | None:
    env = os.environ.get("HSMSIGN_UBOOT_TOOLS")
    cache = (
        Path(os.environ.get("HSMSIGN_CACHE", Path.home() / ".cache" / "hsmsign")) / "uboot-tools" / "current"
    )
    for cand in filter(None, [env, str(cache)]):
        d = Path(cand)
        if all((d / t).is_file() and os.access(d / t, os.X_OK) for t in TOOLS):
            return d
    return None


@pytest.fixture(scope="module")
def tools() -> Path:
    d = uboot_tools_dir()
    require(
        d is not None and shutil.which("dtc") is not None and shutil.which("fdtput") is not None,
        "U-Boot tools (fit_check_sign, fdtgrep, mkimage) and dtc",
        "run scripts/deps/fit.setup (or ./scripts/install-deps), or set HSMSIGN_UBOOT_TOOLS",
        env="HSMSIGN_REQUIRE_TOOLS",
    )
    assert d is not None
    return d


def build_fit(
    tools: Path, tmp: Path, its: str, name: str = "image.fit", kernel_size: int = 64 << 10, extra: tuple = ()
) -> Path:
    """Payloads, a board DTB and the FIT (mkimage -f), all in ``tmp``."""
    work = tmp / "src"
    work.mkdir(exist_ok=True)
    for f in ASSETS.iterdir():
        shutil.copy(f, work / f.name)
    (work / "kernel.bin").write_bytes(os.urandom(kernel_size))
    (work / "initrd.bin").write_bytes(os.urandom(4096))
    subprocess.run(
        ["dtc", "-q", "-I", "dts", "-O", "dtb", "-o", work / "board.dtb", work / "board.dts"], check=True
    )
    out = tmp / name
    env = dict(os.environ, SOURCE_DATE_EPOCH=EPOCH)
    subprocess.run(
        [tools / "mkimage", *extra, "-f", work / its, out], check=True, capture_output=True, env=env, cwd=work
    )
    return out


def control_dtb(tmp: Path, name: str = "u-boot.dtb") -> Path:
    out = tmp / name
    subprocess.run(["dtc", "-q", "-I", "dts", "-O", "dtb", "-o", out, ASSETS / "control.dts"], check=True)
    return out


def cli(softhsm, *argv: str) -> subprocess.CompletedProcess[str]:
    r = softhsm.run_cli(*argv, env={"HSMSIGN_MODE": "development", "SOURCE_DATE_EPOCH": EPOCH})
    return r


def ok(r: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert r.returncode == 0, f"rc={r.returncode}\nstdout:{r.stdout}\nstderr:{r.stderr}"
    return r


def check_sign(
    tools: Path, fit_path: Path, dtb: Path, conf: str | None = None
) -> subprocess.CompletedProcess[str]:
    args = [str(tools / "fit_check_sign"), "-f", str(fit_path), "-k", str(dtb)]
    if conf:
        args += ["-c", conf]
    return subprocess.run(args, capture_output=True, text=True, check=False)


def flip_byte(path: Path, needle: bytes, out: Path) -> Path:
    """Copy ``path`` to ``out`` with one byte changed inside the first occurrence of ``needle``."""
    data = bytearray(path.read_bytes())
    pos = data.find(needle)
    assert pos >= 0, f"{needle[:20]!r} not found in {path}"
    data[pos + len(needle) // 2] ^= 0x01
    out.write_bytes(bytes(data))
    return out


RSA_CASES = [
    ("fit-rsa2048", "rsa:2048", "pkcs-1.5"),
    ("fit-rsa2048", "rsa:2048", "pss"),
    ("fit-rsa3072", "rsa:3072", "pss"),
    ("fit-rsa4096", "rsa:4096", "pkcs-1.5"),
]


@pytest.mark.parametrize(("label", "key_type", "padding"), RSA_CASES)
def test_fit_check_sign_accepts_rsa_and_rejects_tampering(softhsm, tools, tmp_path, label, key_type, padding):
    uri = softhsm.keygen(label, key_type)
    image = build_fit(tools, tmp_path, "kernel-fdt.its")
    dtb = control_dtb(tmp_path)
    ok(cli(softhsm, "fit", "sign", "--uri", uri, "--key-name", label, "--padding", padding, str(image)))
    ok(cli(softhsm, "fit", "add-key", "--uri", uri, "--key-name", label, "--dtb", str(dtb)))

    r = check_sign(tools, image, dtb)
    assert r.returncode == 0, r.stdout + r.stderr
    bits = key_type.split(":")[1]
    assert f"sha256,rsa{bits}:{label}+" in r.stdout
    tree = Fdt.parse(image.read_bytes())
    sig = tree.node("/configurations/conf-1/signature-1")
    assert sig is not None and len(sig.get("value") or b"") == int(bits) // 8
    assert (sig.get_str("padding") or "pkcs-1.5") == padding
    assert sig.get_strlist("hashed-nodes") == [
        "/",
        "/configurations/conf-1",
        "/images/kernel-1",
        "/images/kernel-1/hash-1",
        "/images/fdt-1",
        "/images/fdt-1/hash-1",
    ]

    kernel = (tmp_path / "src" / "kernel.bin").read_bytes()
    board = (tmp_path / "src" / "board.dtb").read_bytes()
    for what, needle in (
        ("kernel", kernel[1000:1064]),
        ("fdt", board[-40:]),
        ("config", b"boot the test kernel"),
    ):
        bad = flip_byte(image, needle, tmp_path / f"bad-{what}.fit")
        r = check_sign(tools, bad, dtb)
        assert r.returncode != 0, f"fit_check_sign accepted a FIT with a changed {what}:\n{r.stdout}"

    other = softhsm.keygen("fit-other-rsa2048", "rsa:2048")
    dtb2 = control_dtb(tmp_path, "other.dtb")
    ok(cli(softhsm, "fit", "add-key", "--uri", other, "--key-name", label, "--dtb", str(dtb2)))
    r = check_sign(tools, image, dtb2)
    assert r.returncode != 0, "fit_check_sign accepted a FIT checked against another key"


@pytest.mark.parametrize(
    ("what", "needle", "message"),
    [
        # the signature node's own list of what it covers, which the signature does not cover
        # (U-Boot 2026.01 refuses it; Debian's 2023.01 still hashes the same regions and boots it)
        ("hashed-nodes", b"/images/kernel-1\x00", "hashed-nodes leaves out /images/kernel-1"),
        # /configurations/default: what U-Boot boots without '#conf-name' no longer exists
        ("default", b"conf-1\x00", "the default configuration 'cong-1' does not exist"),
        # the RSA key node without algo ("algo" becomes "alho" in the DTB's strings)
        ("key algo", b"algo\x00", "the key node has no algo"),
    ],
)
def test_what_fit_check_sign_refuses_hsmsign_refuses(softhsm, tools, tmp_path, what, needle, message):
    """Found by changing each bit of a signed FIT and of its control DTB and comparing
    ``hsmsign fit verify`` with fit_check_sign (U-Boot's own code): U-Boot refuses these, so
    hsmsign must; it accepted all three before. The changed hashed-nodes is checked with
    U-Boot 2026.01's fit_check_sign (HSMSIGN_TEST_UBOOT_TOOLS, as the layer tests use it)."""
    uri = softhsm.keygen("fit-rsa2048", "rsa:2048")
    image = build_fit(tools, tmp_path, "kernel-fdt.its")
    dtb = control_dtb(tmp_path)
    ok(cli(softhsm, "fit", "sign", "--uri", uri, "--key-name", "fit-rsa2048", str(image)))
    ok(cli(softhsm, "fit", "add-key", "--uri", uri, "--key-name", "fit-rsa2048", "--dtb", str(dtb)))
    assert check_sign(tools, image, dtb).returncode == 0
    if what == "key algo":
        dtb = flip_byte(dtb, needle, tmp_path / "changed.dtb")
    else:
        image = flip_byte(image, needle, tmp_path / "changed.fit")
    refused = cli(softhsm, "fit", "verify", "--dtb", str(dtb), str(image))
    assert refused.returncode == 6 and message in refused.stderr, refused.stderr
    device = tools
    if what == "hashed-nodes":
        newer = os.environ.get("HSMSIGN_TEST_UBOOT_TOOLS")
        if not newer:
            pytest.skip("U-Boot 2026.01's fit_check_sign (HSMSIGN_TEST_UBOOT_TOOLS) decides this one")
        device = Path(newer)
    r = check_sign(device, image, dtb)
    assert r.returncode != 0, r.stdout + r.stderr


def test_cve_2026_46728_all_referenced_images_signed(softhsm, tools, tmp_path):
    """sign-images leaves the ramdisk out of conf-2: U-Boot covers it anyway, so the signer must."""
    uri = softhsm.keygen("fit-rsa2048", "rsa:2048")
    image = build_fit(tools, tmp_path, "declared.its")
    dtb = control_dtb(tmp_path)
    r = ok(cli(softhsm, "fit", "sign", "--uri", uri, "--key-name", "fit-dev", "--json", str(image)))
    assert "sign-images leaves out ramdisk" in r.stderr
    ok(cli(softhsm, "fit", "add-key", "--uri", uri, "--key-name", "fit-dev", "--dtb", str(dtb)))
    for conf in ("conf-1", "conf-2"):
        r = check_sign(tools, image, dtb, conf)
        assert r.returncode == 0, r.stdout + r.stderr
    tree = Fdt.parse(image.read_bytes())
    nodes = tree.node("/configurations/conf-2/signature-1").get_strlist("hashed-nodes")  # type: ignore[union-attr]
    assert "/images/ramdisk-1" in nodes and "/images/ramdisk-1/hash-1" in nodes
    # the image signature declared on kernel-1 is filled too, over the kernel data
    assert tree.node("/images/kernel-1/signature-1").get("value") is not None  # type: ignore[union-attr]

    initrd = (tmp_path / "src" / "initrd.bin").read_bytes()
    bad = flip_byte(image, initrd[100:164], tmp_path / "bad-ramdisk.fit")
    assert check_sign(tools, bad, dtb, "conf-2").returncode != 0


def _ecdsa_regions(tools: Path, image: Path, paths: list[str], strings_size: int, tmp: Path) -> bytes:
    """What a configuration signature covers, extracted with U-Boot's fdtgrep.

    fdtgrep has no "exclude this property only inside matched nodes", so the
    excluded properties (data, data-size, data-position, data-offset) are
    deleted with fdtput first; the remaining tags are unchanged. Then the first
    hashed-strings bytes of the strings block.
    """
    stripped = tmp / "stripped.fit"
    shutil.copy(image, stripped)
    for p in paths:
        if p.startswith("/images/") and p.count("/") == 2:
            for prop in fit.EXCLUDED_PROPS:
                subprocess.run(["fdtput", "-d", str(stripped), p, prop], capture_output=True, check=False)
    args = [str(tools / "fdtgrep"), "-e", "-O", "bin"]
    for p in paths:
        args += ["-n", p]
    struct_part = subprocess.run([*args, str(stripped)], capture_output=True, check=True).stdout
    raw = image.read_bytes()
    off_strings = int.from_bytes(raw[12:16], "big")
    return struct_part + raw[off_strings : off_strings + strings_size]


@pytest.mark.parametrize(
    ("label", "key_type", "hash_alg"),
    [("fit-ec256", "ec:secp256r1", "sha256"), ("fit-ec384", "ec:secp384r1", "sha384")],
)
def test_ecdsa_fit_verified_with_fdtgrep_and_openssl(softhsm, tools, tmp_path, label, key_type, hash_alg):
    uri = softhsm.keygen(label, key_type)
    image = build_fit(tools, tmp_path, "kernel-fdt.its")
    ok(cli(softhsm, "fit", "sign", "--uri", uri, "--key-name", label, "--algo", hash_alg, str(image)))
    pub = tmp_path / "pub.pem"
    ok(cli(softhsm, "pubkey", "--uri", uri, "--output", str(pub)))

    tree = Fdt.parse(image.read_bytes())
    sig = tree.node("/configurations/conf-1/signature-1")
    assert sig is not None
    bits = 384 if "384" in key_type else 256
    assert sig.get_str("algo") == f"{hash_alg},ecdsa{bits}"
    value = sig.get("value") or b""
    assert len(value) == 2 * bits // 8  # raw r||s, as U-Boot stores it
    expected_nodes = [
        "/",
        "/configurations/conf-1",
        "/images/kernel-1",
        "/images/kernel-1/hash-1",
        "/images/fdt-1",
        "/images/fdt-1/hash-1",
    ]
    assert sig.get_strlist("hashed-nodes") == expected_nodes
    strings_size = int.from_bytes((sig.get("hashed-strings") or b"")[4:8], "big")
    signed = tmp_path / "signed-regions.bin"
    signed.write_bytes(_ecdsa_regions(tools, image, expected_nodes, strings_size, tmp_path))

    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    half = len(value) // 2
    der = tmp_path / "sig.der"
    der.write_bytes(
        encode_dss_signature(int.from_bytes(value[:half], "big"), int.from_bytes(value[half:], "big"))
    )
    r = subprocess.run(
        ["openssl", "dgst", f"-{hash_alg}", "-verify", str(pub), "-signature", str(der), str(signed)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0 and "Verified OK" in r.stdout, r.stdout + r.stderr

    # one byte of the configuration changed: the extracted regions no longer verify
    bad = flip_byte(image, b"boot the test kernel", tmp_path / "bad.fit")
    signed.write_bytes(_ecdsa_regions(tools, bad, expected_nodes, strings_size, tmp_path))
    r = subprocess.run(
        ["openssl", "dgst", f"-{hash_alg}", "-verify", str(pub), "-signature", str(der), str(signed)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode != 0

    # and our own verify agrees, with the key written by add-key
    dtb = control_dtb(tmp_path)
    ok(cli(softhsm, "fit", "add-key", "--uri", uri, "--key-name", label, "--dtb", str(dtb)))
    key_node = Fdt.parse(dtb.read_bytes()).node(f"/signature/{label}")
    assert key_node is not None
    assert key_node.get_str("ecdsa,curve") == ("secp384r1" if bits == 384 else "prime256v1")
    assert key_node.get_str("required") == "conf"
    ok(cli(softhsm, "fit", "verify", "--dtb", str(dtb), str(image)))
    assert cli(softhsm, "fit", "verify", "--dtb", str(dtb), str(bad)).returncode == 6


def test_verify_insists_on_a_required_key(softhsm, tools, tmp_path):
    uri = softhsm.keygen("fit-rsa2048", "rsa:2048")
    image = build_fit(tools, tmp_path, "kernel-fdt.its")
    ok(cli(softhsm, "fit", "sign", "--uri", uri, "--key-name", "fit-rsa2048", str(image)))
    empty = control_dtb(tmp_path, "empty.dtb")
    optional = control_dtb(tmp_path, "optional.dtb")
    ok(
        cli(
            softhsm,
            "fit",
            "add-key",
            "--uri",
            uri,
            "--key-name",
            "fit-rsa2048",
            "--required",
            "none",
            "--dtb",
            str(optional),
        )
    )
    # U-Boot's own tool says OK to both: it only enforces required keys
    assert check_sign(tools, image, empty).returncode == 0
    for dtb in (empty, optional):
        r = cli(softhsm, "fit", "verify", "--dtb", str(dtb), str(image))
        assert r.returncode == 6 and "no required key" in r.stderr, r.stderr
    required = control_dtb(tmp_path, "required.dtb")
    ok(cli(softhsm, "fit", "add-key", "--uri", uri, "--key-name", "fit-rsa2048", "--dtb", str(required)))
    assert "OK" in ok(cli(softhsm, "fit", "verify", "--dtb", str(required), str(image))).stdout


def test_key_rotation_two_required_keys(softhsm, tools, tmp_path):
    """Two keys side by side: required-mode any accepts either signer, all needs both."""
    old = softhsm.keygen("fit-rsa2048", "rsa:2048")
    new = softhsm.keygen("fit-rsa3072", "rsa:3072")
    image = build_fit(tools, tmp_path, "kernel-fdt.its")
    ok(cli(softhsm, "fit", "sign", "--uri", new, "--key-name", "fit-rsa3072", str(image)))
    dtb = control_dtb(tmp_path)
    ok(cli(softhsm, "fit", "add-key", "--uri", old, "--key-name", "fit-rsa2048", "--dtb", str(dtb)))
    ok(
        cli(
            softhsm,
            "fit",
            "add-key",
            "--uri",
            new,
            "--key-name",
            "fit-rsa3072",
            "--dtb",
            str(dtb),
            "--required-mode",
            "any",
        )
    )
    assert check_sign(tools, image, dtb).returncode == 0
    ok(cli(softhsm, "fit", "verify", "--dtb", str(dtb), str(image)))
    all_dtb = control_dtb(tmp_path, "all.dtb")
    ok(cli(softhsm, "fit", "add-key", "--uri", old, "--key-name", "fit-rsa2048", "--dtb", str(all_dtb)))
    ok(cli(softhsm, "fit", "add-key", "--uri", new, "--key-name", "fit-rsa3072", "--dtb", str(all_dtb)))
    assert check_sign(tools, image, all_dtb).returncode != 0
    assert cli(softhsm, "fit", "verify", "--dtb", str(all_dtb), str(image)).returncode == 6


def _mkimage_engine_env(softhsm) -> dict[str, str]:
    env = dict(softhsm.env)
    env["MKIMAGE_SIGN_PIN"] = softhsm.pin_file.read_text().strip()
    env["SOURCE_DATE_EPOCH"] = EPOCH
    return env


def test_rsa_pkcs1v15_signature_identical_to_mkimage_engine(softhsm, tools, tmp_path):
    """Same FIT, same key, same timestamp: mkimage -N pkcs11 (libp11) and hsmsign write the same value."""
    require(
        Path("/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so").exists() or bool(shutil.which("mkimage")),
        "libengine-pkcs11-openssl",
        "apt-get install libengine-pkcs11-openssl",
        env="HSMSIGN_REQUIRE_TOOLS",
    )
    uri = softhsm.keygen("fit-dev", "rsa:2048")
    image = build_fit(tools, tmp_path, "declared.its")
    theirs = tmp_path / "mkimage.fit"
    ours = tmp_path / "hsmsign.fit"
    shutil.copy(image, theirs)
    shutil.copy(image, ours)
    # mkimage 2023.01 wants the URI without 'pkcs11:'; the module comes from p11-kit's registry
    key_uri = f"token={softhsm.token_label};object=fit-dev"
    r = subprocess.run(
        [str(tools / "mkimage"), "-F", "-k", key_uri, "-N", "pkcs11", "-r", str(theirs)],
        capture_output=True,
        text=True,
        env=_mkimage_engine_env(softhsm),
        check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    ok(cli(softhsm, "fit", "sign", "--uri", uri, "--key-name", "fit-dev", str(ours)))
    a, b = Fdt.parse(theirs.read_bytes()), Fdt.parse(ours.read_bytes())
    for path in ("/images/kernel-1/signature-1", "/configurations/conf-1/signature-1"):
        va, vb = a.node(path).get("value"), b.node(path).get("value")  # type: ignore[union-attr]
        assert va is not None and len(va) == 256, f"mkimage did not sign {path}: {r.stderr}"
        assert va == vb, f"{path}: signature values differ"
        assert a.node(path).get("hashed-strings") == b.node(path).get("hashed-strings")  # type: ignore[union-attr]
    # conf-2 differs on purpose: mkimage covers only sign-images (kernel, fdt), hsmsign also the ramdisk
    conf2 = "/configurations/conf-2/signature-1"
    assert a.node(conf2).get("value") != b.node(conf2).get("value")  # type: ignore[union-attr]


def test_mkimage_dropin_oe_core_calls(softhsm, tools, tmp_path):
    """The calls oe-core makes through UBOOT_MKIMAGE_SIGN, with a URI as the key directory."""
    softhsm.keygen("fit-dev", "rsa:2048")
    src = build_fit(tools, tmp_path, "declared.its").parent / "src"
    dtb = control_dtb(tmp_path)
    env = {
        "HSMSIGN_MODE": "development",
        "SOURCE_DATE_EPOCH": EPOCH,
        "HSM_PKCS11_MODULE": softhsm.module,
        "MKIMAGE_SIGN_PIN": softhsm.pin_file.read_text().strip(),
        "HSMSIGN_MKIMAGE": str(tools / "mkimage"),
    }
    out = tmp_path / "dropin.fit"
    # kernel-fitimage: build from the .its, sign, write the key (-K) as required (-r)
    r = softhsm.run_cli(
        "mkimage",
        "-D",
        f"-I dts -O dtb -p 2000 -i {src}",
        "-f",
        str(src / "declared.its"),
        "-k",
        f"token={softhsm.token_label}",
        "-K",
        str(dtb),
        "-r",
        str(out),
        env=env,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    for conf in ("conf-1", "conf-2"):
        c = check_sign(tools, out, dtb, conf)
        assert c.returncode == 0, c.stdout + c.stderr
    key = Fdt.parse(dtb.read_bytes()).node("/signature/key-fit-dev")
    assert key is not None and key.get_str("required") == "conf"

    # uboot-sign: re-sign an existing FIT in place (-F), full pkcs11: URI, -N pkcs11
    resign = tmp_path / "resign.fit"
    shutil.copy(out, resign)
    before = resign.read_bytes()
    r = softhsm.run_cli(
        "mkimage",
        "-F",
        "-k",
        f"pkcs11:token={softhsm.token_label};object=fit-dev",
        "-N",
        "pkcs11",
        "-r",
        str(resign),
        env=env,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert check_sign(tools, resign, dtb, "conf-2").returncode == 0
    assert Fdt.parse(before).node("/images/kernel-1/hash-1").get("value") == (  # type: ignore[union-attr]
        Fdt.parse(resign.read_bytes()).node("/images/kernel-1/hash-1").get("value")  # type: ignore[union-attr]
    )

    # a key that does not exist: clear error, nothing written
    target = tmp_path / "untouched.fit"
    shutil.copy(out, target)
    r = softhsm.run_cli(
        "mkimage", "-F", "-k", f"token={softhsm.token_label};object=nope", str(target), env=env
    )
    assert r.returncode == 3 and "Traceback" not in r.stderr, r.stderr
    assert target.read_bytes() == out.read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".hsmsign-")]


def test_mkimage_dropin_passes_plain_calls_through(softhsm, tools, tmp_path):
    src = build_fit(tools, tmp_path, "kernel-fdt.its").parent / "src"
    out = tmp_path / "plain.fit"
    r = softhsm.run_cli(
        "mkimage",
        "-f",
        str(src / "kernel-fdt.its"),
        str(out),
        env={"HSMSIGN_MKIMAGE": str(tools / "mkimage")},
    )
    assert r.returncode == 0, r.stderr
    tree = Fdt.parse(out.read_bytes())
    assert tree.node("/configurations/conf-1/signature-1") is None
    listed = softhsm.run_cli("mkimage", "-l", str(out), env={"HSMSIGN_MKIMAGE": str(tools / "mkimage")})
    assert listed.returncode == 0 and "conf-1" in listed.stdout


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("dtb-as-fit", "not a FIT"),
        ("no-configs", "no configurations"),
        ("missing-image", "not in /images"),
        ("wrong-key-type", "declares sha256,rsa2048, but the key is EC"),
        ("sign-images-missing", "has no ramdisk image"),
        ("garbage", "not a device tree"),
    ],
)
def test_bad_input_clear_error_nothing_written(softhsm, tools, tmp_path, setup, message):
    rsa = softhsm.keygen("fit-rsa2048", "rsa:2048")
    ec = softhsm.keygen("fit-ec256", "ec:secp256r1")
    uri = rsa
    if setup == "dtb-as-fit":
        target = control_dtb(tmp_path)
    elif setup == "garbage":
        target = tmp_path / "garbage.fit"
        target.write_bytes(os.urandom(3000))
    elif setup == "wrong-key-type":
        target = build_fit(tools, tmp_path, "declared.its")
        uri = ec
    else:
        image = build_fit(tools, tmp_path, "kernel-fdt.its")
        tree = Fdt.parse(image.read_bytes())
        if setup == "no-configs":
            confs = tree.node("/configurations")
            assert confs is not None
            confs.children.clear()
        elif setup == "sign-images-missing":
            conf = tree.node("/configurations/conf-1")
            assert conf is not None
            sig = tree.add_subnode(conf, "signature-1")
            tree.setprop_str(sig, "algo", "sha256,rsa2048")
            tree.setprop_strlist(sig, "sign-images", ["kernel", "ramdisk"])
        else:
            conf = tree.node("/configurations/conf-1")
            assert conf is not None
            tree.setprop_str(conf, "ramdisk", "ramdisk-9")
        target = tmp_path / "edited.fit"
        target.write_bytes(tree.to_bytes())
    before = target.read_bytes()
    r = cli(softhsm, "fit", "sign", "--uri", uri, str(target))
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert target.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".hsmsign-tmp")]


def test_add_key_matches_mkimage_key_node(softhsm, tools, tmp_path):
    """The RSA key node hsmsign writes has the properties and values mkimage -K writes for the same key."""
    uri = softhsm.keygen("fit-dev", "rsa:2048")
    image = build_fit(tools, tmp_path, "declared.its")
    theirs, ours = control_dtb(tmp_path, "mk.dtb"), control_dtb(tmp_path, "hs.dtb")
    r = subprocess.run(
        [
            str(tools / "mkimage"),
            "-F",
            "-k",
            f"token={softhsm.token_label};object=fit-dev",
            "-N",
            "pkcs11",
            "-K",
            str(theirs),
            "-r",
            str(image),
        ],
        capture_output=True,
        text=True,
        env=_mkimage_engine_env(softhsm),
        check=False,
    )
    assert r.returncode == 0, r.stderr
    ok(cli(softhsm, "fit", "add-key", "--uri", uri, "--key-name", "fit-dev", "--dtb", str(ours)))
    a = Fdt.parse(theirs.read_bytes()).node("/signature/key-fit-dev")
    b = Fdt.parse(ours.read_bytes()).node("/signature/key-fit-dev")
    assert a is not None and b is not None
    assert {p.name: p.value for p in a.props} == {p.name: p.value for p in b.props}
    assert [p.name for p in a.props] == [p.name for p in b.props]


def test_external_data_fit(softhsm, tools, tmp_path):
    """mkimage -E puts image data after the device tree; signing grows the tree and must move it along."""
    uri = softhsm.keygen("fit-rsa2048", "rsa:2048")
    image = build_fit(tools, tmp_path, "kernel-fdt.its", extra=("-E",))
    tree = Fdt.parse(image.read_bytes())
    assert tree.node("/images/kernel-1").get("data-offset") is not None  # type: ignore[union-attr]
    size_before = int.from_bytes(image.read_bytes()[4:8], "big")
    ok(cli(softhsm, "fit", "sign", "--uri", uri, "--key-name", "fit-rsa2048", str(image)))
    assert int.from_bytes(image.read_bytes()[4:8], "big") > size_before
    dtb = control_dtb(tmp_path)
    ok(cli(softhsm, "fit", "add-key", "--uri", uri, "--key-name", "fit-rsa2048", "--dtb", str(dtb)))
    r = check_sign(tools, image, dtb)
    assert r.returncode == 0 and "sha256+" in r.stdout, r.stdout + r.stderr
    kernel = (tmp_path / "src" / "kernel.bin").read_bytes()
    bad = flip_byte(image, kernel[5000:5064], tmp_path / "bad.fit")
    assert check_sign(tools, bad, dtb).returncode != 0


def test_add_key_refuses_what_is_not_a_dtb(softhsm, tmp_path):
    uri = softhsm.keygen("fit-rsa2048", "rsa:2048")
    target = tmp_path / "u-boot.dtb"
    target.write_bytes(b"not a device tree at all" * 10)
    before = target.read_bytes()
    r = cli(softhsm, "fit", "add-key", "--uri", uri, "--key-name", "k", "--dtb", str(target))
    assert r.returncode == 2 and "not a device tree" in r.stderr and "Traceback" not in r.stderr
    assert target.read_bytes() == before


def test_dual_signed_fit_for_key_rotation(softhsm, tools, tmp_path):
    """Two signature nodes, one per key, signed in two runs: a DTB requiring both (all) accepts it."""
    old = softhsm.keygen("fit-rsa2048", "rsa:2048")
    new = softhsm.keygen("fit-rsa3072", "rsa:3072")
    image = build_fit(tools, tmp_path, "kernel-fdt.its")
    tree = Fdt.parse(image.read_bytes())
    conf = tree.node("/configurations/conf-1")
    assert conf is not None
    for node_name, hint, algo in (("signature-old", "old", "rsa2048"), ("signature-new", "new", "rsa3072")):
        sig = tree.add_subnode(conf, node_name)
        tree.setprop_str(sig, "key-name-hint", hint)
        tree.setprop_str(sig, "algo", f"sha256,{algo}")
    image.write_bytes(tree.to_bytes())
    ok(cli(softhsm, "fit", "sign", "--uri", old, "--key-name", "old", str(image)))
    ok(cli(softhsm, "fit", "sign", "--uri", new, "--key-name", "new", str(image)))
    dtb = control_dtb(tmp_path)
    ok(cli(softhsm, "fit", "add-key", "--uri", old, "--key-name", "old", "--dtb", str(dtb)))
    ok(cli(softhsm, "fit", "add-key", "--uri", new, "--key-name", "new", "--dtb", str(dtb)))
    r = check_sign(tools, image, dtb)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "sha256,rsa2048:old+" in r.stdout and "sha256,rsa3072:new+" in r.stdout
    ok(cli(softhsm, "fit", "verify", "--dtb", str(dtb), str(image)))


def declare_image_signatures(image: Path, hint: str) -> Fdt:
    """Declare an RSA-2048 image signature on kernel-1 and fdt-1 (FIT_SIGN_INDIVIDUAL); return the tree."""
    tree = Fdt.parse(image.read_bytes())
    for name in ("kernel-1", "fdt-1"):
        node = tree.node(f"/images/{name}")
        assert node is not None
        sig = tree.add_subnode(node, "signature-1")
        tree.setprop_str(sig, "key-name-hint", hint)
        tree.setprop_str(sig, "algo", "sha256,rsa2048")
    image.write_bytes(tree.to_bytes())
    return tree


def test_required_image_key_agrees_with_fit_check_sign(softhsm, tools, tmp_path):
    """required = "image": every loaded image needs its own signature; both verifiers agree."""
    uri = softhsm.keygen("fit-rsa2048", "rsa:2048")
    image = build_fit(tools, tmp_path, "kernel-fdt.its")
    tree = declare_image_signatures(image, "img")
    only_kernel = tmp_path / "only-kernel.fit"
    fdt_node = tree.node("/images/fdt-1")
    assert fdt_node is not None
    fdt_node.children = [c for c in fdt_node.children if not c.name.startswith("signature")]
    only_kernel.write_bytes(tree.to_bytes())
    for target in (image, only_kernel):
        ok(cli(softhsm, "fit", "sign", "--uri", uri, "--key-name", "img", str(target)))
    dtb = control_dtb(tmp_path)
    ok(
        cli(
            softhsm,
            "fit",
            "add-key",
            "--uri",
            uri,
            "--key-name",
            "img",
            "--dtb",
            str(dtb),
            "--required",
            "image",
        )
    )
    assert check_sign(tools, image, dtb).returncode == 0
    ok(cli(softhsm, "fit", "verify", "--dtb", str(dtb), str(image)))
    # the fdt image carries no signature: U-Boot refuses to load it, and so does hsmsign
    assert check_sign(tools, only_kernel, dtb).returncode != 0
    r = cli(softhsm, "fit", "verify", "--dtb", str(dtb), str(only_kernel))
    assert r.returncode == 6 and "fdt-1" in r.stderr, r.stderr


def test_mkimage_dropin_auto_fit_puts_key_into_dtb(softhsm, tools, tmp_path):
    """oe-core's concat_dtb call: '-f auto -g NAME -o ALGO -K u-boot.dtb -d /dev/null -r' fills the DTB."""
    softhsm.keygen("fit-dev", "rsa:2048")
    dtb = control_dtb(tmp_path)
    env = {
        "HSMSIGN_MODE": "development",
        "HSM_PKCS11_MODULE": softhsm.module,
        "MKIMAGE_SIGN_PIN": softhsm.pin_file.read_text().strip(),
        "HSMSIGN_MKIMAGE": str(tools / "mkimage"),
    }
    unused = tmp_path / "unused.itb"
    r = softhsm.run_cli(
        "mkimage", "-f", "auto", "-k", f"token={softhsm.token_label}", "-o", "sha256,rsa2048",
        "-g", "fit-dev", "-K", str(dtb), "-d", "/dev/null", "-r", str(unused), env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "Couldn't open RSA private key" not in r.stderr
    key = Fdt.parse(dtb.read_bytes()).node("/signature/key-fit-dev")
    assert key is not None and key.get_str("required") == "image" and key.get_str("algo") == "sha256,rsa2048"
    assert check_sign(tools, unused, dtb).returncode == 0
    ok(cli(softhsm, "fit", "verify", "--dtb", str(dtb), str(unused)))


def test_mkimage_dropin_signs_ecdsa(softhsm, tools, tmp_path):
    """What mkimage -N pkcs11 cannot do (it exits 0 with an unsigned FIT): ECDSA with a token key."""
    softhsm.keygen("fit-ec256", "ec:secp256r1")
    image = build_fit(tools, tmp_path, "declared.its")
    dtb = control_dtb(tmp_path)
    env = {
        "HSMSIGN_MODE": "development",
        "HSM_PKCS11_MODULE": softhsm.module,
        "MKIMAGE_SIGN_PIN": softhsm.pin_file.read_text().strip(),
        "HSMSIGN_MKIMAGE": str(tools / "mkimage"),
    }
    r = softhsm.run_cli(
        "mkimage", "-F", "-k", f"pkcs11:token={softhsm.token_label};object=fit-ec256",
        "-o", "sha256,ecdsa256", "-K", str(dtb), "-r", str(image), env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    tree = Fdt.parse(image.read_bytes())
    for path in ("/images/kernel-1/signature-1", "/configurations/conf-2/signature-1"):
        node = tree.node(path)
        assert (
            node is not None
            and node.get_str("algo") == "sha256,ecdsa256"
            and len(node.get("value") or b"") == 64
        )
    key = Fdt.parse(dtb.read_bytes()).node("/signature/fit-dev")
    assert key is not None and key.get_str("ecdsa,curve") == "prime256v1"
    ok(cli(softhsm, "fit", "verify", "--dtb", str(dtb), str(image)))


def dropin_env(softhsm, tools: Path, **extra: str) -> dict[str, str]:
    return {
        "HSMSIGN_MODE": "development",
        "SOURCE_DATE_EPOCH": EPOCH,
        "HSM_PKCS11_MODULE": softhsm.module,
        "MKIMAGE_SIGN_PIN": softhsm.pin_file.read_text().strip(),
        "HSMSIGN_MKIMAGE": str(tools / "mkimage"),
        **extra,
    }


def test_fit_sign_checked_by_fit_check_sign_before_writing(softhsm, tools, tmp_path):
    """--fit-check-sign: U-Boot's verifier accepts every configuration before the FIT is written."""
    uri = softhsm.keygen("fit-dev", "rsa:2048")
    image = build_fit(tools, tmp_path, "declared.its")
    before = image.read_bytes()
    checker = str(tools / "fit_check_sign")
    r = ok(cli(softhsm, "fit", "sign", "--uri", uri, "--fit-check-sign", checker, "--json", str(image)))
    assert json.loads(r.stdout)["fit_check_sign"] == ["conf-1", "conf-2"]
    signed = image.read_bytes()
    assert signed != before

    # a verifier that refuses: exit 6, the file as it was, no temporary file left
    image.write_bytes(before)
    r = cli(softhsm, "fit", "sign", "--uri", uri, "--fit-check-sign", "false", str(image))
    assert r.returncode == 6 and "fit_check_sign refuses configuration 'conf-1'" in r.stderr, r.stderr
    assert "nothing was written" in r.stderr and "Traceback" not in r.stderr
    assert image.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".hsmsign-")]

    # a verifier that is not there: a configuration error, not a silent skip
    r = cli(softhsm, "fit", "sign", "--uri", uri, "--fit-check-sign", str(tmp_path / "nope"), str(image))
    assert r.returncode == 2 and "is not found" in r.stderr, r.stderr
    assert image.read_bytes() == before


def test_fit_sign_individual_image_signatures(softhsm, tools, tmp_path):
    """oe-core FIT_SIGN_INDIVIDUAL: image nodes name UBOOT_SIGN_IMG_KEYNAME, configurations get signed too."""
    uri = softhsm.keygen("fit-dev", "rsa:2048")
    image = build_fit(tools, tmp_path, "kernel-fdt.its")
    tree = declare_image_signatures(image, "fit-dev-img")
    r = ok(
        cli(
            softhsm, "fit", "sign", "--uri", uri, "--key-name", "fit-dev", "--image-key-name", "fit-dev-img",
            "--fit-check-sign", str(tools / "fit_check_sign"), "--json", str(image),
        )
    )  # fmt: skip
    signed = {(s["path"], s["key_name"]) for s in json.loads(r.stdout)["signed"]}
    assert ("/images/kernel-1/signature-1", "fit-dev-img") in signed
    assert ("/images/fdt-1/signature-1", "fit-dev-img") in signed
    confs = {p for p, k in signed if p.startswith("/configurations/") and k == "fit-dev"}
    assert confs and all(p.endswith("/signature-1") for p in confs)
    # the control DTB the u-boot recipe writes in that case: both names, image and conf required
    dtb = control_dtb(tmp_path)
    for name, required in (("fit-dev-img", "image"), ("fit-dev", "conf")):
        ok(cli(softhsm, "fit", "add-key", "--uri", uri, "--key-name", name, "--dtb", str(dtb),
               "--required", required))  # fmt: skip
    assert check_sign(tools, image, dtb).returncode == 0
    ok(cli(softhsm, "fit", "verify", "--dtb", str(dtb), str(image)))
    # without --image-key-name the image nodes of another key name stay as they were
    again = build_fit(tools, tmp_path, "kernel-fdt.its", name="again.fit")
    again.write_bytes(tree.to_bytes())
    r = ok(cli(softhsm, "fit", "sign", "--uri", uri, "--key-name", "fit-dev", "--json", str(again)))
    assert all(s["kind"] == "conf" for s in json.loads(r.stdout)["signed"])


def test_mkimage_dropin_required_policy_and_device_check(softhsm, tools, tmp_path):
    """HSMSIGN_FIT_REQUIRED / _MODE set the key nodes oe-core's -r would write; fit_check_sign runs first."""
    softhsm.keygen("fit-dev", "rsa:2048")
    image = build_fit(tools, tmp_path, "declared.its")
    original = image.read_bytes()

    def dropin(dtb: Path, **extra: str) -> subprocess.CompletedProcess[str]:
        image.write_bytes(original)
        return softhsm.run_cli(
            "mkimage", "-F", "-k", f"pkcs11:token={softhsm.token_label};object=fit-dev",
            "-K", str(dtb), "-r", str(image), env=dropin_env(softhsm, tools, **extra),
        )  # fmt: skip

    # default: as mkimage -r (the declared image signature makes the shared key node "image" last)
    dtb = control_dtb(tmp_path, "default.dtb")
    r = dropin(dtb, HSMSIGN_FIT_CHECK_SIGN=str(tools / "fit_check_sign"))
    assert r.returncode == 0 and "fit_check_sign accepts conf-1, conf-2" in r.stderr, r.stderr
    # mkimage's order: the image signature first, the configurations last
    assert Fdt.parse(dtb.read_bytes()).node("/signature/key-fit-dev").get_str("required") == "conf"  # type: ignore[union-attr]

    dtb = control_dtb(tmp_path, "conf-any.dtb")
    r = dropin(dtb, HSMSIGN_FIT_REQUIRED="conf", HSMSIGN_FIT_REQUIRED_MODE="any")
    assert r.returncode == 0, r.stderr
    tree = Fdt.parse(dtb.read_bytes())
    assert tree.node("/signature/key-fit-dev").get_str("required") == "conf"  # type: ignore[union-attr]
    assert tree.node("/signature").get_str("required-mode") == "any"  # type: ignore[union-attr]
    assert check_sign(tools, image, dtb).returncode == 0

    dtb = control_dtb(tmp_path, "none.dtb")
    r = dropin(dtb, HSMSIGN_FIT_REQUIRED="none")
    assert r.returncode == 0, r.stderr
    assert Fdt.parse(dtb.read_bytes()).node("/signature/key-fit-dev").get("required") is None  # type: ignore[union-attr]

    # production refuses keys U-Boot never enforces, before any token work; nothing is written
    dtb = control_dtb(tmp_path, "prod.dtb")
    dtb_before = dtb.read_bytes()
    r = dropin(dtb, HSMSIGN_FIT_REQUIRED="none", HSMSIGN_MODE="production")
    assert r.returncode == 4 and "never enforces" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert dtb.read_bytes() == dtb_before and image.read_bytes() == original

    r = dropin(dtb, HSMSIGN_FIT_REQUIRED="always")
    assert r.returncode == 2 and "not a required policy" in r.stderr, r.stderr

    # a device verifier that refuses: neither the FIT nor the DTB changes
    r = dropin(dtb, HSMSIGN_FIT_CHECK_SIGN="false")
    assert r.returncode == 6 and "fit_check_sign refuses" in r.stderr, r.stderr
    assert dtb.read_bytes() == dtb_before and image.read_bytes() == original
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".hsmsign-")]
