"""The docs cannot drift from the code.

1. Every ``hsmsign ...`` command in a shell code block of README.md and docs/**/*.md
   parses against the real parser (``hsmsign.cli.build_parser()``), and so does
   every ``hsmsign ...`` line in a verb's ``--help`` examples.
2. docs/reference/cli.md, docs/reference/exit-codes.md and the bash completion are
   what ``scripts/gen-cli-reference`` renders from the code today.
3. Every verb and sub-verb's ``--help`` has an example section.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.machinery
import importlib.util
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
GEN = ROOT / "scripts" / "gen-cli-reference"
SHELL_LANGS = {"", "sh", "bash", "shell", "console", "shell-session", "zsh", "sh-session"}
OPERATORS = {"|", "||", "&&", ";", "&", ";;", "|&"}
SYNOPSIS = re.compile(r"\[-")
REDIRECTS = {">", ">>", "<", ">&", "<<", "<<<", "&>", "&>>"}


# --------------------------------------------------------------------------- extraction


def doc_files() -> list[Path]:
    files = [ROOT / "README.md"] if (ROOT / "README.md").exists() else []
    files += sorted((ROOT / "docs").rglob("*.md"))
    return files


def code_blocks(text: str) -> Iterator[tuple[str, list[tuple[int, str]]]]:
    """Fenced code blocks: (info string, [(1-based line number, line)])."""
    fence: str | None = None
    lang = ""
    body: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if fence is None:
            m = re.match(r"(`{3,}|~{3,})\s*([\w+-]*)", stripped)
            if m:
                fence, lang, body = m.group(1), m.group(2).lower(), []
            continue
        if stripped.startswith(fence) and stripped.strip(fence[0]) == "":
            yield lang, body
            fence = None
            continue
        body.append((number, line))
    if fence is not None:
        yield lang, body


def logical_lines(body: list[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    """Join backslash continuations; the number is the first line's."""
    start, parts = 0, []
    for number, line in body:
        if not parts:
            start = number
        if line.rstrip().endswith("\\"):
            parts.append(line.rstrip()[:-1])
            continue
        parts.append(line)
        yield start, " ".join(p.strip() for p in parts)
        parts = []
    if parts:
        yield start, " ".join(p.strip() for p in parts)


