"""The compiled loops (model/compiled.py, model/signal_loops.py, model/explain_loops.py): exact scores bit for bit
what NumPy's float64 sums give, the best columns of a row as a stable sort orders them, a book left out of a
reader's answer by its bound (`within_reach`) never one the answer would have held, and `because` what NumPy's
products and solves give."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bench.servers import ROOT
from recommender.model import signal_loops as loops
from recommender.model.answering import reader_signals
from recommender.model.compiled import dots, item_dots, top_columns
from recommender.model.dataset import Book, Interaction, TrainingData
from recommender.model.explain import explained
from recommender.model.fit import train
from recommender.model.hybrid import HybridModel
from recommender.model.params import ALSParams, SignalWeights
from recommender.model.ranking import TIE_BREAK, Query
from recommender.model.readers import reader_of
from recommender.model.recommend import query_for
from recommender.model.scan import refined
from recommender.model.shortlist import Shortlist, shortlists
from recommender.model.signals import MOST_AUTHORS, ReaderSignals
from tests.support.data import PARAMS

AUTHORS, BOOKS_EACH = 12, 15


def _authors_and_readers() -> TrainingData:
    """Twelve authors of fifteen books each, the first two authors' books two series, their texts alike whoever
    wrote them; readers who come back to two or three authors, each reading a few of their books: an author's other
    books are rarely among the blend's best, and the author signal raises them."""
    rng = np.random.default_rng(7)
    books = [
        Book(
            a * 100 + b,
            f"Book {b} (Cycle {a}, #{b})" if a < 2 else f"Tale {a}-{b}",
            f"Author {a}",
            " ".join(f"word{w}" for w in rng.choice(40, 4, replace=False)),
        )
        for a in range(AUTHORS)
        for b in range(1, BOOKS_EACH + 1)
    ]
    read = []
    for user in range(60):
        for a in rng.choice(AUTHORS, size=2 + user % 2, replace=False).tolist():
            read += [Interaction(user, a * 100 + int(b), 5.0) for b in rng.choice(BOOKS_EACH, 3, replace=False) + 1]
    return TrainingData.from_interactions(books, read)


@pytest.fixture(scope="module")
def model() -> HybridModel:
    return train(_authors_and_readers(), PARAMS)


@settings(max_examples=80, deadline=None)
@given(width=st.integers(1, 700), seed=st.integers(0, 2**16))
def test_exact_scores_are_numpys_float64_sums_of_products(width: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    matrix = (rng.standard_normal((30, width)) * rng.uniform(0.01, 100, width)).astype(np.float32)
    vector = rng.standard_normal(width).astype(np.float32)
    rows = rng.integers(0, 30, 20).astype(np.int32)
    assert np.array_equal(dots(matrix, rows, vector), np.multiply(matrix[rows], vector, dtype=np.float64).sum(axis=1))
    items = np.where(np.arange(30) % 3 == 0, -1, np.arange(30)).astype(np.int32)  # every third book has no item
    expected = np.where(items[rows] >= 0, np.multiply(matrix[items[rows]], vector, dtype=np.float64).sum(axis=1), 0)
    assert np.array_equal(item_dots(matrix, items, rows, vector), expected)


@settings(max_examples=80, deadline=None)
@given(
    matrix=hnp.arrays(
        np.float32, st.tuples(st.integers(1, 8), st.integers(1, 30)), elements=st.sampled_from([0, 0.5, 1, 2])
    ),
    k=st.integers(1, 5),
)
def test_the_best_columns_are_a_stable_sorts_first(matrix: npt.NDArray[np.float32], k: int) -> None:
    assert np.array_equal(top_columns(matrix, k), np.argsort(-matrix, axis=1, kind="stable")[:, :k])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    author=st.sampled_from([0.0, 0.5, 1.5, 2.5]),
    following=st.sampled_from([0.0, 0.5, 1.0]),
    held=st.sampled_from([0.0, 0.5]),
    limit=st.integers(1, 6),
    hidden=st.sampled_from([0, 3, 5]),
)
def test_a_book_left_out_by_its_bound_is_never_one_the_answer_would_hold(
    model: HybridModel, author: float, following: float, held: float, limit: int, hidden: int
) -> None:
    version = model.with_signals(SignalWeights(author, following, held, True))
    weights = version.meta.params.signals
    allowed = None if not hidden else np.arange(version.num_books) % hidden != 0
    left_out = np.zeros(2, dtype=np.int64)
    for user in version.cf.user_ids.tolist():
        reader = reader_of(version, int(user))
        q = query_for(version, reader)
        mine = reader_signals(version, [reader])[0]
        depth = limit + max(limit, 10)
        listed = shortlists(version.rows, [q], [depth], [allowed])[0]
        pruned = mine.best(version.signals, weights, version.rows, q, listed, (depth, limit), allowed)
        whole = mine.best(
            version.signals, weights, version.rows, q, Shortlist(listed.rows, None), (depth, limit), allowed
        )
        assert all(
            np.array_equal(a, b) for a, b in zip(dataclasses.astuple(pruned), dataclasses.astuple(whole), strict=True)
        )
        left_out += _left_out(version, mine, q, listed, depth, limit, allowed)
    if author > 0:
        assert left_out.sum() > 0  # the bounds were put to the test


@pytest.mark.parametrize("author", [0.5, 1.5])
def test_the_floor_leaves_books_out_before_their_signals_are_computed(model: HybridModel, author: float) -> None:
    version = model.with_signals(SignalWeights(author, 0.0, 0.0, True))
    left_out = np.zeros(2, dtype=np.int64)
    for user in version.cf.user_ids.tolist():
        reader = reader_of(version, int(user))
        q = query_for(version, reader)
        listed = shortlists(version.rows, [q], [13], [None])[0]
        left_out += _left_out(version, reader_signals(version, [reader])[0], q, listed, 13, 3, None)
    assert left_out[0] > 0


