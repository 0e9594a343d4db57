"""The learned second stage (model/learned.py, model/trees.py, training/ranker.py): trees scored as LightGBM scores
them, stored and refused like a version's other arrays, series order, filters and the author cap holding whatever
the trees favour, and answers the same alone or in a batch."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recommender.model import learned
from recommender.model.answers import Reader, Request
from recommender.model.dataset import Book, Interaction, TrainingData
from recommender.model.evaluation import split
from recommender.model.fit import fit_content, train
from recommender.model.growth import with_index
from recommender.model.hybrid import HybridModel
from recommender.model.learned import Ranker
from recommender.model.learned_loops import FEATURES
from recommender.model.params import IndexParams, SplitParams, TuningPolicy
from recommender.model.readers import reader_of
from recommender.model.recommend import query_for, recommend, recommend_many
from recommender.model.shortlist import shortlists
from recommender.model.signals import ReaderSignals
from recommender.model.trees import LEAF, Trees, TreesError
from recommender.storage import demo
from recommender.storage.artifact_files import ArtifactCorrupt, read_version, write_version
from recommender.storage.registry import Status, VersionRecord
from recommender.training.blends import blend_floor
from recommender.training.ranker import InnerTrees, best_ranker, fitted_trees, labelled, with_learned_stage
from recommender.training.trainer import Trainer
from recommender.training.trials import fit_and_measure
from tests.support.data import BOOKS, PARAMS
from tests.test_book_signals import OTHERS, VOLUMES, assert_in_order
from tests.test_book_signals import model as model

LATER = FEATURES.index("later volume")
AUTHORS = FEATURES.index("author")


def _one_split(feature: int, threshold: float, below: float, above: float) -> Trees:
    return Trees.stump(feature, threshold, below, above, len(FEATURES))


# Trees that favour what the series order forbids: a later volume far above everything else.
LATER_FIRST = _one_split(LATER, 0.5, 0.0, 100.0)


def test_the_trees_score_rows_as_lightgbm_predicts_them() -> None:
    rng = np.random.default_rng(3)
    values = rng.normal(size=(2_000, 5))
    labels = (values[:, 0] + values[:, 3] * rng.normal(size=2_000) > 1).astype(int)
    ranker = lgb.LGBMRanker(objective="lambdarank", n_estimators=15, num_leaves=7, min_child_samples=10, verbose=-1)
    ranker.fit(values, labels, group=[50] * 40)
    trees = Trees.of_dump(ranker.booster_.dump_model())
    assert len(trees.roots) == 15
    np.testing.assert_array_equal(trees.scores(values), ranker.predict(values))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"left": np.array([0, -1, -1])}, "later node"),  # a cycle: the root its own child
        ({"feature": np.array([len(FEATURES), LEAF, LEAF])}, "feature"),
        ({"value": np.array([0.0, np.nan, 1.0])}, "finite"),
        ({"threshold": np.array([0.5, 0.0])}, "length"),
    ],
)
def test_stored_trees_that_are_not_a_forest_are_refused(change: dict[str, np.ndarray], message: str) -> None:
    with pytest.raises(TreesError, match=message):
        Trees.of_arrays(LATER_FIRST.arrays() | change)


def test_a_version_with_trees_is_stored_with_them_and_refused_when_they_are_broken(
    model: HybridModel,
    tmp_path: Path,
) -> None:
    version = model.with_ranker(Ranker(LATER_FIRST))
    write_version(tmp_path, version)
    read = read_version(tmp_path, version.meta.version)
    assert read.ranker is not None
    np.testing.assert_array_equal(read.ranker.trees.value, LATER_FIRST.value)
    events = [(101, 5.0), (102, 5.0), (1, 4.0), (2, 4.0), (11, 4.0)]
    assert recommend(read, 10**6, 10, events) == recommend(version, 10**6, 10, events)
    assert recommend(read, 10**6, 10, events) != recommend(model, 10**6, 10, events)
    broken = tmp_path / "broken"
    broken.mkdir()
    write_version(broken, model.with_ranker(Ranker(dataclasses.replace(LATER_FIRST, left=np.array([0, -1, -1])))))
    with pytest.raises(ArtifactCorrupt, match="ranker"):
        read_version(broken, version.meta.version)
    wider = tmp_path / "wider"  # trees of another release's features
    wider.mkdir()
    write_version(wider, model.with_ranker(Ranker(dataclasses.replace(LATER_FIRST, features=len(FEATURES) + 1))))
    with pytest.raises(ArtifactCorrupt, match="features"):
        read_version(wider, version.meta.version)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    read=st.integers(1, VOLUMES - 2),
    others=st.lists(st.sampled_from([b.book_id for b in [*BOOKS, *OTHERS]]), min_size=4, max_size=8, unique=True),
    limit=st.integers(1, 25),
    cap=st.one_of(st.none(), st.integers(1, 3)),
    hidden=st.lists(st.sampled_from([b.book_id for b in [*BOOKS, *OTHERS]]), max_size=10, unique=True),
    trees=st.sampled_from([LATER_FIRST, _one_split(AUTHORS, 0.1, 0.0, 5.0), _one_split(LATER, 0.5, 1.0, -1.0)]),
)
def test_no_learned_answer_ranks_a_later_volume_above_the_next_one(
    model: HybridModel,
    read: int,
    others: list[int],
    limit: int,
    cap: int | None,
    hidden: list[int],
    trees: Trees,
) -> None:
    """Whatever the trees favour: volume n+2 never above n+1 for a reader of volumes 1..n (and four books or more
    besides: a history the trees rank), filters and the author cap holding."""
    assert_in_order(model.with_ranker(Ranker(trees)), read, others, limit, cap, hidden)


def test_a_learned_answer_is_the_same_alone_and_in_a_batch(model: HybridModel) -> None:
    version = model.with_ranker(Ranker(_one_split(FEATURES.index("popularity"), 0.3, 0.0, 1.0)))
    read = [(b, 4.0) for b in (1, 2, 11, 12)]
    readers = [(u, [(100 + v, 5.0) for v in range(1, 1 + u % 4)] + read[: 1 + u % 5]) for u in range(12)]
    alone = [recommend(version, 10**6 + u, 7, events) for u, events in readers]
    batch = recommend_many(version, [Request(10**6 + u, 7, events) for u, events in readers])
    assert batch == alone
    weighed = [recommend(model, 10**6 + u, 7, events) for u, events in readers]
    assert [a == w for a, w in zip(alone, weighed, strict=True)] != [True] * len(readers)  # the trees ranked some
    said = [r for answer in alone for b in answer.books for r in b.because if r.part == "series"]
    assert said and all(0 < r.share <= 1 and r.text.startswith("next in The Saga") for r in said)


def _readers_of_authors() -> TrainingData:
    """Readers who each come back to a few authors: a held-out book is mostly by one the reader read."""
    rng = np.random.default_rng(5)
    books = [Book(i, f"Book {i}", f"Author {i // 8}", f"words of author {i // 8}", ("fiction",)) for i in range(240)]
    rows = []
    for user in range(400):
        for author in rng.choice(30, size=2, replace=False):
            for book in rng.choice(8, size=6, replace=False):
                rows.append(Interaction(user, int(author) * 8 + int(book), float(rng.integers(3, 6))))
        rows += [Interaction(user, int(b), 4.0) for b in rng.choice(240, size=3, replace=False)]
    return TrainingData.from_interactions(books, rows)


def test_the_search_keeps_the_trees_where_they_rank_held_out_books_better() -> None:
    data = _readers_of_authors()
    params = dataclasses.replace(PARAMS, signals=dataclasses.replace(PARAMS.signals, author=0.0))
    the_split = split(data, SplitParams(seed=3))
    content = fit_content(data.books, params)
    weighed = fit_and_measure(the_split, params, content, lambda: False)
    inner = InnerTrees(the_split, content)
    kept = best_ranker(weighed, inner, blend_floor(weighed, the_split), float("inf"))
    assert kept.model.ranker is not None
    assert kept.metrics.ndcg > weighed.metrics.ndcg
    rows = labelled(weighed.model, the_split.held_out, sorted(the_split.held_out))
    assert rows.values.shape == (len(rows.labels), len(FEATURES)) and sum(rows.groups) == len(rows.labels)
    assert fitted_trees(dataclasses.replace(rows, labels=np.zeros_like(rows.labels)), 1, 1) is None
    # Released, the version's params say who its trees rank; the gate's "before" refits them as served.
    assert kept.params.signals.learned_from == kept.model.ranker.least_history
    trainer = Trainer("", Path(), params, keep_versions=1, tuning=TuningPolicy(enabled=False))
    active = VersionRecord("active", Status.ACTIVE, params=kept.params.as_dict())
    candidate, before, _ = trainer._candidate(the_split, content, active, [], lambda: False)
    assert candidate.model.ranker is None and candidate.params.signals.learned_from is None
    assert before is not None and before.model.ranker is not None
    assert before.params == kept.params and before.metrics.ndcg > candidate.metrics.ndcg
    # One retrain fits a configuration's trees once: the gate's "before", then the search keeping it.
    served = with_learned_stage(weighed, kept.params.signals.learned_from, inner)
    assert served.model.ranker is not None and served.model.ranker.trees is kept.model.ranker.trees
    assert list(inner.fitted) == [weighed.params]


def test_the_catalogue_index_path_takes_the_learned_stage() -> None:
    """An indexed version's learned answers: the reader's unread books, as many as asked, mostly the exhaustive
    version's (the index's shortlist holds the blend's best, give or take its recall)."""
    books = demo.generate(5, 4000, 300, 12_000)
    params = dataclasses.replace(PARAMS, als=dataclasses.replace(PARAMS.als, factors=16), tfidf_max_features=3000)
    exhaustive = train(TrainingData.from_interactions(books.books, books.interactions), params)
    exhaustive = exhaustive.with_ranker(Ranker(_one_split(AUTHORS, 0.1, 0.0, 5.0)))
    indexed = with_index(exhaustive, IndexParams(min_books=0, exact_below=200))
    assert indexed.search is not None and not indexed.signals.empty
    overlap = []
    for user in [int(u) for u in exhaustive.cf.user_ids[:60]]:
        found = [b.book_id for b in recommend(indexed, user, 10, explain=False).books]
        seen = set(exhaustive.catalogue.book_ids[reader_of(exhaustive, user).seen].tolist())
        assert len(found) == len(set(found)) == 10 and not set(found) & seen
        overlap.append(len(set(found) & {b.book_id for b in recommend(exhaustive, user, 10, explain=False).books}))
    assert np.mean(overlap) >= 8, overlap