def split_shell(command: str) -> list[str]:
    lex = shlex.shlex(command, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    lex.commenters = ""  # '#' starts a comment only at the start of a word (below), not inside one
    tokens = []
    for token in lex:
        if token.startswith("#"):
            break
        tokens.append(token)
    return tokens


def hsmsign_invocations(command: str) -> list[list[str]]:
    """The argument lists of every ``hsmsign`` simple command in a shell line."""
    if command.startswith("$ "):
        command = command[2:]
    try:
        tokens = split_shell(command)
    except ValueError:  # unbalanced quotes: not a command we can check (prose, output)
        return []
    found, segment, skip_next = [], [], False
    for token in tokens:  # command substitutions: eval "$(hsmsign dev-init --print-env)"
        for inner in re.findall(r"\$\((hsmsign [^()]*)\)", token):
            found += hsmsign_invocations(inner)
    for token in [*tokens, ";"]:
        if skip_next:
            skip_next = False
            continue
        if token in REDIRECTS:
            if segment and segment[-1].isdigit():  # the fd of '2>'
                segment.pop()
            skip_next = True
            continue
        if token in OPERATORS or token in {"(", ")"}:
            while segment and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", segment[0]):
                segment.pop(0)  # VAR=value prefixes
            if segment and segment[0] == "hsmsign":
                found.append(segment[1:])
            segment = []
            continue
        segment.append(token)
    return found


def doc_commands(path: Path) -> Iterator[tuple[int, list[str]]]:
    return markdown_commands(path.read_text(encoding="utf-8"))


def markdown_commands(text: str) -> Iterator[tuple[int, list[str]]]:
    for lang, body in code_blocks(text):
        if lang not in SHELL_LANGS:
            continue
        for number, line in logical_lines(body):
            if not lang and SYNOPSIS.search(line):
                continue  # an unlabelled block may show a synopsis ('[--opt X]'); a shell block may not
            for argv in hsmsign_invocations(line.strip()):
                yield number, argv


# --------------------------------------------------------------------------- checking against the parser


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    with pytest.MonkeyPatch.context() as mp:
        for name in list(__import__("os").environ):
            if name.startswith("HSM"):
                mp.delenv(name)
        from hsmsign.cli import build_parser

        return build_parser()


def top_verbs(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def parse_problem(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    """None when argv parses to a runnable verb (or asks for help), else what is wrong."""
    if any(a in ("-h", "--help", "--version") for a in argv):
        return None
    words = [a for a in argv if not a.startswith("-")]
    verbs = top_verbs(parser)
    if words and words[0] not in verbs:
        return (
            f"verb '{words[0]}' is not registered in hsmsign.cli (not landed yet, or a typo); "
            f"known verbs: {', '.join(verbs)}"
        )
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            args = parser.parse_args(argv)
    except SystemExit as exc:
        if exc.code in (0, None):
            return None
        lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
        return lines[-1] if lines else f"argparse exited {exc.code}"
    if not getattr(args, "func", None):
        return "no verb given"
    return None


def failures_in(parser: argparse.ArgumentParser, path: Path) -> list[str]:
    rel = path.relative_to(ROOT)
    out = []
    for number, argv in doc_commands(path):
        problem = parse_problem(parser, argv)
        if problem:
            out.append(f"{rel}:{number}: hsmsign {shlex.join(argv)}\n    -> {problem}")
    return out


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_documented_commands_parse(parser: argparse.ArgumentParser, path: Path) -> None:
    failures = failures_in(parser, path)
    assert not failures, "documented hsmsign commands that the real parser rejects:\n" + "\n".join(failures)


def test_docs_contain_commands_to_check() -> None:
    # guards the extractor: if it silently found nothing, the test above would prove nothing
    counts = {p.relative_to(ROOT).as_posix(): len(list(doc_commands(p))) for p in doc_files()}
    assert sum(counts.values()) >= 30, counts
    assert counts.get("docs/quickstart.md", 0) >= 5, counts
    assert counts.get("docs/reference/cli.md", 0) == 0, "the reference renders examples as text, not shell"


def test_extractor_handles_shell_syntax() -> None:
    sample = "\n".join(
        [
            "text before",
            "```sh",
            "# a comment line",
            'hsmsign sign --uri "$HSM_PKCS11_URI" \\',
            "    --output fw.sig fw.bin   # trailing comment",
            "bitbake -e img > env.txt && hsmsign audit env.txt | tee out 2>/dev/null",
            "HSMSIGN_MODE=development hsmsign info --uri 'pkcs11:token=a;object=b#c'",
            "$ hsmsign doctor",
            'eval "$(hsmsign dev-init --print-env)"',
            "```",
            "```",
            "hsmsign fit verify --dtb DTB [--config NAME] FIT",
            "hsmsign pubkey",
            "hsmsign: error: this is output, not a command",
            "```",
            "```python",
            "hsmsign ignored --in python",
            "```",
            "```text",
            "hsmsign ignored --in text",
            "```",
        ]
    )
    assert list(markdown_commands(sample)) == [
        (4, ["sign", "--uri", "$HSM_PKCS11_URI", "--output", "fw.sig", "fw.bin"]),
        (6, ["audit", "env.txt"]),
        (7, ["info", "--uri", "pkcs11:token=a;object=b#c"]),
        (8, ["doctor"]),
        (9, ["dev-init", "--print-env"]),
        (13, ["pubkey"]),
    ]


def test_parse_problem_names_the_failure(parser: argparse.ArgumentParser) -> None:
    assert parse_problem(parser, ["sign", "--output", "x.sig", "x"]) is None
    assert parse_problem(parser, ["sign", "--help"]) is None
    assert "not registered" in (parse_problem(parser, ["frobnicate", "--uri", "x"]) or "")
    assert "--nonsense" in (parse_problem(parser, ["sign", "--nonsense", "-o", "s", "f"]) or "")
    assert "required" in (parse_problem(parser, ["sign", "fw.bin"]) or "")


def test_an_unregistered_verb_fails_naming_file_and_line(
    parser: argparse.ArgumentParser, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    page = tmp_path / "docs" / "future.md"
    page.parent.mkdir()
    page.write_text("# Future\n\n```sh\nhsmsign teleport --to mars\n```\n", encoding="utf-8")
    failures = failures_in(parser, page)
    assert len(failures) == 1
    assert failures[0].startswith("docs/future.md:4: hsmsign teleport --to mars")
    assert "'teleport' is not registered" in failures[0]


# --------------------------------------------------------------------------- help examples


def walk(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from walk(child, (*path, name))


def test_every_verb_has_an_example(parser: argparse.ArgumentParser) -> None:
    missing = [
        "hsmsign " + " ".join(path)
        for path, p in walk(parser)
        if path and "example" not in (p.epilog or "").lower()
    ]
    assert not missing, "verbs whose --help has no example section (epilog): " + ", ".join(missing)


def test_help_examples_parse(parser: argparse.ArgumentParser) -> None:
    failures = []
    for path, p in walk(parser):
        for line in (p.epilog or "").splitlines():
            for argv in hsmsign_invocations(line.strip()):
                problem = parse_problem(parser, argv)
                if problem:
                    where = f"hsmsign {' '.join(path)} --help"
                    failures.append(f"{where}: hsmsign {shlex.join(argv)} -> {problem}")
    assert not failures, "\n".join(failures)


# --------------------------------------------------------------------------- generated files


def load_generator() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("gen_cli_reference", str(GEN))
    spec = importlib.util.spec_from_loader("gen_cli_reference", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_generated_reference_is_up_to_date() -> None:
    proc = subprocess.run(
        [sys.executable, str(GEN), "--check"], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert proc.returncode == 0, proc.stderr + "\nrun scripts/gen-cli-reference and commit the result"


def test_check_mode_detects_a_stale_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gen = load_generator()
    monkeypatch.setattr(gen, "ROOT", tmp_path)
    assert gen.main([]) == 0  # writes all three into tmp_path
    assert gen.main(["--check"]) == 0
    page = tmp_path / gen.CLI_MD
    page.write_text(page.read_text(encoding="utf-8").replace("hsmsign sign", "hsmsign sing", 1))
    assert gen.main(["--check"]) == 1


def test_reference_covers_every_verb_option_and_exit_code(parser: argparse.ArgumentParser) -> None:
    from hsmsign.errors import EXIT_CODES

    gen = load_generator()
    cli_md = gen.render_cli(parser)
    completion = gen.render_completion(parser)
    for path, p in walk(parser):
        if not path:
            continue
        assert f"## `hsmsign {' '.join(path)}`" in cli_md
        assert path[-1] in completion
        for action in p._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            for option in action.option_strings:
                assert f"`{option}`" in cli_md, f"{option} of hsmsign {' '.join(path)}"
    exit_md = gen.render_exit_codes()
    for code in EXIT_CODES:
        assert f"\n| {code} | " in exit_md


def _complete(line: str) -> list[str]:
    """Run the completion function as bash would for the words of LINE (cursor at the end)."""
    words = line.split(" ")
    script = (
        f"source {shlex.quote(str(ROOT / 'contrib/bash-completion/hsmsign'))}\n"
        f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)})\n"
        f"COMP_CWORD={len(words) - 1}\n"
        "_hsmsign\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=ROOT, check=True)
    return sorted(w for w in proc.stdout.splitlines() if w)


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_completion_completes_verbs_sub_verbs_options_and_choices() -> None:
    assert "fit" in _complete("hsmsign f")
    assert _complete("hsmsign fit ") == ["add-key", "sign", "verify"]
    assert _complete("hsmsign sign --ha") == ["--hash"]
    assert _complete("hsmsign sign --hash ") == ["sha256", "sha384", "sha512"]
    assert _complete("hsmsign fit sign --mode p") == ["production"]
    assert "--dtb" in _complete("hsmsign --verbose fit add-key --uri x --")
    assert "--version" in _complete("hsmsign --")


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="apt install shellcheck")
def test_shell_scripts_are_shellcheck_clean() -> None:
    scripts = [
        ROOT / "contrib/bash-completion/hsmsign",
        ROOT / "contrib/buildroot/post-image-hsmsign.sh",
        ROOT / "contrib/openwrt/hsmsign-sign-image.sh",
        ROOT / "scripts/test-yocto-pythons",
    ]
    present = [str(s) for s in scripts if s.exists()]
    assert len(present) == len(scripts), "missing contrib scripts"
    proc = subprocess.run(["shellcheck", "-s", "bash", *present], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout


# --------------------------------------------------------------------------- the map of the docs


def test_every_docs_page_is_reachable_from_the_index() -> None:
    """docs/index.md is the map: every page is linked from it, or from a page it links (hsm/index.md)."""
    docs = ROOT / "docs"
    pages = {p.resolve() for p in docs.rglob("*.md")}
    seen, todo = set(), [docs / "index.md"]
    while todo:
        page = todo.pop().resolve()
        if page in seen or not page.exists():
            continue
        seen.add(page)
        for target in re.findall(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if "://" not in target:
                todo.append(page.parent / target)
    missing = sorted(str(p.relative_to(docs)) for p in pages - seen)
    assert not missing, "docs pages no link path from docs/index.md reaches: " + ", ".join(missing)


def test_relative_links_in_readme_and_docs_resolve() -> None:
    broken = []
    for page in doc_files():
        text = page.read_text(encoding="utf-8")
        for number, line in enumerate(text.splitlines(), 1):
            for target in re.findall(r"\]\(([^)\s]+)\)", line):
                path = target.split("#", 1)[0]
                if not path or "://" in path or path.startswith("mailto:"):
                    continue
                if not (page.parent / path).exists():
                    broken.append(f"{page.relative_to(ROOT)}:{number}: {target}")
    assert not broken, "links to files that do not exist:\n" + "\n".join(broken)


def test_no_pin_value_outside_tests() -> None:
    # Team rule and the product's point: docs and examples show pin-source=file:... or --pin-env,
    # never a PIN written into a URI. (tests/ may: they prove pin-value is refused.)
    pattern = re.compile(r"pin-value=[A-Za-z0-9$%{]", re.IGNORECASE)
    skip = {".git", ".venv", "tests", ".hypothesis", ".benchmarks", ".pytest_cache", ".ruff_cache"}
    skip |= {"build", "__pycache__"}
    hits = []
    for top, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in skip and not d.endswith(".egg-info")]
        for name in files:
            path = Path(top) / name
            if path.suffix in {".so", ".dtb", ".bin", ".gz", ".pyc"} or path.stat().st_size > 5 << 20:
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
            for number, line in enumerate(text.splitlines(), 1):
                if pattern.search(line):
                    hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    why = "pin-value with a value outside tests/ (use pin-source=file:... or --pin-env):\n"
    assert not hits, why + "\n".join(hits)
