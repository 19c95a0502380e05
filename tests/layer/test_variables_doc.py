"""docs/reference/variables.md matches the [doc] flags and ??= defaults of the classes.

Regenerate: python3 tests/layer/test_variables_doc.py --write
"""

from __future__ import annotations

import glob
import os
import re
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DOC = os.path.join(ROOT, "docs", "reference", "variables.md")

HEAD = """# Variable reference

Every variable the meta-hsmsign classes read, with its default (`??=`, so
local.conf, a distro or a kas file overrides it) and its `[doc]` flag. A test
(`tests/layer/test_variables_doc.py`) checks this page against the classes.

Set them in `local.conf` or a kas file's `local_conf_header`. None of them ever
holds a PIN: a PIN, password, key or `pin-value` in any variable stops the parse
(docs/layer.md, "Where the PIN comes from").
"""

SET_BY_CLASSES = [
    ("`UBOOT_MKIMAGE_SIGN`", "u-boot, scarthgap kernel", "`${HSMSIGN_CMD} mkimage` (drop-in, `-k` a URI)"),
    (
        "`UBOOT_SIGN_KEYDIR`, `UBOOT_SIGN_KEYNAME`",
        "u-boot, scarthgap kernel",
        "`HSM_PKCS11_URI_FITIMAGE`, its label",
    ),
    ("`SPL_SIGN_KEYDIR`, `SPL_SIGN_KEYNAME`", "u-boot", "`HSM_PKCS11_URI_SPL`, its `object=` label"),
    ("`FIT_GENERATE_KEYS`, `UBOOT_FIT_GENERATE_KEYS`, `SPL_GENERATE_KEYS`", "u-boot, kernel", "`0`"),
    ("`FIT_KERNEL_SIGN_ENABLE`", "wrynose `linux-yocto-fitimage`", "`0` (`do_hsmsign_fitimage` signs)"),
    ("`SWUPDATE_SIGNING`, `SWUPDATE_SIGN_TOOL`", "swupdate images", "`CUSTOM`, `hsmsign swupdate sign ...`"),
    (
        "`HSMSIGN_IMX_SRK_ID`, `HSMSIGN_IMX_CONFIG_ID`",
        "imx-boot, U-Boot with imx-boot-container",
        "the SRK keys' identities and the SPSDK configuration's SHA-256 (task hash)",
    ),
    (
        "`HSMSIGN_KEY_ID_<ROLE>`",
        "signing tasks",
        "key identity in the task hash (URI without PIN source, pin, mode)",
    ),
]
TAIL = (
    "\n## Set by the classes (do not set them yourself)\n\n"
    "| variable | set in | value |\n| --- | --- | --- |\n"
    + "".join(f"| {a} | {b} | {c} |\n" for a, b, c in SET_BY_CLASSES)
)


def class_variables() -> list[tuple[str, str, str, str]]:
    rows = []
    for path in sorted(glob.glob(os.path.join(ROOT, "meta-hsmsign", "classes", "*.bbclass"))):
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        defaults = dict(re.findall(r'^([A-Z0-9_]+) \?\?= "(.*)"$', text, re.M))
        for name, doc in re.findall(r'^([A-Z0-9_]+)\[doc\] = "(.*)"$', text, re.M):
            rows.append((os.path.basename(path), name, defaults.get(name, ""), doc))
    return rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def role_table() -> str:
    """The key roles from the library's one table (hsmsign.roles)."""
    sys.path.insert(0, os.path.join(ROOT, "meta-hsmsign", "lib"))
    from hsmsign import roles

    out = [
        "## Key roles",
        "",
        "One table in the library (`hsmsign.roles`) gives each role its variable, the role it",
        "defaults to, its pin and the key `hsmsign dev-init` makes for it. A role's pin is its",
        "own variable, else that of the role it defaults to, else `HSMSIGN_PUBKEY_SHA256`; a",
        "wrong key stops the signing task (exit 4, nothing written) in every mode.",
        "",
        "| role | key variable | defaults to | pin variable | development key | signs |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in roles.ROLE_TABLE:
        fallback = f"`{roles.BY_NAME[r.fallback].variable}`" if r.fallback else "(nothing)"
        out.append(
            f"| {r.name} | `{r.variable}` | {fallback} | `{r.fingerprint_variable}` | "
            f"`{r.dev_label}` ({r.key_type}) | {_cell(r.signs)} |"
        )
    return "\n".join(out)


def render() -> str:
    out = [HEAD, role_table()]
    current = None
    for cls, name, default, doc in class_variables():
        if cls != current:
            out += ["", f"## {cls}", "", "| variable | default | meaning |", "| --- | --- | --- |"]
            current = cls
        shown = "`" + _cell(default) + "`" if default else "(empty)"
        out.append(f"| `{name}` | {shown} | {_cell(doc)} |")
    return "\n".join(out) + "\n" + TAIL


def test_every_class_variable_has_a_default_and_a_doc() -> None:
    rows = class_variables()
    names = {r[1] for r in rows}
    required_names = (
        "HSM_PKCS11_URI",
        "HSM_PKCS11_URI_ENCRYPT",
        "HSMSIGN_MODE",
        "HSMSIGN_ENABLE",
        "HSMSIGN_CMD",
    )
    for required in required_names:
        assert required in names
    for cls, name, _default, doc in rows:
        assert doc.endswith("."), f"{cls}: {name}[doc] is not a sentence"
        assert name.startswith(("HSM_", "HSMSIGN_")), f"{cls}: {name} lacks the layer prefix"


def test_reference_matches_classes() -> None:
    with open(DOC, encoding="utf-8") as fh:
        assert fh.read() == render(), "docs/reference/variables.md is stale: python3 " + __file__ + " --write"


if __name__ == "__main__" and "--write" in sys.argv:
    with open(DOC, "w", encoding="utf-8") as fh:
        fh.write(render())