def test_a_reader_of_a_prolific_author_gets_the_next_volume_and_the_most_popular_of_the_others(
    model: HybridModel,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Capped, the books the signals raise are the next volume and the most popular others, and the candidates are
    the same whatever the shortlist's depth (a scanned one lists more than a multiplied one)."""
    seen = np.sort(model.catalogue.positions([101, 102, 1, 11])).astype(np.int32)
    reader = Reader(None, seen, np.ones(4, dtype=np.float32))
    q = query_for(model, reader)
    mine = ReaderSignals.of(model.signals, reader.seen, reader.weights)
    narrow, wide = shortlists(model.rows, [q, q], [5, 40], [None, None])
    every = learned.candidates(model.signals, mine, model.rows, q, narrow, 5)
    monkeypatch.setattr(learned, "MOST_CANDIDATES", 4)
    few = learned.candidates(model.signals, mine, model.rows, q, narrow, 5)
    raised = few.found[few.raised]
    assert len(raised) == 4 < every.raised.sum()
    next_volume = model.catalogue.positions([103])[0]
    assert next_volume in raised
    dropped = sorted(set(every.found[every.raised].tolist()) - set(raised.tolist()))
    assert min(model.popularity[sorted(set(raised.tolist()) - {next_volume})]) >= max(model.popularity[dropped])
    as_wide = learned.candidates(model.signals, mine, model.rows, q, wide, 5)
    np.testing.assert_array_equal(as_wide.rows, few.rows)
    np.testing.assert_array_equal(as_wide.values, few.values)


def test_a_reader_of_few_books_gets_the_weighed_signals(model: HybridModel) -> None:
    version = model.with_ranker(Ranker(LATER_FIRST, least_history=learned.SHORT_HISTORY))
    for events in ([(101, 5.0)], [(101, 5.0), (102, 5.0), (1, 4.0), (2, 4.0)]):
        assert len(events) < learned.SHORT_HISTORY
        assert recommend(version, 10**6, 10, events) == recommend(model, 10**6, 10, events)
    longer = [(101, 5.0), (102, 5.0), (1, 4.0), (2, 4.0), (11, 4.0)]
    assert recommend(version, 10**6, 10, longer) != recommend(model, 10**6, 10, longer)
