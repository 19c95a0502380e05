"""Immutable records without ``dataclasses``, whose import (it imports ``inspect``, and with it
``ast``, ``dis`` and ``tokenize``) cost every cold start of hsmsign 0.011 s.

A subclass lists its fields in ``__slots__`` and sets them all in its typed ``__init__`` with
``self._fill(locals())``. The record then refuses every change, compares and hashes by its
fields in slot order, and ``copy``, ``deepcopy`` and ``pickle`` make it anew through its
``__init__`` (with ``_REBUILD``'s extra keywords).
"""

from __future__ import annotations

from typing import Any, ClassVar

_set_attribute = object.__setattr__


class Frozen:
    __slots__: tuple[str, ...] = ()
    _REBUILD: ClassVar[dict[str, Any]] = {}

    def _fill(self, values: dict[str, Any]) -> None:
        """Every field from ``values`` (the ``__init__``'s ``locals()``)."""
        for name in self.__slots__:
            _set_attribute(self, name, values[name])

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable: cannot set {name}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable: cannot delete {name}")

    def __eq__(self, other: Any) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return bool(self._values() == other._values())

    def __hash__(self) -> int:
        return hash(self._values())

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), dict(zip(self.__slots__, self._values()))))


def _rebuild(cls: type[Frozen], values: dict[str, Any]) -> Frozen:
    return cls(**values, **cls._REBUILD)
