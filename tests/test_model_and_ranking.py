"""Unit tests of the model maths on small in-memory data."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from recommender.model.answers import Reader, Strategy
from recommender.model.cf import interaction_weights
from recommender.model.dataset import Book, Interaction, TrainingData
from recommender.model.fit import train
from recommender.model.growth import with_books
from recommender.model.hybrid import HybridModel
from recommender.model.params import ALSParams
from recommender.model.ranking import Mode
from recommender.model.readers import fold_in, reader_of
from recommender.model.recommend import query_for, recommend, recommend_many, top_books
from recommender.model.similar import similar_to, similar_to_many
from tests.support.data import BOOKS, PARAMS, interactions


@pytest.fixture(scope="module")
def model() -> HybridModel:
    return train(TrainingData.from_interactions(BOOKS, interactions()), PARAMS)


def test_counts_describe_the_matrix_and_catalogue(model: HybridModel) -> None:
    assert model.cf.num_users == 12
    assert model.cf.num_items == 20
    assert model.cf.nnz == len(interactions())
    assert model.content.num_books == 20
    assert 0 < model.content.feature_dim <= 100


def test_blend_is_alpha_weighted_sum_of_standardised_parts(model: HybridModel) -> None:
    result = recommend(model, 2, limit=20)
    assert result.strategy is Strategy.HYBRID
    for book in result.books:
        assert book.score == pytest.approx(0.6 * book.cf_score + 0.4 * book.content_score, abs=1e-5)
    scores = [b.score for b in result.books]
    assert scores == sorted(scores, reverse=True)
    # Each part is a z-score over the user's candidates: mean 0, standard deviation 1.
    for part in ([b.cf_score for b in result.books], [b.content_score for b in result.books]):
        assert np.mean(part) == pytest.approx(0.0, abs=1e-5) and np.std(part) == pytest.approx(1.0, abs=1e-4)


def test_ratings_become_weights_and_low_ratings_mean_disliked() -> None:
    weights = interaction_weights([np.nan, 0.0, 1.0, 2.5, 3.0, 4.0, 5.0])
    assert weights.tolist() == [1.0, -1.0, -1.0, -1.0, 1.0, 2.0, 3.0]
    assert interaction_weights([5.0], rating_scale=0.5).tolist() == [2.0]


def test_a_disliked_book_is_never_recommended_and_shapes_no_profile() -> None:
    rows = [*interactions(), Interaction(2, 12, 1.0)]  # user 2 hated a detective story
    model = train(TrainingData.from_interactions(BOOKS, rows), PARAMS)
    assert 12 not in [b.book_id for b in recommend(model, 2, limit=20).books]
    fresh = recommend(model, 999, limit=19, events=[(12, 1.0), (3, 5.0)])
    assert 12 not in [b.book_id for b in fresh.books]
    # The first two stand apart; the next three tie exactly, and which of them comes third is float rounding.
    assert [b.book_id for b in fresh.books][:2] == [b.book_id for b in recommend(model, 999, 2, [(3, 5.0)]).books]


def test_a_popularity_prior_steers_users_with_little_history() -> None:
    rows = [*interactions(), *(Interaction(u, 20, 5.0) for u in range(1, 7))]  # book 20: popular with everybody
    rows.append(Interaction(50, 1, 5.0))  # user 50 liked one dragon book
    data = TrainingData.from_interactions(BOOKS, rows)
    plain = train(data, PARAMS)
    prior = train(data, dataclasses.replace(PARAMS, popularity_prior=2.0))
    assert recommend(plain, 50, 1).books[0].book_id != 20
    assert recommend(prior, 50, 1).books[0].book_id == 20
    # A user with a longer history keeps their own top books.
    assert {b.book_id for b in recommend(prior, 8, 3).books} == {b.book_id for b in recommend(plain, 8, 3).books}


def test_alpha_one_ranks_by_cf_and_zero_by_content(model: HybridModel) -> None:
    cf_only = model.with_blend(alpha=1.0)
    content_only = model.with_blend(alpha=0.0)
    for book in recommend(cf_only, 2, 20).books:
        assert book.score == pytest.approx(book.cf_score)
    for book in recommend(content_only, 2, 20).books:
        assert book.score == pytest.approx(book.content_score)


def test_known_user_gets_own_taste_and_never_books_already_read(model: HybridModel) -> None:
    read = {i.book_id for i in interactions() if i.user_id == 2}
    result = recommend(model, 2, limit=3)
    ids = [b.book_id for b in result.books]
    assert not read & set(ids)
    assert all(book_id <= 10 for book_id in ids), ids  # the dragon books user 2 has not read


def test_limit_beyond_candidates_returns_every_unread_book(model: HybridModel) -> None:
    read = {i.book_id for i in interactions() if i.user_id == 1}
    result = recommend(model, 1, limit=100)
    assert sorted(b.book_id for b in result.books) == sorted(set(range(1, 21)) - read)


def test_unknown_user_without_history_gets_popular_books(model: HybridModel) -> None:
    result = recommend(model, 999, limit=5)
    assert result.strategy is Strategy.POPULAR
    counts = np.bincount([i.book_id for i in interactions()], minlength=21)
    expected_top = max(range(1, 21), key=lambda b: (counts[b], -b))
    assert result.books[0].book_id == expected_top
    popularity = [b.score for b in result.books]
    assert popularity == sorted(popularity, reverse=True) and popularity[0] == 1.0


def test_unknown_user_with_fresh_history_gets_folded_in_cf_scores(model: HybridModel) -> None:
    result = recommend(model, 999, limit=5, events=[(12, 5.0), (13, 4.0)])
    assert result.strategy is Strategy.HYBRID
    ids = [b.book_id for b in result.books]
    assert 12 not in ids and 13 not in ids
    assert all(11 <= book_id <= 20 for book_id in ids), ids
    assert any(b.cf_score != 0.0 for b in result.books)


def test_fresh_history_of_books_without_cf_factors_gets_content_answers() -> None:
    model = train(TrainingData.from_interactions(BOOKS, interactions()[:5]), PARAMS)  # CF knows a few books
    read = [
        b
        for b in range(11, 21)
        if model.cf.item_ids.searchsorted(b) >= model.cf.num_items
        or model.cf.item_ids[model.cf.item_ids.searchsorted(b)] != b
    ][:2]
    result = recommend(model, 999, limit=5, events=[(b, 5.0) for b in read])
    assert result.strategy is Strategy.CONTENT
    assert all(b.cf_score == 0.0 and b.score == b.content_score for b in result.books)
    assert all(11 <= b.book_id <= 20 and b.book_id not in read for b in result.books)


def test_folding_in_a_users_own_history_reproduces_their_factors(model: HybridModel) -> None:
    row = model.cf.user_row(2)
    assert row is not None
    positions, weights = model.cf.interactions(row)
    folded = fold_in(model, model.cf_positions[positions], weights)
    assert folded is not None
    fitted = model.cf.user_factors[row]
    assert float(folded @ fitted / np.linalg.norm(folded) / np.linalg.norm(fitted)) > 0.95
    # Read back unchanged from the database, the history keeps the trained factors.
    history = [(int(model.catalogue.book_ids[model.cf_positions[p]]), 5.0) for p in positions]
    assert reader_of(model, 2, history).cf_row == row
    assert reader_of(model, 2, [*history, (20, None)]).factors is not None


def test_books_read_after_training_never_come_back(model: HybridModel) -> None:
    before = [b.book_id for b in recommend(model, 1, limit=3).books]
    row = model.cf.user_row(1)
    assert row is not None
    positions, _weights = model.cf.interactions(row)
    history = [(int(model.catalogue.book_ids[model.cf_positions[p]]), None) for p in positions]
    after = recommend(model, 1, limit=10, events=[*history, *((b, 5.0) for b in before)])
    assert not set(before) & {b.book_id for b in after.books}


def test_similar_books_share_the_taste_and_leave_out_the_book(model: HybridModel) -> None:
    similar = similar_to(model, 3, limit=5)
    assert similar is not None and len(similar) == 5
    assert all(1 <= b.book_id <= 10 and b.book_id != 3 for b in similar), similar
    scores = [b.score for b in similar]
    assert scores == sorted(scores, reverse=True)
    assert similar_to(model, 12345, limit=5) is None


def test_books_added_after_training_get_content_scores_at_once(model: HybridModel) -> None:
    new = Book(25, "Dragon hoard", "C. Wyrm", "dragon magic kingdom quest", ("fantasy",))
    extended = with_books(model, [new, dataclasses.replace(BOOKS[0], title="Dragon quest one")])
    assert extended.num_books == model.num_books + 1
    assert list(extended.catalogue.book_ids) == sorted(extended.catalogue.book_ids)
    assert extended.catalogue.titles[0] == "Dragon quest one"
    similar = similar_to(extended, 25, limit=5)
    assert similar is not None and all(1 <= b.book_id <= 10 for b in similar), similar
    assert 25 in [b.book_id for b in recommend(extended, 2, limit=extended.num_books).books]
    assert np.allclose(extended.content.vectors[:20], model.content.vectors, atol=1e-6)


def test_fresh_history_of_books_outside_the_catalogue_falls_back_to_popular(model: HybridModel) -> None:
    assert recommend(model, 999, limit=3, events=[(12345, 1.0)]).strategy is Strategy.POPULAR


def test_training_without_interactions_serves_popular_and_content() -> None:
    model = train(TrainingData.from_interactions(BOOKS, []), PARAMS)
    assert model.cf.num_users == 0 and model.cf.nnz == 0
    assert len(recommend(model, 1, 5).books) == 5
    assert recommend(model, 1, 5, [(1, 1.0)]).strategy is Strategy.CONTENT


def test_interactions_with_books_outside_the_catalogue_are_left_out() -> None:
    data = TrainingData.from_interactions(BOOKS, [*interactions(), Interaction(1, 777, 5.0)])
    model = train(data, PARAMS)
    assert model.cf.num_items == 20


def test_training_stops_when_asked() -> None:
    from recommender.model.fit import TrainingCancelled

    calls = 0

    def stop_on_the_third_check() -> bool:
        nonlocal calls
        calls += 1
        return calls >= 3  # after TF-IDF, inside the ALS iterations

    with pytest.raises(TrainingCancelled):
        train(TrainingData.from_interactions(BOOKS, interactions()), PARAMS, stop_on_the_third_check)
    assert calls == 3


def test_the_ranking_is_the_blend_of_z_scores_over_the_candidates() -> None:
    """The one query vector reproduces the ranking by its definition, computed the long way for every reader:
    each part's raw scores over the whole catalogue, standardised over the reader's candidates (float64), blended,
    popularity breaking ties. A catalogue where some books have no CF factors (they score 0 on CF)."""
    from recommender.storage import demo

    catalogue = demo.generate(3, 900, 80, 1500)
    model = train(
        TrainingData.from_interactions(catalogue.books, catalogue.interactions),
        dataclasses.replace(PARAMS, popularity_prior=10.0, cf_prior=3.0, tfidf_max_features=2000),
    )
    assert len(model.cf_positions) < model.num_books  # books nobody read are part of it
    fresh = [(5, 5.0), (17, None), (40, 2.0)]
    for user, events in [*((u, None) for u in range(1, 81)), (10_000, fresh)]:
        served = recommend(model, user, 10, events)
        reader = reader_of(model, user, events)
        expected, blended = long_way(model, reader)
        positions = model.catalogue.positions([b.book_id for b in served.books])
        assert [b.score for b in served.books] == pytest.approx(blended[positions].tolist(), abs=1e-6), user
        # The same books up to near-ties that the product's rounding (model/products.py) may order either way.
        assert [b.score for b in served.books] == pytest.approx(blended[expected].tolist(), abs=NEAR_TIE), user
        swapped = set(model.catalogue.book_ids[expected].tolist()) ^ {b.book_id for b in served.books}
        assert len(swapped) <= 2, user


# How far apart two blended scores may be and still be ordered either way by the rounded product.
NEAR_TIE = 2e-3


def long_way(model: HybridModel, reader: Reader) -> tuple[np.ndarray, np.ndarray]:
    """The 10 best books and every book's blended score by the ranking's definition, one reader, no shortcuts."""
    seen = np.unique(reader.seen)
    candidates = np.setdiff1d(np.arange(model.num_books), seen)
    user = reader.user_vector(model.cf)
    cf = np.zeros(model.num_books)
    if user is not None:
        cf[model.cf_positions] = model.cf.item_factors.astype(np.float64) @ user.astype(np.float64)
    profile = model.content.profile(reader.seen, np.maximum(reader.weights, 0.0)).astype(np.float64)
    content = model.content.vectors.astype(np.float64) @ (profile / (np.linalg.norm(profile) or 1.0))
    weights = model.blend.weights(reader.liked, user is not None)

    def z(values: np.ndarray) -> np.ndarray:
        spread = values[candidates].std()
        return (values - values[candidates].mean()) / spread if spread > 1e-9 else np.zeros_like(values)

    popularity = model.popularity.astype(np.float64)
    blended = float(weights.cf) * z(cf) + float(weights.content) * z(content) + float(weights.popular) * z(popularity)
    order = sorted(candidates, key=lambda p: (-(blended[p] + 1e-6 * popularity[p]), p))[:10]
    return np.array(order), blended


def test_a_reader_is_served_what_evaluation_scores_for_them() -> None:
    """Serving and evaluation call the same ranking: the list a reader gets is the list evaluation measures."""
    from recommender.storage import demo

    catalogue = demo.generate(4, 300, 80, 2500)
    model = train(TrainingData.from_interactions(catalogue.books, catalogue.interactions), PARAMS)
    users = [int(u) for u in model.cf.user_ids] + [999_999]
    evaluated = top_books(model, users, 10, [Mode.HYBRID])[Mode.HYBRID]
    for user, books in zip(users, evaluated, strict=True):
        assert [b.book_id for b in recommend(model, user, 10).books] == books.tolist()


def test_each_recommendation_says_which_of_the_readers_books_it_comes_from() -> None:
    from implicit.cpu.als import AlternatingLeastSquares

    from recommender.storage import demo

    catalogue = demo.generate(5, 300, 80, 2500)
    model = train(
        TrainingData.from_interactions(catalogue.books, catalogue.interactions),
        dataclasses.replace(PARAMS, als=ALSParams(factors=16, regularization=0.1, confidence=2.0)),
    )
    user = int(model.cf.user_ids[3])
    answer = recommend(model, user, 5)
    items, weights = model.cf.interactions(3)
    read = set(model.catalogue.book_ids[model.cf_positions[items]].tolist())
    for book in answer.books:
        assert 1 <= len(book.because) <= 3
        assert {r.book_id for r in book.because} <= read and all(r.part in ("cf", "content") for r in book.because)
        shares = [r.share for r in book.because]
        assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1 + 1e-6
    # The CF part is implicit's own explanation of ALS.
    solver = AlternatingLeastSquares(factors=16, regularization=0.1, alpha=2.0)
    solver.item_factors = model.cf.item_factors
    target = int(model.cf.item_ids.tolist().index(answer.books[0].book_id))
    row = model.cf.user_items[3]
    _score, expected, _weights = solver.explain(0, row, target, N=len(items))
    mine = model.cf.explain(items, weights, np.array([target], dtype=np.int32))[0]
    for item, contribution in expected:
        assert mine[list(items).index(item)] == pytest.approx(contribution, rel=1e-3, abs=1e-5)
    assert recommend(model, user, 5, explain=False).books[0].because == ()


def test_a_batch_answers_each_request_exactly_as_it_would_be_answered_alone() -> None:
    from recommender.model.answers import Request
    from recommender.storage import demo

    catalogue = demo.generate(11, 400, 120, 4000)
    model = train(
        TrainingData.from_interactions(catalogue.books, catalogue.interactions),
        dataclasses.replace(PARAMS, als=ALSParams(factors=16), popularity_prior=2.0, cf_prior=3.0),
    )
    requests = [Request(int(u), 10) for u in model.cf.user_ids[:40]]
    requests += [
        Request(10_000, 5),  # unknown: popular books
        Request(10_001, 7, [(3, 5.0), (40, None), (77, 2.0)]),  # new, with a history: folded in
        Request(int(model.cf.user_ids[0]), 3, [(b, 4.0) for b in (5, 6, 7, 8)]),  # newer than the model
        Request(int(model.cf.user_ids[1]), 100),
    ]
    for size in (1, 2, 3, 16, len(requests)):
        batched = [
            answer
            for start in range(0, len(requests), size)
            for answer in recommend_many(model, requests[start : start + size])
        ]
        assert batched == [recommend(model, r.user_id, r.limit, r.events) for r in requests], size
    similar = [(int(b), 5) for b in model.catalogue.book_ids[:30]] + [(999_999, 5)]
    assert similar_to_many(model, similar) == [similar_to(model, book, limit) for book, limit in similar]


@pytest.mark.parametrize("history", [5, 60])
def test_the_cf_explanation_is_implicits_for_a_history_shorter_or_longer_than_the_factors(history: int) -> None:
    """Shorter than the factors, the explanation is solved through the model's own inverse (Woodbury: no cube of
    the factors per request); longer, directly: both are implicit's."""
    import scipy.sparse as sp
    from implicit.cpu.als import AlternatingLeastSquares

    from recommender.storage import demo

    catalogue = demo.generate(5, 300, 80, 2500)
    model = train(
        TrainingData.from_interactions(catalogue.books, catalogue.interactions),
        dataclasses.replace(PARAMS, als=ALSParams(factors=32, regularization=0.1, confidence=2.0)),
    )
    rng = np.random.default_rng(history)
    items = np.sort(rng.choice(model.cf.num_items, size=history, replace=False)).astype(np.int32)
    weights = rng.choice([-1.0, 1.0, 2.0, 3.0], size=history).astype(np.float32)
    targets = np.setdiff1d(np.arange(model.cf.num_items), items)[:4].astype(np.int32)
    mine = model.cf.explain(items, weights, targets)
    solver = AlternatingLeastSquares(factors=32, regularization=0.1, alpha=2.0)
    solver.item_factors = model.cf.item_factors
    row = sp.csr_matrix((weights, (np.zeros(history, dtype=np.int32), items)), shape=(1, model.cf.num_items))
    for t, target in enumerate(targets):
        _score, expected, _weights = solver.explain(0, row, int(target), N=history)
        for item, contribution in expected:
            assert mine[t, list(items).index(item)] == pytest.approx(contribution, rel=1e-3, abs=1e-5)


