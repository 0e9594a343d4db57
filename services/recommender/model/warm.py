"""Each answer path of a version run once, so the first real request after a swap pays no first-call costs."""

from __future__ import annotations

from recommender.model.hybrid import HybridModel
from recommender.model.recommend import recommend
from recommender.model.similar import similar_to


def warm(model: HybridModel) -> None:
    recommend(model, user_id=0, limit=1)
    if model.cf.num_users:
        user_id = int(model.cf.user_ids[0])
        recommend(model, user_id=user_id, limit=1)
        positions, _weights = model.cf.interactions(0)
        books = model.catalogue.book_ids[model.cf_positions[positions]]
        recommend(model, user_id=user_id, limit=1, events=[(int(b), None) for b in books])  # the fold-in
    if model.num_books:
        similar_to(model, int(model.catalogue.book_ids[0]), limit=1)
