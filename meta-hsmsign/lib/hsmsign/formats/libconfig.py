"""The libconfig syntax of swupdate's sw-description: the subset swupdate bundles use.

``parse(text)`` returns the settings as dicts, lists and scalars; anything it
cannot read is a ``VerificationError`` naming the line. Nesting is bounded
(``MAX_DEPTH``) so a hostile file cannot exhaust the stack.

Whatever the libconfig of a supported Yocto release refuses (1.7.3 on scarthgap, 1.8.2 on
wrynose and master: what swupdate parses sw-description with on the device), this refuses
too, so that hsmsign never passes a bundle the device cannot read: a name twice in one
group; an array (``[...]``) of groups, lists or arrays, or of values of more than one type
(libconfig's types: string, boolean, float, 32-bit and 64-bit integer; a hex number beyond
32 bits is the one type on 1.7.3 and the other on 1.8.2, so it mixes with neither); an
integer beyond 64 bits or a hex one of more than 16 digits; a leading 0 before an 8 or 9
(1.7.3 reads such a number as octal); a sign before a hex number; an ``L`` after a float;
whitespace other than space, tab, CR, LF and form feed; a NUL byte. A comma before the
closing bracket is accepted, as libconfig 1.7 and later accept it (1.5, Debian 12's,
refuses it). It is stricter in a few places: escapes other than libconfig's, ``\\x00``
and ``\\x80`` – ``\\xff`` (libconfig puts the raw byte in), an unterminated comment,
libconfig 1.8's binary and octal numbers (``0b``, ``0o``), a float without a digit. Numbers
are read as Python numbers where libconfig may truncate them; hsmsign uses only the strings
(file names and hashes).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from ..errors import VerificationError

MAX_DEPTH = 64
_SPACE = " \t\r\f"  # and "\n": libconfig's scanner skips these, nothing else
# libconfig's number tokens (scanner.l); the longest match wins, as in flex
_HEX = re.compile(r"0[xX][0-9a-fA-F]+(LL?)?")  # 1.8.2 takes at most 16 digits: checked below
_FLOAT = re.compile(r"[-+]?([0-9]*\.[0-9]*([eE][-+]?[0-9]+)?|[0-9]+[eE][-+]?[0-9]+)")
_INT = re.compile(r"[-+]?[0-9]+(LL?)?")
_INT32 = range(-(2**31), 2**31)
_INT64 = range(-(2**63), 2**63)
_SCALARS = ("int", "int64", "hex33", "float", "bool")  # and "str"
_REFUSED_TOO = "check the libconfig syntax (swupdate would refuse it too)"


class _Lexer:
    _punct = set("=:;,{}()[]")

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1

    def _err(self, msg: str, hint: str = _REFUSED_TOO) -> VerificationError:
        return VerificationError(f"sw-description line {self.line}: {msg}", hint)

    def tokens(self) -> Iterator[tuple[str, Any, int]]:
        t = self.text
        n = len(t)
        while True:
            while self.pos < n:
                c = t[self.pos]
                if c == "\n":
                    self.line += 1
                    self.pos += 1
                elif c in _SPACE:
                    self.pos += 1
                elif c == "#" or t.startswith("//", self.pos):
                    end = t.find("\n", self.pos)
                    self.pos = n if end < 0 else end
                elif t.startswith("/*", self.pos):
                    end = t.find("*/", self.pos + 2)
                    if end < 0:
                        raise self._err(
                            "unterminated /* comment",
                            "libconfig would take the rest of the file as the comment: close it with */",
                        )
                    self.line += t.count("\n", self.pos, end)
                    self.pos = end + 2
                else:
                    break
            if self.pos >= n:
                yield ("eof", None, self.line)
                return
            c = t[self.pos]
            if c in self._punct:
                self.pos += 1
                yield ("punct", c, self.line)
            elif c == '"':
                yield ("str", self._string(), self.line)
            elif (c.isascii() and c.isalpha()) or c == "*":
                m = re.compile(r"[A-Za-z*][-A-Za-z0-9_*]*").match(t, self.pos)
                assert m is not None  # noqa: S101 - c matched the first class
                self.pos = m.end()
                word = m.group(0)
                if word.lower() in ("true", "false"):
                    yield ("bool", word.lower() == "true", self.line)
                else:
                    yield ("name", word, self.line)
            else:
                kind, value, end = _number(t, self.pos)
                if kind == "range":
                    raise self._err(
                        f"the number {t[self.pos:end]} is beyond what libconfig reads "
                        "(64-bit integers; hex numbers of at most 16 digits)"
                    )
                if kind == "octal":
                    raise self._err(
                        f"the number {t[self.pos:end]}: libconfig 1.7 reads a leading 0 as octal, "
                        "where 8 and 9 are errors; write it without the 0"
                    )
                if kind == "":
                    if c.isspace():
                        raise self._err(f"the space character {c!r}, which libconfig does not accept")
                    raise self._err(f"unexpected character {c!r}")
                self.pos = end
                yield (kind, value, self.line)

    def _string(self) -> str:
        t = self.text
        out: list[str] = []
        self.pos += 1
        while True:
            if self.pos >= len(t):
                raise self._err("unterminated string")
            c = t[self.pos]
            if c == '"':
                self.pos += 1
                return "".join(out)
            if c == "\\":
                nxt = t[self.pos + 1 : self.pos + 2]
                simple = {"\\": "\\", '"': '"', "n": "\n", "t": "\t", "r": "\r", "f": "\f"}
                if nxt in simple:
                    out.append(simple[nxt])
                    self.pos += 2
                elif nxt == "x" and re.fullmatch(r"[0-9a-fA-F]{2}", t[self.pos + 2 : self.pos + 4]):
                    code = int(t[self.pos + 2 : self.pos + 4], 16)
                    if code == 0 or code >= 0x80:
                        # libconfig puts the byte itself in: 0 ends the string (1.5 drops it), and
                        # a byte from 0x80 is not the character hsmsign would read (nor UTF-8)
                        raise self._err(
                            f"the escape \\x{code:02x}, which libconfig reads as a raw byte",
                            "write the character itself (UTF-8); a NUL cannot be in a string",
                        )
                    out.append(chr(code))
                    self.pos += 4
                else:
                    raise self._err(
                        "bad escape in string",
                        'hsmsign takes the escapes \\n \\r \\t \\f \\\\ \\" and \\xNN (libconfig keeps '
                        "any other backslash as it is): write a backslash as \\\\",
                    )
                continue
            if c == "\n":
                self.line += 1
            out.append(c)
            self.pos += 1


def _number(text: str, pos: int) -> tuple[str, int | float, int]:
    """The number token at ``pos``: its kind (``int``, ``int64``, ``hex33`` for a hex number
    beyond 32 bits without ``L``, ``float``; ``""`` for none, ``range`` for one libconfig
    refuses as too large, ``octal`` for a leading 0 before an 8 or 9), value and end. The
    longest of libconfig's patterns wins, the first of equals, as in flex. A float without a
    digit ("." or ".e5", which libconfig reads as 0.0) is refused."""
    best_kind, best_end = "", pos
    for kind, rx in (("hex", _HEX), ("float", _FLOAT), ("int", _INT)):
        m = rx.match(text, pos)
        if m and m.end() > best_end:
            best_kind, best_end = kind, m.end()
    word = text[pos:best_end]
    if best_kind == "float":
        try:
            return "float", float(word), best_end
        except ValueError:
            return "", 0, pos
    if best_kind == "":
        return "", 0, pos
    digits = word.rstrip("L")
    value = int(digits, 16 if best_kind == "hex" else 10)
    if value not in _INT64 or (best_kind == "hex" and len(digits) > 18):
        return "range", value, best_end
    if best_kind == "int" and not word.endswith("L") and re.match(r"[-+]?0[0-9]*[89]", word):
        return "octal", value, best_end  # 1.7.3 reads a leading 0 as octal: "08" is an error there
    if word.endswith("L"):
        return "int64", value, best_end
    if best_kind == "hex":
        return ("int" if value < 2**32 else "hex33"), value, best_end
    return ("int" if value in _INT32 else "int64"), value, best_end


class _Parser:
    def __init__(self, text: str) -> None:
        self.lex = _Lexer(text)
        self.toks = self.lex.tokens()
        self.cur = next(self.toks)

    def _err(self, msg: str) -> VerificationError:
        return VerificationError(
            f"sw-description line {self.cur[2]}: {msg}",
            "check the libconfig syntax (swupdate would refuse it too)",
        )

    def _next(self) -> tuple[str, Any, int]:
        tok = self.cur
        self.cur = next(self.toks)
        return tok

    def _is(self, kind: str, value: Any = None) -> bool:
        return self.cur[0] == kind and (value is None or self.cur[1] == value)

    def settings(self, end: str | None, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        while True:
            if end is None and self._is("eof"):
                return out
            if end is not None and self._is("punct", end):
                self._next()
                return out
            if not self._is("name"):
                raise self._err(f"expected a setting name, found {self.cur[1]!r}")
            name = self._next()[1]
            if name in out:
                raise self._err(f"the setting '{name}' appears twice in one group, which libconfig refuses")
            if not (self._is("punct", "=") or self._is("punct", ":")):
                raise self._err(f"expected '=' or ':' after '{name}'")
            self._next()
            out[name] = self.value(depth + 1)
            if self._is("punct", ";") or self._is("punct", ","):
                self._next()

    def value(self, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise self._err("nesting is too deep")
        kind, val, _ = self.cur
        if kind == "str":
            self._next()
            parts = [val]
            while self._is("str"):  # adjacent strings are one ("a" "b"), comments between them too
                parts.append(self._next()[1])
            return "".join(parts)
        if kind in _SCALARS:
            self._next()
            return val
        if kind == "punct" and val == "{":
            self._next()
            return self.settings("}", depth)
        if kind == "punct" and val in "([":
            close = ")" if val == "(" else "]"
            self._next()
            items: list[Any] = []
            kinds: set[str] = set()
            while not self._is("punct", close):
                kinds.add(self.cur[0])
                items.append(self.value(depth + 1))
                if self._is("punct", ","):
                    while self._is("punct", ","):  # "1,", "1,,2": libconfig 1.7 and later
                        self._next()
                elif not self._is("punct", close):
                    raise self._err(f"expected ',' or '{close}'")
            if close == "]" and (not kinds <= {"str", *_SCALARS} or len(kinds) > 1):
                raise self._err(
                    "an array ([...]) holds values of one type (string, 32-bit or 64-bit integer, "
                    "float or boolean; a hex number beyond 32 bits needs an L), which libconfig "
                    "requires; use a list ((...)) for others"
                )
            self._next()
            return items
        raise self._err(f"expected a value, found {val!r}")


def parse(text: str) -> dict[str, Any]:
    """The settings of a libconfig text (the top level is a group)."""
    if "\0" in text:
        line = text.count("\n", 0, text.index("\0")) + 1
        raise VerificationError(
            f"sw-description line {line}: a NUL byte, which ends a string where libconfig reads it "
            "(and is an error elsewhere)",
            "sw-description is text: remove the NUL byte and sign again",
        )
    try:
        return _Parser(text).settings(None, 0)
    except RecursionError as exc:  # pragma: no cover - MAX_DEPTH stops it first
        raise VerificationError("sw-description nesting is too deep") from exc