def test_the_shortlist_answers_exactly_as_scoring_every_book_would() -> None:
    """The float32 product only shortlists: the answer is the best books by their exact scores over the whole
    catalogue, with a filter too, for readers CF knows, readers it does not and a history newer than the model."""
    from recommender.model.ranking import scored
    from recommender.model.shortlist import ranked
    from recommender.storage import demo

    catalogue = demo.generate(3, 500, 150, 5000)
    model = train(
        TrainingData.from_interactions(catalogue.books, catalogue.interactions),
        dataclasses.replace(PARAMS, als=ALSParams(factors=24)),
    )
    readers = [reader_of(model, int(u)) for u in model.cf.user_ids[:60]]
    readers.append(reader_of(model, 10_001, [(3, 5.0), (40, None), (77, 2.0)]))
    half = np.random.default_rng(3).random(model.num_books) < 0.5
    for mask in (None, half):
        for reader in readers:
            q = query_for(model, reader)
            allowed = np.ones(model.num_books, dtype=bool) if mask is None else mask.copy()
            allowed[q.seen] = False
            every = scored(model.rows, q, np.flatnonzero(allowed).astype(np.int32))
            answer = ranked(model.rows, [q], [10], [mask])[0]
            assert answer.positions.tolist() == every.positions[:10].tolist()
            assert answer.scores.tolist() == every.scores[:10].tolist()


def test_a_reblend_shares_the_versions_rows_and_other_fits_get_their_own(model: HybridModel) -> None:
    rows = model.rows
    blended = model.with_blend(alpha=0.2)
    assert blended.rows is rows and blended.alpha == 0.2 and model.alpha != 0.2
    other = dataclasses.replace(model.cf, item_factors=model.cf.item_factors * 2)
    refit = dataclasses.replace(model, cf=other)
    assert refit.rows is not rows
    assert np.allclose(refit.rows.item_factors, 2 * rows.item_factors)
    assert model.rows is not refit.rows and np.allclose(model.rows.item_factors, rows.item_factors)
