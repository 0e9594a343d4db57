"""What one request's model maths costs, counted in multiply-adds: a figure of the model's shape and the reader's
history, the same on every machine, so that a search's serving budget (RECOMMENDER_COST_BUDGET) releases the same
configuration wherever it runs. Timings are what benchmarks report (bench/request_path.py); a decision never
hangs on them.

The parts, for a catalogue of B books, k CF factors, d content dimensions, a reader with h books and an answer of
n books: the scan, B (k + d + 1); the candidates' statistics, k^2 + d^2 (model/ranking.py's Gram matrices); the
scores shown, (n + h)(k + d); `because`, h^2 k + n h (k + d) + h^3 / 3 through the whitened factors (model/cf.py)
for a history shorter than the factors, else k^3 / 3 + h k^2 + n k^2.
"""

from __future__ import annotations

ANSWER = 10  # books an answer is costed for


def request_madds(books: int, factors: int, dimensions: int, history: float, answer: int = ANSWER) -> float:
    """Multiply-adds of one request's model maths (see the module)."""
    k, d, h, n = float(factors), float(dimensions), float(history), float(answer)
    scan = books * (k + d + 1)
    statistics = k * k + d * d
    shown = (n + h) * (k + d)
    return scan + statistics + shown + _because(k, d, h, n)


def _because(k: float, d: float, h: float, n: float) -> float:
    if h < k:  # through the whitened factors
        return h * h * k + n * h * (k + d) + h**3 / 3
    return k**3 / 3 + h * k * k + n * k * k + n * h * d