def _left_out(
    version: HybridModel,
    mine: ReaderSignals,
    q: Query,
    listed: Shortlist,
    depth: int,
    limit: int,
    allowed: npt.NDArray[np.bool_] | None,
) -> tuple[int, int]:
    """How many of the reader's candidates the floor leaves out before their signals are computed, and how many
    more `within_reach` leaves out after."""
    signals, rows = version.signals, version.rows
    assert listed.values is not None
    mask = np.zeros(0, dtype=np.bool_) if allowed is None else allowed
    weights = version.meta.params.signals
    chosen = np.array([weights.author, weights.next, weights.held])
    product = (listed.values, q.offset, rows.popularity)
    terms = (mine.authors, mine.liked_by, MOST_AUTHORS, *signals.by_author, mine.following, mine.seen, mask)
    found = {}
    for floor in (-np.inf, loops._floor(listed.rows, product, listed.margin, chosen, depth, limit)):
        found[floor > -np.inf] = loops.candidates(
            listed.rows, *terms, (product, floor, listed.outside, chosen, signals.series, mine.started)
        )
    every, (rows_left, raised, in_list) = found[False], found[True]
    exact = refined(q.vector, (rows.item_factors, rows.item_of_book, rows.content, rows.popularity), rows_left)
    near = exact - q.offset - TIE_BREAK * rows.popularity[rows_left].astype(np.float64)
    author, following, held = loops.features(
        rows_left, mine.authors, mine.liked_by, mine.started, mine.following, *signals.by_book, signals.series,
        signals.position,
    )  # fmt: skip
    boost = chosen[0] * author + chosen[1] * following - chosen[2] * held
    counts = (depth, limit)
    kept = loops.within_reach(
        rows_left, raised, in_list, near, listed.margin, boost, counts, mine.started, signals.series
    )
    return len(every[0]) - len(rows_left), int((~kept).sum())


def test_because_from_the_compiled_loops_is_what_numpys_products_and_solves_give() -> None:
    # more factors than a reader's books: CF's explanation is the compiled one (model/explain_loops.py's cf_gifts)
    model = train(_authors_and_readers(), dataclasses.replace(PARAMS, als=ALSParams(factors=16, regularization=0.5)))
    rows, content, cf = model.rows, model.content, model.cf
    no_cf = np.flatnonzero(rows.item_of_book < 0)
    assert len(no_cf) >= 5  # books no reader read: they get nothing through CF
    gave_through_cf = False
    for user in model.cf.user_ids[:40].tolist():
        reader = reader_of(model, user)
        q = query_for(model, reader)
        unread = np.setdiff1d(np.arange(model.num_books), reader.seen)
        positions = np.concatenate([unread[rows.item_of_book[unread] >= 0][:6], no_cf[:4]]).astype(np.int32)
        found = explained(model.catalogue, content, rows, cf, positions, reader, q)
        assert found is not None
        liked = reader.weights > 0
        mine, weights = reader.seen[liked], reader.weights[liked]
        norm = float(np.linalg.norm(content.profile(mine, weights))) or 1.0
        by_content = (content.vectors[positions] @ content.vectors[mine].T) * (
            weights * np.float32(q.content.scale / norm)
        )
        by_cf = np.zeros_like(by_content)
        items, targets = rows.item_of_book[mine], rows.item_of_book[positions]
        known, reachable = items >= 0, targets >= 0
        assert known.sum() < cf.item_factors.shape[1]
        given = cf.explain(items[known], weights[known], targets[reachable])
        by_cf[np.ix_(reachable, known)] = given * np.float32(q.cf.scale)
        total = np.maximum(by_cf, 0) + np.maximum(by_content, 0)
        best = np.argsort(-total, axis=1, kind="stable")[:, :3]
        for row, reasons in enumerate(found):
            whole = total[row].sum()
            expected = [
                (int(model.catalogue.book_ids[mine[b]]), "cf" if by_cf[row, b] >= by_content[row, b] else "content")
                for b in best[row]
                if total[row, b] > 0
            ]
            assert [(r.book_id, r.part) for r in reasons] == expected
            assert [r.share for r in reasons] == pytest.approx(
                [total[row, b] / whole for b in best[row][: len(expected)]], rel=1e-5
            )
        gave_through_cf |= bool((by_cf[:6] > 0).any())
        assert all(not reasons or all(r.part == "content" for r in reasons) for reasons in found[6:])
    assert gave_through_cf


COMPILED = "from recommender.model.compiled import compiled\n\n\n@compiled\n"
LOW = COMPILED + "def inner(x):\n    return x + {step}\n"
HIGH = "from loops.low import inner\n" + COMPILED + "def outer(x):\n    return inner(x) * 2\n"


def test_a_cached_loop_is_compiled_again_when_a_loop_it_calls_changes_in_another_module(tmp_path: Path) -> None:
    """numba alone checks a cached loop against its own file: `outer` would keep `inner`'s old code."""
    package = tmp_path / "loops"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "high.py").write_text(HIGH)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT / "services")])}
    env.pop("NUMBA_CACHE_DIR", None)
    answers = []
    for step in (1, 10):
        (package / "low.py").write_text(LOW.format(step=step))
        run = [sys.executable, "-c", "from loops.high import outer; print(outer(1))"]
        done = subprocess.run(run, env=env, capture_output=True, text=True, timeout=120, check=True)
        answers.append(int(done.stdout))
    assert answers == [4, 22]
    assert list((package / "__pycache__").glob("high.outer-*.nbi"))  # cached, not compiled in memory only
