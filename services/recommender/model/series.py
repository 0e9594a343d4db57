"""A book's series and its place in it, as catalogues commonly write them in the title: "Catching Fire (The Hunger
Games, #2)". A title naming a span of volumes ("#1-3", an omnibus) places the book in no series."""

from __future__ import annotations

import re

_IN_TITLE = re.compile(r"\((?P<name>[^()]+?),?\s*#(?P<position>\d+(?:\.\d+)?)(?P<rest>[^()]*)\)\s*$")
_SPAN = ("-", "\u2013", "+")  # a hyphen, an en dash, a plus: a span of volumes


def series_in_title(title: str) -> tuple[str, float] | None:
    """(series name, position) read from the end of `title`; None when it names no single volume of a series."""
    found = _IN_TITLE.search(title)
    if found is None or found["rest"].lstrip().startswith(_SPAN):
        return None
    name = found["name"].strip()
    return (name, float(found["position"])) if name else None


def series_of(title: str, series: str = "", position: float | None = None) -> tuple[str, float] | None:
    """A book's series and place: as given (a catalogue that states them), else as its title says."""
    if series.strip() and position is not None:
        return series.strip(), float(position)
    return series_in_title(title)


def series_key(name: str) -> str:
    """What two spellings of one series share."""
    return " ".join(name.lower().split())
