"""Content similarity: TF-IDF over each book's text, reduced to dense vectors, and user profiles built from the
books they liked."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from recommender.model.dataset import Book

if TYPE_CHECKING:
    from sklearn.feature_extraction.text import TfidfVectorizer

FloatArray = npt.NDArray[np.float32]

# Latent dimensions of the content vectors: a truncated SVD of the TF-IDF matrix (latent semantic analysis).
# Dense and small, a user's content scores are one matrix-vector product (about 50 us for 10,000 books, against
# 600 us for the sparse TF-IDF product), and related words share dimensions.
DIMENSIONS = 128


@dataclass(frozen=True)
class TextEncoder:
    """What turns the text of a book added after training into its TF-IDF row and content vector, without a refit:
    the fitted vocabulary and IDF weights, and the SVD's components."""

    vocabulary: list[str]  # column order of the TF-IDF matrix
    idf: FloatArray
    components: FloatArray | None  # latent dimensions x terms; None where the vectors are the TF-IDF rows

    def encode(self, texts: list[str]) -> tuple[sp.csr_matrix, FloatArray]:
        if not self.vocabulary:
            width = 0 if self.components is None else self.components.shape[0]
            return sp.csr_matrix((len(texts), 0), dtype=np.float32), np.zeros((len(texts), width), dtype=np.float32)
        vectorizer = _vectorizer(vocabulary=self.vocabulary)
        vectorizer.idf_ = self.idf
        features = sp.csr_matrix(vectorizer.transform(texts), dtype=np.float32)
        dense = features @ self.components.T if self.components is not None else features.toarray()
        return features, _unit_rows(np.asarray(dense, dtype=np.float32))


@dataclass(frozen=True)
class ContentModel:
    features: sp.csr_matrix  # books x terms, TF-IDF rows L2-normalised (catalogue order)
    vectors: FloatArray  # books x DIMENSIONS (or fewer), rows L2-normalised
    encoder: TextEncoder | None = None  # None for versions saved before books could be added between retrains

    @property
    def num_books(self) -> int:
        return int(self.features.shape[0])

    @property
    def feature_dim(self) -> int:
        return int(self.features.shape[1])

    def profile(self, positions: npt.NDArray[np.int32], weights: FloatArray) -> FloatArray:
        """A user's profile: the `weights`-weighted sum of the vectors of the books at `positions`."""
        return np.asarray(weights.astype(np.float32) @ self.vectors[positions], dtype=np.float32)


def _vectorizer(**options: object) -> TfidfVectorizer:
    # scikit-learn is imported when a text is encoded, not when a model loads: a serving process starts in a
    # second less (it encodes only books added between retrains).
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(
        stop_words="english", sublinear_tf=True, ngram_range=(1, 2), min_df=1, dtype=np.float32, **options
    )


def fit(books: list[Book], max_features: int, threads: int = 1) -> ContentModel:
    if not books:
        return ContentModel(sp.csr_matrix((0, 0), dtype=np.float32), np.zeros((0, 0), dtype=np.float32))
    vectorizer = _vectorizer(max_features=max_features)
    try:
        features = sp.csr_matrix(vectorizer.fit_transform([book.text() for book in books]), dtype=np.float32)
    except ValueError:  # every text empty or only stop words: no features, content scores are all zero
        features = sp.csr_matrix((len(books), 0), dtype=np.float32)
        return ContentModel(
            features, reduce(features, DIMENSIONS, threads), TextEncoder([], np.zeros(0, dtype=np.float32), None)
        )
    vectors, components = _svd(features, DIMENSIONS, threads)
    vocabulary = [str(term) for term in vectorizer.get_feature_names_out()]
    encoder = TextEncoder(vocabulary, vectorizer.idf_.astype(np.float32), components)
    return ContentModel(features, vectors, encoder)


def reduce(features: sp.csr_matrix, dimensions: int, threads: int = 1) -> FloatArray:
    """Rows of the TF-IDF matrix in `dimensions` latent dimensions (fewer when the matrix is smaller)."""
    return _svd(features, dimensions, threads)[0]


def _svd(features: sp.csr_matrix, dimensions: int, threads: int = 1) -> tuple[FloatArray, FloatArray | None]:
    """The reduced rows, and the components that reduce a new row the same way (None: the rows are exact)."""
    rank = min(dimensions, features.shape[0] - 1, features.shape[1] - 1)
    if rank < 1:
        return np.asarray(features.todense(), dtype=np.float32), None  # tiny: the exact vectors
    from sklearn.decomposition import TruncatedSVD

    with threadpool_limits(threads, "blas"):
        svd = TruncatedSVD(rank, algorithm="randomized", n_iter=5, random_state=0)
        reduced = svd.fit_transform(features)
    return _unit_rows(np.asarray(reduced, dtype=np.float32)), svd.components_.astype(np.float32)


def _unit_rows(vectors: FloatArray) -> FloatArray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms > 0, norms, 1.0)).astype(np.float32)
