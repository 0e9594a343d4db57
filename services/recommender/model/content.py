"""Content similarity: TF-IDF over each book's text, reduced to dense vectors, and user profiles built from the
books they liked."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer
from threadpoolctl import threadpool_limits

from recommender.model.dataset import Book

FloatArray = npt.NDArray[np.float32]

# Latent dimensions of the content vectors: a truncated SVD of the TF-IDF matrix (latent semantic analysis).
# Dense and small, a user's content scores are one matrix-vector product (about 50 us for 10,000 books, against
# 600 us for the sparse TF-IDF product), and related words share dimensions.
DIMENSIONS = 128


@dataclass(frozen=True)
class ContentModel:
    features: sp.csr_matrix  # books x terms, TF-IDF rows L2-normalised (catalogue order)
    vectors: FloatArray  # books x DIMENSIONS (or fewer), rows L2-normalised

    @property
    def num_books(self) -> int:
        return int(self.features.shape[0])

    @property
    def feature_dim(self) -> int:
        return int(self.features.shape[1])

    def profile(self, positions: npt.NDArray[np.int32], weights: FloatArray) -> FloatArray:
        """A user's profile: the `weights`-weighted sum of the vectors of the books at `positions`."""
        return np.asarray(weights.astype(np.float32) @ self.vectors[positions], dtype=np.float32)

    def scores(self, profiles: FloatArray) -> FloatArray:
        """Cosine similarity of every book (columns) to each profile (rows); a zero profile scores 0 everywhere."""
        norms = np.linalg.norm(profiles, axis=1, keepdims=True)
        unit = (profiles / np.where(norms > 0, norms, 1.0)).astype(np.float32)
        return np.asarray(unit @ self.vectors.T, dtype=np.float32)


def fit(books: list[Book], max_features: int, threads: int = 1) -> ContentModel:
    if not books:
        return ContentModel(sp.csr_matrix((0, 0), dtype=np.float32), np.zeros((0, 0), dtype=np.float32))
    vectorizer = TfidfVectorizer(
        max_features=max_features,
        stop_words="english",
        sublinear_tf=True,
        ngram_range=(1, 2),
        min_df=1,
        dtype=np.float32,
    )
    try:
        features = sp.csr_matrix(vectorizer.fit_transform([book.text() for book in books]), dtype=np.float32)
    except ValueError:  # every text empty or only stop words: no features, content scores are all zero
        features = sp.csr_matrix((len(books), 0), dtype=np.float32)
    return ContentModel(features, reduce(features, DIMENSIONS, threads))


def reduce(features: sp.csr_matrix, dimensions: int, threads: int = 1) -> FloatArray:
    """Rows of the TF-IDF matrix in `dimensions` latent dimensions (fewer when the matrix is smaller)."""
    rank = min(dimensions, features.shape[0] - 1, features.shape[1] - 1)
    if rank < 1:
        return np.asarray(features.todense(), dtype=np.float32)  # tiny: the exact vectors
    with threadpool_limits(threads, "blas"):
        reduced = TruncatedSVD(rank, algorithm="randomized", n_iter=5, random_state=0).fit_transform(features)
    vectors = np.asarray(reduced, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms > 0, norms, 1.0)).astype(np.float32)
