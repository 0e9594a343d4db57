"""When numba's cache of the model's compiled loops (model/compiled.py's `compiled`) is stale.

numba checks a cached function against its own file only. A loop that calls a loop of another module (every exact
score goes through compiled.py's) keeps the callee's old code when only the callee's file changed, or, where the
callee's signature changed, calls into code that is no longer there: a segmentation fault, as a checkout that moved
past a change of compiled.py alone met. So each loop's stamp here is its own file's and every loop module's together:
a change to any of them compiles them all again (20 to 60 s, once, as on a first start). The locators are numba's
own (NUMBA_CACHE_DIR, `__pycache__` beside the modules, the user's cache folder), in numba's order; the loop
modules are those beside the loop's own (for this package: model/).
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

from numba.core.caching import InTreeCacheLocator, UserProvidedCacheLocator, UserWideCacheLocator

# How a module that defines compiled loops says so (compiled.py's two decorators).
MARKS = (b"\n@compiled\n", b"\n@reordering\n")


@functools.cache
def loops_stamp(folder: Path) -> str:
    """A digest of every module in `folder` that defines compiled loops, by name and source (read once a
    process)."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.py")):
        source = path.read_bytes()
        if any(mark in source for mark in MARKS):
            digest.update(path.name.encode() + b"\0" + source + b"\0")
    return digest.hexdigest()


class _WithEveryLoop:
    """numba's stamp of a loop's own file, and `loops_stamp` of its folder."""

    _py_file: str

    def get_source_stamp(self) -> Any:
        return (super().get_source_stamp(), loops_stamp(Path(self._py_file).parent))  # type: ignore[misc]


class UserProvided(_WithEveryLoop, UserProvidedCacheLocator):
    pass


class InTree(_WithEveryLoop, InTreeCacheLocator):
    pass


class UserWide(_WithEveryLoop, UserWideCacheLocator):
    pass


# For numba's NUMBA_CACHE_LOCATOR_CLASSES setting, while compiled.py decorates a loop.
LOCATORS = ",".join(f"{__name__}.{locator.__name__}" for locator in (UserProvided, InTree, UserWide))
