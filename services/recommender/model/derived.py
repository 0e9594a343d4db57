"""What a version computes once from its books and fits, kept beside it (model/hybrid.py's `derived`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class Derived:
    """Values computed once from a version's books and fits (their rows, the CF item of each book, authors'
    codes), shared by the copies `dataclasses.replace` makes of the version with the same books and fits (a
    re-blend, the version with its index): asked by a copy whose books or fits are others (`basis`, compared by
    identity), it starts anew."""

    def __init__(self) -> None:
        self._basis: tuple[object, ...] = ()
        self._values: dict[str, Any] = {}

    def of(self, basis: tuple[object, ...], name: str, compute: Callable[[], T]) -> T:
        if len(basis) != len(self._basis) or any(a is not b for a, b in zip(basis, self._basis, strict=True)):
            self._basis, self._values = basis, {}
        if name not in self._values:
            self._values[name] = compute()
        value: T = self._values[name]
        return value
