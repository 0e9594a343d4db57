"""Filters and the author cap in the ranking (model/filters.py): applied before the top-k on the exact path and
through the catalogue index, so that an answer has `limit` books while that many match, and is the unfiltered
ranking's order restricted to what matches."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recommender.model.answers import Request
from recommender.model.dataset import Book, TrainingData
from recommender.model.filters import BookFacts, Filters, author_key
from recommender.model.fit import train
from recommender.model.growth import with_index
from recommender.model.hybrid import HybridModel
from recommender.model.params import ALSParams, IndexParams, TrainingParams
from recommender.model.recommend import recommend, recommend_many
from recommender.model.similar import similar_to
from recommender.storage import demo

GENRES = sorted({g for b in demo.generate(3, 400, 150, 4000).books for g in b.genres})


@pytest.fixture(scope="module")
def models() -> tuple[list[Book], dict[str, HybridModel]]:
    catalogue = demo.generate(3, 400, 150, 4000)
    data = TrainingData.from_interactions(catalogue.books, catalogue.interactions)
    exact = train(data, TrainingParams(als=ALSParams(factors=16, iterations=6)))
    # The index forced on, and a predicate answered through it (not by its exhaustive fallback).
    indexed = with_index(exact, IndexParams(min_books=0, exact_below=0))
    return catalogue.books, {"exact": exact, "index": indexed}


filters = st.builds(
    Filters,
    genres=st.lists(st.sampled_from(GENRES), max_size=2).map(tuple),
    exclude=st.lists(st.integers(1, 400), max_size=30).map(tuple),
    min_year=st.one_of(st.none(), st.integers(1900, 2020)),
    max_year=st.one_of(st.none(), st.integers(1950, 2030)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chosen=filters, user=st.integers(1, 150), limit=st.integers(1, 40), path=st.sampled_from(["exact", "index"]))
def test_a_filtered_answer_is_the_ranking_restricted_to_what_matches(
    models: tuple[list[Book], dict[str, HybridModel]], chosen: Filters, user: int, limit: int, path: str
) -> None:
    books, by_path = models
    model = by_path[path]
    facts = BookFacts.of(books).over(model.catalogue.book_ids)
    allowed = facts.allowed(chosen)
    answer = recommend_many(model, [Request(user, limit, allowed=allowed)], explain=False)[0]
    everything = recommend_many(model, [Request(user, model.num_books)], explain=False)[0]
    by_id = {b.book_id: b for b in books}
    matching = [b for b in everything.books if _matches(by_id[b.book_id], chosen)][:limit]
    # As many as match (up to the limit), every one matching; exactly, the best of them: the scores of the
    # unfiltered ranking restricted to what matches (equal up to the ranking product's rounding, model/products.py,
    # where two books nearly tie at the k-th place).
    # The index is approximate: its answer is as long and as filtered.
    assert len(answer.books) == len(matching)
    assert all(_matches(by_id[b.book_id], chosen) for b in answer.books)
    if path == "exact":
        assert [b.score for b in answer.books] == pytest.approx([b.score for b in matching], abs=1e-2)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(user=st.integers(0, 150), limit=st.integers(1, 30), cap=st.integers(1, 3))
def test_the_author_cap_keeps_the_best_books_of_each_author(
    models: tuple[list[Book], dict[str, HybridModel]], user: int, limit: int, cap: int
) -> None:
    books, by_path = models
    model = by_path["exact"]
    answer = recommend_many(model, [Request(user, limit, max_per_author=cap)], explain=False)[0]
    everything = recommend_many(model, [Request(user, model.num_books)], explain=False)[0]
    authors = {b.book_id: author_key(b.authors) for b in books}
    expected: list[int] = []
    counts: dict[str, int] = {}
    for book in everything.books:
        author = authors[book.book_id]
        if counts.get(author, 0) < cap and len(expected) < limit:
            counts[author] = counts.get(author, 0) + 1
            expected.append(book.book_id)
    assert [b.book_id for b in answer.books] == expected


def test_hidden_books_are_in_no_answer_and_come_back(models: tuple[list[Book], dict[str, HybridModel]]) -> None:
    books, by_path = models
    model = by_path["exact"]
    first = recommend(model, 5, 10)
    hidden = [b.book_id for b in first.books[:3]]
    liked = similar_to(model, first.books[0].book_id, 10)
    assert liked is not None
    hidden += [b.book_id for b in liked[:2]]
    facts = BookFacts.of(books).with_books([dataclasses.replace(_book(books, b), available=False) for b in hidden])
    allowed = facts.over(model.catalogue.book_ids).allowed(Filters())
    again = recommend_many(model, [Request(5, 10, allowed=allowed)])[0]
    assert len(again.books) == 10 and not {b.book_id for b in again.books} & set(hidden)
    similar = similar_to(model, first.books[0].book_id, 10, allowed)
    assert similar is not None and not {b.book_id for b in similar} & set(hidden)
    popular = recommend_many(model, [Request(0, 400, allowed=allowed)])[0]
    assert len(popular.books) == 400 - len(hidden)
    back = facts.with_books([_book(books, b) for b in hidden])
    assert back.over(model.catalogue.book_ids).allowed(Filters()) is None


def _book(books: list[Book], book_id: int) -> Book:
    return next(b for b in books if b.book_id == book_id)


def _matches(book: Book, chosen: Filters) -> bool:
    if chosen.genres and not {g.casefold() for g in book.genres} & {g.casefold() for g in chosen.genres}:
        return False
    if book.book_id in chosen.exclude:
        return False
    year = book.published_year
    if chosen.min_year is not None and (year is None or year < chosen.min_year):
        return False
    return chosen.max_year is None or (year is not None and year <= chosen.max_year)


def test_facts_follow_changes_of_genre_and_year() -> None:
    books = [Book(1, "a", genres=("Fantasy",), published_year=1990), Book(2, "b", genres=("History",))]
    facts = BookFacts.of(books).with_books([Book(2, "b", genres=("fantasy",), published_year=2001)])
    aligned = facts.over(np.array([1, 2, 3], dtype=np.int32))  # 3: added after the facts were read
    assert aligned.allowed(Filters(genres=("FANTASY",))).tolist() == [True, True, False]  # type: ignore[union-attr]
    assert aligned.allowed(Filters(min_year=2000)).tolist() == [False, True, False]  # type: ignore[union-attr]
    assert aligned.allowed(Filters(exclude=(1,))).tolist() == [False, True, True]  # type: ignore[union-attr]
    # Facts read before any book was stored: every book of the catalogue is unknown to them, none hidden.
    none_yet = BookFacts.of([]).over(np.array([1, 2, 3], dtype=np.int32))
    assert none_yet.allowed(Filters()) is None
    assert none_yet.allowed(Filters(min_year=2000)).tolist() == [False, False, False]  # type: ignore[union-attr]
