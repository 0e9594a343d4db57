"""The catalogue index (model/index.py): the exhaustive ranking's answers, found among a few candidates; a predicate
that restricts them without losing any; books added after the index was built; the index stored with its version."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from recommender.model.dataset import Book, TrainingData
from recommender.model.fit import train
from recommender.model.growth import with_books, with_index
from recommender.model.hybrid import HybridModel
from recommender.model.params import IndexParams
from recommender.model.ranking import scored
from recommender.model.readers import reader_of
from recommender.model.recommend import query_for, recommend
from recommender.model.similar import similar_to
from recommender.storage import demo
from recommender.storage.artifact_files import ArtifactCorrupt
from recommender.storage.artifacts import LocalArtifactStore
from tests.support.data import PARAMS

# Few books, so that a predicate allowing a few dozen takes the exhaustive path and a half takes the index's.
INDEX = IndexParams(min_books=0, exact_below=200)


@pytest.fixture(scope="module")
def demo_books() -> demo.DemoCatalogue:
    return demo.generate(5, 4000, 300, 12_000)


@pytest.fixture(scope="module")
def exhaustive(demo_books: demo.DemoCatalogue) -> HybridModel:
    params = dataclasses.replace(PARAMS, als=dataclasses.replace(PARAMS.als, factors=16), tfidf_max_features=3000)
    model = train(TrainingData.from_interactions(demo_books.books, demo_books.interactions), params)
    assert model.index is None  # 4,000 books: below the default size for an index
    return model


@pytest.fixture(scope="module")
def indexed(exhaustive: HybridModel) -> HybridModel:
    model = with_index(exhaustive, INDEX)
    assert model.index is not None and model.search is not None
    return model


def readers(model: HybridModel) -> list[int]:
    return [int(u) for u in model.cf.user_ids]


def ids(model: HybridModel, user: int, limit: int = 10) -> list[int]:
    return [b.book_id for b in recommend(model, user, limit, explain=False).books]


def truly_best(model: HybridModel, user: int, allowed: np.ndarray | None = None, limit: int = 10) -> list[int]:
    """The reader's best books by their float64 scores over the whole catalogue (`ranking.scored`): the truth that
    both the exhaustive product (rounded, model/products.py) and the index approach."""
    q = query_for(model, reader_of(model, user))
    candidates = np.setdiff1d(np.arange(model.num_books), q.seen)
    if allowed is not None:
        candidates = candidates[allowed[candidates]]
    best = scored(model.rows, q, candidates.astype(np.int32)).positions[:limit]
    return model.catalogue.book_ids[best].tolist()


def recall(found: list[list[int]], truth: list[list[int]]) -> float:
    return sum(len(set(f) & set(t)) for f, t in zip(found, truth, strict=True)) / sum(len(t) for t in truth)


def test_the_index_finds_the_books_the_whole_catalogue_ranking_finds(
    exhaustive: HybridModel, indexed: HybridModel
) -> None:
    users = readers(exhaustive)
    truth = [truly_best(exhaustive, u) for u in users]
    assert recall([ids(indexed, u) for u in users], truth) >= 0.99
    assert recall([ids(exhaustive, u) for u in users], truth) >= 0.99
    for user in users[:50]:
        served = recommend(indexed, user, 10)
        seen = indexed.catalogue.book_ids[reader_of(indexed, user).seen]
        assert not {b.book_id for b in served.books} & set(seen.tolist())
        # Re-scored exactly: a book's score is the same whichever way it was found.
        everything = {b.book_id: b.score for b in recommend(exhaustive, user, 300, explain=False).books}
        assert [b.score for b in served.books] == pytest.approx([everything[b.book_id] for b in served.books])
        assert all(b.because for b in served.books)
    rng = np.random.default_rng(3)  # readers newer than the model: folded in, searched alike
    histories = [[(int(b), 5.0) for b in rng.choice(exhaustive.catalogue.book_ids, 4)] for _ in range(30)]
    found = [[b.book_id for b in recommend(indexed, 10**6, 10, h, explain=False).books] for h in histories]
    truth = [[b.book_id for b in recommend(exhaustive, 10**6, 10, h, explain=False).books] for h in histories]
    assert recall(found, truth) >= 0.99


def test_similar_books_come_through_the_index(exhaustive: HybridModel, indexed: HybridModel) -> None:
    books = [int(b) for b in exhaustive.catalogue.book_ids[::10]]
    found = [[b.book_id for b in similar_to(indexed, book, 10) or []] for book in books]
    truth = [[b.book_id for b in similar_to(exhaustive, book, 10) or []] for book in books]
    assert recall(found, truth) >= 0.95
    assert all(book not in answer for book, answer in zip(books, found, strict=True))


@pytest.mark.parametrize("share", [0.5, 0.01])
def test_a_predicate_restricts_the_candidates_without_losing_recall(indexed: HybridModel, share: float) -> None:
    """Half the catalogue allowed: the index's own search under a Faiss selector; 1% (40 books, below
    `exact_below`): a pass over the books allowed. Either way the answer is the best allowed books."""
    search = indexed.search
    assert search is not None
    allowed = np.random.default_rng(7).random(indexed.num_books) < share
    found, truth = [], []
    for user in readers(indexed)[:100]:
        q = query_for(indexed, reader_of(indexed, user))
        answer = search.ranked(indexed.rows, q, 10, allowed=allowed)
        assert allowed[answer.positions].all()
        found.append(indexed.catalogue.book_ids[answer.positions].tolist())
        truth.append(truly_best(indexed, user, allowed))
        assert len(found[-1]) == len(truth[-1])  # `limit` books while that many are allowed
    assert recall(found, truth) >= 0.99


def test_books_added_after_the_index_are_searched_exactly_beside_it(
    demo_books: demo.DemoCatalogue, exhaustive: HybridModel, indexed: HybridModel
) -> None:
    """New books (the most read books' text under new ids) and a changed one go to the exact segment. Ranked by
    content (alpha 0: new books have no CF factors yet), they are among many readers' best, and wherever the
    exhaustive ranking recommends one of them, the index's search does too."""
    by_id = {b.book_id: b for b in demo_books.books}
    most_read = [int(b) for b in exhaustive.catalogue.book_ids[np.argsort(-exhaustive.popularity)[:40]]]
    added = [dataclasses.replace(by_id[b], book_id=100_000 + b, title=f"{by_id[b].title} (2nd ed.)") for b in most_read]
    changed = dataclasses.replace(by_id[most_read[0]], description="dragons dragons dragons " * 5)
    grown_exact = with_books(exhaustive, [*added, changed]).with_blend(alpha=0.0)
    grown = with_books(indexed, [*added, changed]).with_blend(alpha=0.0)
    assert grown.search is not None and len(grown.search.segment) == len(added) + 1
    new = {b.book_id for b in added} | {changed.book_id}
    users = readers(grown)
    truth = [truly_best(grown_exact, u) for u in users]
    found = [ids(grown, u) for u in users]
    wanted = [(set(t) & new, set(f)) for t, f in zip(truth, found, strict=True) if set(t) & new]
    assert len(wanted) > 30  # the new books are recommended to many readers ...
    assert all(books <= answer for books, answer in wanted)  # ... and the index's search finds them all
    assert recall(found, truth) >= 0.99


def test_a_version_keeps_its_index_and_refuses_a_damaged_one(tmp_path: Path, indexed: HybridModel) -> None:
    store = LocalArtifactStore(tmp_path)
    folder = store.write(indexed)
    loaded = store.read(indexed.meta.version)
    assert loaded.index is not None
    for user in readers(indexed)[:20]:
        assert recommend(loaded, user, 10) == recommend(indexed, user, 10)
    index_file = folder / "index.npz"
    index_file.write_bytes(index_file.read_bytes()[:-100])
    with pytest.raises(ArtifactCorrupt, match=r"index\.npz does not match its checksum"):
        store.read(indexed.meta.version)


def test_a_small_catalogue_is_ranked_exhaustively(exhaustive: HybridModel) -> None:
    assert with_index(exhaustive, IndexParams(min_books=exhaustive.num_books + 1)).index is None
    assert exhaustive.search is None


def test_an_index_refuses_a_catalogue_it_does_not_cover(indexed: HybridModel, exhaustive: HybridModel) -> None:
    from recommender.model.index import restore

    index = indexed.index
    assert index is not None
    smaller = with_books(exhaustive, [Book(999_999, "Another", "X", "words", ())])
    with pytest.raises(ValueError, match="does not cover"):
        restore(smaller.catalogue.book_ids, smaller.rows, index.content, index.book_cf)


def test_a_search_never_returns_a_row_it_excludes() -> None:
    """Faiss's selectors read the excluded ids when built: they must outlive nothing they point into (a reader with
    a long history once got their own books back)."""
    from recommender.model.index import Excluded

    rng = np.random.default_rng(3)
    excluded = np.sort(rng.choice(100_000, 2_000, replace=False)).astype(np.int32)
    allowed = rng.random(100_000) < 0.9
    for rows, mask in ((excluded, None), (excluded, allowed)):
        selector, _alive = Excluded(rows, mask).selector()
        _noise = [np.full(4_000, 7, dtype=np.int64) for _ in range(50)]  # reuse any memory freed meanwhile
        is_member = cast(Any, selector).is_member  # Faiss's stubs leave it out
        assert not any(is_member(int(row)) for row in rows)
        others = np.setdiff1d(np.arange(100_000), rows)
        expected = np.ones(len(others), dtype=bool) if mask is None else mask[others]
        assert [is_member(int(row)) for row in others[:3_000]] == expected[:3_000].tolist()
