"""The libconfig syntax of swupdate's sw-description: the subset swupdate bundles use.

``parse(text)`` returns the settings as dicts, lists and scalars; anything it
cannot read is a ``VerificationError`` naming the line. Nesting is bounded
(``MAX_DEPTH``) so a hostile file cannot exhaust the stack.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from ..errors import VerificationError

MAX_DEPTH = 64


class _Lexer:
    _punct = set("=:;,{}()[]")

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1

    def _err(self, msg: str) -> VerificationError:
        return VerificationError(
            f"sw-description line {self.line}: {msg}",
            "check the libconfig syntax (swupdate would refuse it too)",
        )

    def tokens(self) -> Iterator[tuple[str, Any, int]]:
        t = self.text
        n = len(t)
        while True:
            while self.pos < n:
                c = t[self.pos]
                if c == "\n":
                    self.line += 1
                    self.pos += 1
                elif c.isspace():
                    self.pos += 1
                elif c == "#" or t.startswith("//", self.pos):
                    end = t.find("\n", self.pos)
                    self.pos = n if end < 0 else end
                elif t.startswith("/*", self.pos):
                    end = t.find("*/", self.pos + 2)
                    if end < 0:
                        raise self._err("unterminated /* comment")
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
                m = re.compile(r"[-+]?(0[xX][0-9a-fA-F]+|[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?)L{0,2}").match(
                    t, self.pos
                )
                if not m or not m.group(0) or m.group(0) in "+-":
                    raise self._err(f"unexpected character {c!r}")
                self.pos = m.end()
                yield ("num", _number(m.group(0).rstrip("L")), self.line)

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
                # adjacent strings are concatenated ("a" "b")
                save, save_line = self.pos, self.line
                while self.pos < len(t) and t[self.pos].isspace():
                    if t[self.pos] == "\n":
                        self.line += 1
                    self.pos += 1
                if self.pos < len(t) and t[self.pos] == '"':
                    self.pos += 1
                    continue
                self.pos, self.line = save, save_line
                return "".join(out)
            if c == "\\":
                nxt = t[self.pos + 1 : self.pos + 2]
                simple = {"\\": "\\", '"': '"', "n": "\n", "t": "\t", "r": "\r", "f": "\f"}
                if nxt in simple:
                    out.append(simple[nxt])
                    self.pos += 2
                elif nxt == "x" and re.fullmatch(r"[0-9a-fA-F]{2}", t[self.pos + 2 : self.pos + 4]):
                    out.append(chr(int(t[self.pos + 2 : self.pos + 4], 16)))
                    self.pos += 4
                else:
                    raise self._err("bad escape in string")
                continue
            if c == "\n":
                self.line += 1
            out.append(c)
            self.pos += 1


def _number(text: str) -> int | float:
    if re.fullmatch(r"[-+]?0[xX][0-9a-fA-F]+", text):
        return int(text, 16)
    if re.fullmatch(r"[-+]?[0-9]+", text):
        return int(text)
    return float(text)


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
        if kind in ("str", "num", "bool"):
            self._next()
            return val
        if kind == "punct" and val == "{":
            self._next()
            return self.settings("}", depth)
        if kind == "punct" and val in "([":
            close = ")" if val == "(" else "]"
            self._next()
            items: list[Any] = []
            while not self._is("punct", close):
                items.append(self.value(depth + 1))
                if self._is("punct", ","):
                    self._next()
                elif not self._is("punct", close):
                    raise self._err(f"expected ',' or '{close}'")
            self._next()
            return items
        raise self._err(f"expected a value, found {val!r}")


def parse(text: str) -> dict[str, Any]:
    """The settings of a libconfig text (the top level is a group)."""
    try:
        return _Parser(text).settings(None, 0)
    except RecursionError as exc:  # pragma: no cover - MAX_DEPTH stops it first
        raise VerificationError("sw-description nesting is too deep") from exc
