"""Content similarity: TF-IDF over each book's text, and user profiles built from the books they read."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer

from recommender.model.dataset import Book

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class ContentModel:
    features: sp.csr_matrix  # books x terms, rows L2-normalised (catalogue order)

    @property
    def num_books(self) -> int:
        return int(self.features.shape[0])

    @property
    def feature_dim(self) -> int:
        return int(self.features.shape[1])

    def scores_for_profiles(self, weights: sp.csr_matrix) -> FloatArray:
        """Cosine similarity of every book to each row's profile: the `weights`-weighted sum of the books' vectors
        (rows: users, columns: catalogue books). A row without weight scores 0 everywhere."""
        # Dense profiles keep both products sparse x dense, several times faster than sparse x sparse.
        profiles = np.asarray((weights @ self.features).todense(), dtype=np.float32)
        norms = np.linalg.norm(profiles, axis=1, keepdims=True)
        profiles /= np.where(norms > 0, norms, 1.0)
        return np.asarray(self.features @ profiles.T, dtype=np.float32).T


def fit(books: list[Book], max_features: int) -> ContentModel:
    if not books:
        return ContentModel(sp.csr_matrix((0, 0), dtype=np.float32))
    vectorizer = TfidfVectorizer(
        max_features=max_features,
        stop_words="english",
        sublinear_tf=True,
        ngram_range=(1, 2),
        min_df=1,
        dtype=np.float32,
    )
    try:
        features = vectorizer.fit_transform([book.text() for book in books])
    except ValueError:  # every text empty or only stop words: no features, content scores are all zero
        features = sp.csr_matrix((len(books), 0), dtype=np.float32)
    return ContentModel(sp.csr_matrix(features, dtype=np.float32))
