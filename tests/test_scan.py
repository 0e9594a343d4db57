"""The compressed scan (model/scan.py): its values are within its bound of the exact products, whatever the rows
and queries, and a single request's shortlist from it answers as the float product's batch does."""

from __future__ import annotations

import dataclasses
import functools
import random

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from recommender.model import shortlist as shortlist_module
from recommender.model.dataset import TrainingData
from recommender.model.fit import train
from recommender.model.hybrid import HybridModel
from recommender.model.params import ALSParams
from recommender.model.ranking import Query, scored
from recommender.model.readers import reader_of
from recommender.model.recommend import query_for
from recommender.model.scan import Quantised
from recommender.model.shortlist import FEWEST_FOR_ONE_PRODUCT, WIDEST_SCAN, listing, shortlists
from recommender.storage import demo
from tests.support.data import PARAMS

_finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@st.composite
def _rows_and_queries(draw: st.DrawFn) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    dimensions = draw(st.sampled_from([1, 3, 4, 7, 64, 3000]))  # 3000: the query codes' room in int32 is small
    books = draw(st.integers(1, 40))
    columns = draw(hnp.arrays(np.float32, (dimensions, books), elements=_finite))
    if draw(st.booleans()):  # heavy tails: one book far out in every dimension
        columns[:, 0] *= 1000
    vectors = draw(hnp.arrays(np.float32, (draw(st.integers(1, 3)), dimensions), elements=_finite))
    return columns, vectors


@settings(max_examples=150, deadline=None)
@given(_rows_and_queries())
def test_every_scanned_value_is_within_its_bound_of_the_exact_product(
    case: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]],
) -> None:
    columns, vectors = case
    quantised = Quantised.of(columns)
    coded = quantised.coded(vectors)
    values, bounds = quantised.products(coded), coded.bounds
    exact = vectors.astype(np.float64) @ columns.astype(np.float64)
    assert values.dtype == np.float32 and values.shape == exact.shape
    assert (np.abs(values - exact) <= bounds[:, None]).all()


def test_the_codes_are_a_quarter_of_the_float_rows_and_all_zero_rows_scan_to_zero() -> None:
    columns = np.random.default_rng(1).standard_normal((9, 50)).astype(np.float32)
    columns[4] = 0.0
    quantised = Quantised.of(columns)
    assert quantised.codes.nbytes * 4 == columns.nbytes
    zeros, ones = Quantised.of(np.zeros((5, 8), dtype=np.float32)), np.ones((1, 5), dtype=np.float32)
    coded = zeros.coded(ones)
    values, bounds = zeros.products(coded), coded.bounds
    assert (values == 0).all() and bounds[0] <= 2.0**-148  # no error but float32's smallest step


def test_a_scanned_shortlist_holds_the_exact_best_books_and_answers_as_the_float_product() -> None:
    """Scanned alone, and multiplied in float32 in a batch of FEWEST_FOR_ONE_PRODUCT: both shortlists hold every book
    whose exact score is among the best, filtered or not, and the scanned one stays short."""
    model = _model()
    rows, wanted = model.rows, 20
    queries = [query_for(model, reader_of(model, int(u))) for u in model.cf.user_ids[:FEWEST_FOR_ONE_PRODUCT]]
    half = np.random.default_rng(3).random(model.num_books) < 0.5
    for mask in (None, half):
        multiplied = shortlists(rows, queries, [wanted] * len(queries), [mask] * len(queries))
        for q, together in zip(queries, multiplied, strict=True):
            alone = shortlists(rows, [q], [wanted], [mask], scanned=True)[0]
            assert alone.outside > alone.margin == together.margin == together.outside
            chosen = shortlists(rows, [q], [wanted], [mask])[0]  # scanned where the bound is narrow enough
            narrow = rows.quantised.coded(q.vector[None, :]).bounds[0] <= WIDEST_SCAN
            assert (chosen.outside > chosen.margin) == narrow  # (and its shortlist short: not multiplied after all)
            allowed = _allowed(model, q, mask)
            best = _exact_best(model, q, allowed, wanted)
            assert set(best) <= set(alone.rows) and set(best) <= set(together.rows)
            assert len(alone.rows) < int(allowed.sum()) // 4
            assert alone.values is not None and together.values is not None
            refined = alone.values[alone.rows].astype(np.float64)  # each within half a margin of the exact
            assert (np.abs(refined - together.values[alone.rows]) <= alone.margin).all()


