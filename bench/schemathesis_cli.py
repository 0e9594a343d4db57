"""Schemathesis's command line with `ast.parse` taken one thread at a time.

Schemathesis's workers are threads, and Hypothesis parses the source of each lambda it describes. CPython before
3.13 keeps the AST constructor's recursion depth in state that those threads share, so two parses at once now and
then fail with "SystemError: AST constructor recursion depth mismatch" (python/cpython#106905): a runtime error in
the coverage phase that says nothing about the API under test.

    python bench/schemathesis_cli.py run URL [schemathesis options]
"""

from __future__ import annotations

import ast
import sys
import threading
from typing import Any

from schemathesis.cli import schemathesis

_parse = ast.parse
_parsing = threading.Lock()


def _one_at_a_time(*args: Any, **kwargs: Any) -> ast.AST:
    with _parsing:
        return _parse(*args, **kwargs)


if __name__ == "__main__":
    ast.parse = _one_at_a_time  # type: ignore[assignment]
    sys.exit(schemathesis())
