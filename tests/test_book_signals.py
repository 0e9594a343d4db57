"""A reader's book signals (model/signals.py): series read from titles, the authors a reader comes back to, the
next volume of a series they started, and the order inside a series, on small in-memory data."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recommender.model.answers import Request
from recommender.model.catalogue import Catalogue
from recommender.model.dataset import Book, Interaction, TrainingData
from recommender.model.fit import train
from recommender.model.hybrid import HybridModel
from recommender.model.params import ALSParams, SignalWeights, TrainingParams
from recommender.model.readers import reader_of
from recommender.model.recommend import recommend, recommend_many
from recommender.model.series import series_in_title
from recommender.model.signals import MOST_AUTHORS, BookSignals
from recommender.settings import Settings
from recommender.storage import demo
from recommender.training.config import training_params, tuning_policy
from tests.support.data import BOOKS, PARAMS, interactions

VOLUMES = 6
SAGA = [
    Book(100 + v, f"Saga book {v} (The Saga, #{v})", "C. Writer", "saga ship star voyage crew", ("scifi",))
    for v in range(1, VOLUMES + 1)
]
OTHERS = [Book(200 + i, f"Star tale {i}", "D. Other", "ship star voyage planet", ("scifi",)) for i in range(8)]
SIGNALS = SignalWeights(author=0.5, next=0.5, held=0.5, series_order=True)


def _interactions() -> list[Interaction]:
    rows = interactions()
    for user in range(20, 30):  # readers of the saga in order, as far as they got
        rows += [Interaction(user, 100 + v, 5.0) for v in range(1, 2 + user % 3)]
        rows += [Interaction(user, 200 + (user + i) % 8, 4.0) for i in range(3)]
    for user in range(30, 70):  # the last volumes, read without the others: what CF and popularity favour
        rows += [Interaction(user, 100 + v, 5.0) for v in (1, VOLUMES - 1, VOLUMES)]
        rows += [Interaction(user, 200 + (user + i) % 8, 4.0) for i in range(2)]
    return rows


@pytest.fixture(scope="module")
def model() -> HybridModel:
    data = TrainingData.from_interactions([*BOOKS, *SAGA, *OTHERS], _interactions())
    return train(data, dataclasses.replace(PARAMS, signals=SIGNALS))


@pytest.mark.parametrize(
    ("title", "found"),
    [
        ("The Hunger Games (The Hunger Games, #1)", ("The Hunger Games", 1.0)),
        ("A Dance with Dragons (A Song of Ice and Fire #5, Part 1 of 2)", ("A Song of Ice and Fire", 5.0)),
        ("The Assassin's Blade (Throne of Glass, #0.5)", ("Throne of Glass", 0.5)),
        ("The Twilight Saga Complete Collection (Twilight, #1-4)", None),  # a span: an omnibus, no one volume
        ("Nancy Drew: #1-64", None),
        ("Saga #1", None),
        ("Dune", None),
    ],
)
def test_a_series_is_read_from_the_common_title_form(title: str, found: tuple[str, float] | None) -> None:
    assert series_in_title(title) == found


def test_authors_split_on_commas_and_series_list_their_volumes_in_order() -> None:
    books = [
        Book(1, "B (S, #2)", "X, Y"),
        Book(2, "A (S, #1)", "X"),
        Book(3, "C", "Z", series="s ", series_position=3),  # stated, not in the title
        Book(4, "D (Other, #1)", "y", series="S", series_position=0.5),  # what the catalogue states wins
    ]
    catalogue = Catalogue.from_books(books)
    assert catalogue.series == [("S", 2.0), ("S", 1.0), ("s", 3.0), ("S", 0.5)]
    signals = BookSignals.of(catalogue.series, catalogue.authors)
    assert signals.author_names == ["X", "Y", "Z"]
    assert signals.book_authors[3].indices.tolist() == [1]  # "y" is Y
    assert signals.series_books[0].indices.tolist() == [3, 1, 0, 2]  # "S", "s ": one series, by volume
    assert BookSignals.of([None, None], ["X", "Y"]).empty


def test_the_next_volume_of_a_started_series_is_recommended_before_the_later_ones(model: HybridModel) -> None:
    for read in range(1, VOLUMES - 1):
        events = [(100 + v, 5.0) for v in range(1, read + 1)]
        books = [b.book_id for b in recommend(model, 10**6, 10, events).books]
        assert 100 + read + 1 in books, read
        later = [books.index(b) for b in books if b > 100 + read + 1 and b < 100 + VOLUMES + 1]
        assert all(i > books.index(100 + read + 1) for i in later), (read, books)


def test_books_by_an_author_the_reader_liked_rise_with_the_author_signal(model: HybridModel) -> None:
    events = [(200 + i, 5.0) for i in range(3)]  # three books by D. Other
    plain = [b.book_id for b in recommend(model.with_signals(SignalWeights()), 10**6, 20, events).books]
    signalled = [b.book_id for b in recommend(model.with_signals(SignalWeights(author=2.0)), 10**6, 20, events).books]
    rank = {b: i for i, b in enumerate(signalled)}
    by_other = [b for b in plain if 200 <= b < 208]
    assert by_other and all(rank[b] <= plain.index(b) for b in by_other)
    assert sum(rank[b] for b in by_other) < sum(plain.index(b) for b in by_other)


def test_a_catalogue_without_series_or_shared_authors_ranks_as_without_signals() -> None:
    books = [dataclasses.replace(b, authors=f"Author {b.book_id}") for b in BOOKS]
    data = TrainingData.from_interactions(books, interactions())
    signalled = train(data, dataclasses.replace(PARAMS, signals=SIGNALS))
    assert signalled.signals.empty
    plain = signalled.with_signals(SignalWeights())
    for user in range(1, 13):
        assert recommend(signalled, user, 10) == recommend(plain, user, 10)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    read=st.integers(1, VOLUMES - 2),
    others=st.lists(st.sampled_from([b.book_id for b in [*BOOKS, *OTHERS]]), max_size=6, unique=True),
    limit=st.integers(1, 25),
    cap=st.one_of(st.none(), st.integers(1, 3)),
    hidden=st.lists(st.sampled_from([b.book_id for b in [*BOOKS, *OTHERS]]), max_size=10, unique=True),
    weights=st.tuples(*(st.sampled_from([0.0, 0.25, 1.0, 3.0]),) * 3),
)
def test_no_answer_ranks_a_later_volume_above_the_next_one(
    model: HybridModel,
    read: int,
    others: list[int],
    limit: int,
    cap: int | None,
    hidden: list[int],
    weights: tuple[float, float, float],
) -> None:
    """A reader with volumes 1..n and none after: volume n+2 never above n+1, whatever the signals' weights, with
    filters (the answer holds only allowed books) and the author cap (at most `cap` of one author) holding."""
    assert_in_order(model.with_signals(SignalWeights(*weights, series_order=True)), read, others, limit, cap, hidden)


def assert_in_order(
    version: HybridModel, read: int, others: list[int], limit: int, cap: int | None, hidden: list[int]
) -> None:
    """For a reader of the saga's volumes 1..`read` and the `others`: volume n+2 never above n+1, no `hidden` book,
    no book twice, at most `cap` books of one author."""
    events = [(100 + v, 5.0) for v in range(1, read + 1)] + [(b, 4.0) for b in others]
    allowed = np.ones(version.num_books, dtype=bool)
    allowed[version.catalogue.positions(hidden)] = False
    answer = recommend_many(version, [Request(10**6, limit, events, allowed, cap)], explain=False)[0]
    books = [b.book_id for b in answer.books]
    following, after = 100 + read + 1, 100 + read + 2
    if after in books:
        assert following in books and books.index(following) < books.index(after), books
    assert not set(books) & set(hidden)
    assert len(books) == len(set(books))
    if cap is not None:
        authors = [b.authors for b in answer.books]
        assert max(authors.count(a) for a in authors) <= cap


def test_book_signals_off_trains_the_blend_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECOMMENDER_BOOK_SIGNALS", "off")
    off = Settings()
    assert training_params(off).signals.off and not tuning_policy(off).book_signals
    monkeypatch.setenv("RECOMMENDER_BOOK_SIGNALS", "auto")
    assert not training_params(Settings()).signals.off and tuning_policy(Settings()).book_signals


def test_a_version_stored_before_book_signals_loads_without_them() -> None:
    stored = {k: v for k, v in TrainingParams().as_dict().items() if "weight" not in k and k != "series_order"}
    assert TrainingParams().with_values(stored).signals.off
    assert TrainingParams().with_values(TrainingParams().as_dict()).signals == TrainingParams().signals


def test_because_says_what_the_signals_say_with_the_readers_book_behind_it(model: HybridModel) -> None:
    events = [(101, 5.0), (102, 5.0)]
    answer = {b.book_id: b for b in recommend(model, 10**6, 10, events).books}
    said = [r for r in answer[103].because if r.part == "series"]
    assert [(r.book_id, r.text) for r in said] == [(102, "next in The Saga after #2")]
    assert 0 < said[0].share <= 1
    by_author = [r for b in answer.values() for r in b.because if r.part == "author"]
    assert by_author and all(r.text == "more by C. Writer, 2 of whose books you read" for r in by_author)
    assert all(r.book_id in (101, 102) for r in by_author)
    plain = recommend(model.with_signals(SignalWeights()), 10**6, 10, events)
    assert all(r.part in ("cf", "content") and not r.text for b in plain.books for r in b.because)


def test_an_answer_is_the_whole_rankings_head_for_readers_of_many_authors() -> None:
    """A book's author signal comes only from the reader's MOST_AUTHORS most-read authors, whose books all join the
    candidates: an answer of eight books of a genre is the whole ranking's first eight of it, however many authors
    the reader read (a book of a 21st author, far down the blend, once rose into the whole ranking's head but could
    not be raised into the genre's answer)."""
    books = demo.generate(3, 400, 150, 4000)
    params = TrainingParams(als=ALSParams(factors=16, iterations=6))  # the default signals: author 1
    model = train(TrainingData.from_interactions(books.books, books.interactions), params)
    genres = {b.book_id: b.genres for b in books.books}
    many = 0
    for user in [int(u) for u in model.cf.user_ids]:
        many += len(np.unique(model.author_codes[reader_of(model, user).seen])) > MOST_AUTHORS
        whole = recommend_many(model, [Request(user, model.num_books)], explain=False)[0].books
        for genre in sorted({g for b in books.books for g in b.genres}):
            allowed = np.array([genre in genres[int(i)] for i in model.catalogue.book_ids])
            answer = recommend_many(model, [Request(user, 8, allowed=allowed)], explain=False)[0].books
            assert answer == [b for b in whole if genre in genres[b.book_id]][:8], (user, genre)
    assert many > 10  # readers the rule is about