def test_a_scan_whose_shortlist_is_long_is_multiplied_after_all(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the scan's shortlist holds more than MOST_REFINED of the catalogue (here: any), the query is
    multiplied in float32 instead: its shortlist is the float product's, holding the exact best books."""
    model = _model()
    rows, wanted = model.rows, 20
    monkeypatch.setattr(shortlist_module, "MOST_REFINED", 0.0)
    queries = [query_for(model, reader_of(model, int(user))) for user in model.cf.user_ids[:8]]
    assert any(rows.quantised.coded(q.vector[None, :]).bounds[0] <= WIDEST_SCAN for q in queries)  # scanned first
    for q in queries:
        chosen = shortlists(rows, [q], [wanted], [None])[0]
        multiplied = shortlists(
            rows, [q] * FEWEST_FOR_ONE_PRODUCT, [wanted] * FEWEST_FOR_ONE_PRODUCT, [None] * FEWEST_FOR_ONE_PRODUCT
        )[0]
        assert chosen.outside == chosen.margin == multiplied.margin
        assert np.array_equal(chosen.rows, multiplied.rows)
        assert set(_exact_best(model, q, _allowed(model, q, None), wanted)) <= set(chosen.rows)


def _allowed(model: HybridModel, q: Query, mask: npt.NDArray[np.bool_] | None) -> npt.NDArray[np.bool_]:
    """The books the reader may get: those `mask` allows (None: all), less their own."""
    allowed = np.ones(model.num_books, dtype=bool) if mask is None else mask.copy()
    allowed[q.seen] = False
    return allowed


def _exact_best(model: HybridModel, q: Query, allowed: npt.NDArray[np.bool_], wanted: int) -> npt.NDArray[np.int32]:
    """The `wanted` best of the `allowed` books by their exact scores: every one of them scored."""
    return scored(model.rows, q, np.flatnonzero(allowed).astype(np.int32)).positions[:wanted]


@functools.cache
def _model() -> HybridModel:
    catalogue = demo.generate(5, 600, 150, 6000)
    return train(
        TrainingData.from_interactions(catalogue.books, catalogue.interactions),
        dataclasses.replace(PARAMS, als=ALSParams(factors=48)),
    )


@settings(max_examples=150, deadline=None)
@given(
    hnp.arrays(np.float32, st.integers(1, 1200), elements=_finite),
    st.integers(0, 300),
    st.floats(0.0, 10.0),
    st.randoms(use_true_random=False),
)
def test_a_listing_holds_every_row_near_the_best_and_none_the_reader_may_not_get(
    values: npt.NDArray[np.float32], wanted: int, within: float, rng: random.Random
) -> None:
    """`listing`'s bar is never above the wanted-th best allowed value (from 256 groups' maxima or, with more
    wanted or fewer values, the value itself): every row within `within` of that best is listed, and no row the
    reader has read or a filter leaves out."""
    books = len(values)
    seen = np.array(sorted(rng.sample(range(books), rng.randrange(books))), dtype=np.int32)
    allowed = np.array([rng.random() < 0.7 for _ in range(books)]) if rng.random() < 0.5 else np.zeros(0, dtype=bool)
    kept = np.ones(books, dtype=bool) if not len(allowed) else allowed.copy()
    kept[seen] = False
    listed = listing(values.copy(), seen, allowed, wanted, within)
    assert kept[listed].all() and (np.diff(listed) > 0).all()
    candidates = np.sort(values[kept])[::-1]
    if wanted == 0 or not len(candidates):
        assert len(listed) == 0
        return
    best = np.float64(candidates[min(wanted, len(candidates)) - 1])
    must = np.flatnonzero(kept & (values.astype(np.float64) >= best - within))
    assert set(must.tolist()) <= set(listed.tolist())
    assert len(listed) >= min(wanted, len(candidates))
