"""Small data sets for model tests: two clear tastes (books 1-10 about dragons, 11-20 about detectives; users 1-6
read dragons, 7-12 detectives)."""

from __future__ import annotations

from recommender.model.dataset import Book, Interaction
from recommender.model.params import ALSParams, SignalWeights, TrainingParams

BOOKS = [
    Book(i, f"Dragon quest {i}", "A. Fantasist", "dragon sword kingdom magic quest", ("fantasy",)) for i in range(1, 11)
] + [
    Book(i, f"Murder case {i}", "B. Sleuth", "detective murder clue alibi inspector", ("mystery",))
    for i in range(11, 21)
]


def interactions() -> list[Interaction]:
    rows = []
    for user in range(1, 7):
        rows += [Interaction(user, book, 5.0) for book in range(1, 11) if (book + user) % 3 != 0]
    for user in range(7, 13):
        rows += [Interaction(user, book, 5.0) for book in range(11, 21) if (book + user) % 3 != 0]
    rows += [Interaction(1, 11, None)]  # one click outside the user's taste
    return rows


# Few factors: with as many factors as users, ALS would memorise the matrix instead of generalising.
# No popularity prior and no book signals here: these tests look at the blend itself (the prior and the signals
# have their own tests).
PARAMS = TrainingParams(
    als=ALSParams(factors=4, regularization=0.5),
    tfidf_max_features=100,
    alpha=0.6,
    popularity_prior=0.0,
    cf_prior=0.0,
    signals=SignalWeights(),
)
