"""Collaborative filtering: implicit-feedback ALS on the user x book confidence matrix."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import numpy.typing as npt
import scipy.linalg.lapack
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from threadpoolctl import threadpool_limits

from recommender.model.dataset import TrainingData
from recommender.model.params import ALSParams
from recommender.model.products import ExactProduct

IntArray = npt.NDArray[np.int32]
FloatArray = npt.NDArray[np.float32]


# LAPACK's solver for symmetric positive definite systems, called directly: a request's explanation pays no checks.
_POSV = scipy.linalg.lapack.dposv

# Ratings below this say the user did not like the book (see `interaction_weights`).
DISLIKE_BELOW = 3.0


@dataclass(frozen=True)
class CFModel:
    user_ids: IntArray  # sorted; row i of user_factors and user_items
    item_ids: IntArray  # sorted book ids that have interactions; row j of item_factors
    user_factors: FloatArray
    item_factors: FloatArray
    user_items: sp.csr_matrix  # interaction weights (negative: disliked); every entry is a book the user has
    params: ALSParams = field(default_factory=ALSParams)  # what it was fitted with

    @property
    def num_users(self) -> int:
        return int(self.user_ids.shape[0])

    @property
    def num_items(self) -> int:
        return int(self.item_ids.shape[0])

    @property
    def nnz(self) -> int:
        return int(self.user_items.nnz)

    def user_row(self, user_id: int) -> int | None:
        row = int(np.searchsorted(self.user_ids, user_id))
        return row if row < self.num_users and self.user_ids[row] == user_id else None

    def interactions(self, row: int) -> tuple[IntArray, FloatArray]:
        """Item positions and weights of the user's interactions."""
        start, end = self.user_items.indptr[row], self.user_items.indptr[row + 1]
        return self.user_items.indices[start:end], self.user_items.data[start:end]

    def scores(self, user_factors: FloatArray) -> FloatArray:
        """Predicted preference for every item (columns) of each row of user factors, each row the same whatever
        the other rows (model/products.py)."""
        return self._preference(user_factors)

    @cached_property
    def _preference(self) -> ExactProduct:
        return ExactProduct.of(self.item_factors)

    def fold_in(self, items: IntArray, weights: FloatArray) -> FloatArray | None:
        """The user factors ALS would give a history of `items` (CF item indices) with these `weights`, the item
        factors held fixed (implicit's `recalculate_user`: one least-squares solve, about k^3 + len(history) * k^2
        operations); None for an empty history or a model without items."""
        if len(items) == 0 or self.num_items == 0:
            return None
        row = sp.csr_matrix(
            (weights, (np.zeros(len(items), dtype=np.int32), items)), shape=(1, self.num_items), dtype=np.float32
        )
        row.sum_duplicates()
        return np.asarray(self._solver.recalculate_user(0, row), dtype=np.float32)

    def explain(self, items: IntArray, weights: FloatArray, targets: IntArray) -> FloatArray:
        """What each of a user's items (CF indices, with their interaction weights) gives each target item's
        predicted score (targets x items): implicit's `explain` (Hu, Koren and Volinsky, section 5) for all targets
        at once, from one solve of the user's least-squares system: s_ij = (y_i' W_u) y_j c_j.
        Disliked items give nothing."""
        confidence = self.params.confidence * weights.astype(np.float64)
        history = self.item_factors[items].astype(np.float64)
        system = self._gram + self.params.regularization * np.eye(self._gram.shape[0])
        system += (history.T * (np.abs(confidence) - 1.0)) @ history
        _factor, weighted, info = _POSV(system, self.item_factors[targets].T.astype(np.float64))  # LAPACK: no checks
        if info != 0:  # not positive definite (cannot happen with a positive regularisation)
            weighted = np.linalg.lstsq(system, self.item_factors[targets].T.astype(np.float64), rcond=None)[0]
        return np.asarray((history @ weighted).T * np.maximum(confidence, 0.0), dtype=np.float32)

    @cached_property
    def _gram(self) -> npt.NDArray[np.float64]:
        factors = self.item_factors.astype(np.float64)
        return factors.T @ factors

    @cached_property
    def _solver(self) -> AlternatingLeastSquares:
        """implicit's model around these item factors, with the regularisation and confidence they were fitted
        with (so a folded-in user is solved as training would have solved them)."""
        solver = AlternatingLeastSquares(
            factors=self.item_factors.shape[1],
            regularization=self.params.regularization,
            alpha=self.params.confidence,
            num_threads=1,
        )
        solver.item_factors = self.item_factors
        return solver


def interaction_weights(ratings: npt.ArrayLike, rating_scale: float = 1.0) -> FloatArray:
    """What each interaction weighs in the CF matrix.

    Unrated (a read, a click): 1. Rated at or above DISLIKE_BELOW: 1 plus `rating_scale` per star above it, so
    a 5 weighs 3 at the default scale. Rated below: -1, which implicit's ALS reads as "not preferred", with
    confidence; the book still counts as one the user has, so it is never recommended to them. Measured on the
    Goodreads sample (NDCG@10 of CF alone, same split): 0.273 with the plain rating as weight, 0.283 with this.
    """
    values = np.asarray(ratings, dtype=np.float32)
    liked = 1.0 + rating_scale * (np.nan_to_num(values) - DISLIKE_BELOW)
    return np.where(np.isnan(values), 1.0, np.where(values >= DISLIKE_BELOW, liked, -1.0)).astype(np.float32)


def confidence_matrix(data: TrainingData, rating_scale: float = 1.0) -> tuple[IntArray, IntArray, sp.csr_matrix]:
    """Users x items matrix of weights, with the sorted user and item ids of its rows and columns."""
    user_ids, user_rows = np.unique(data.user_ids, return_inverse=True)
    item_ids, item_cols = np.unique(data.book_ids, return_inverse=True)
    matrix = sp.csr_matrix(
        (interaction_weights(data.ratings, rating_scale), (user_rows, item_cols)),
        shape=(len(user_ids), len(item_ids)),
    )
    matrix.sum_duplicates()
    return user_ids.astype(np.int32), item_ids.astype(np.int32), matrix


def cuda_available() -> bool:
    """Whether implicit's GPU ALS can run here (its CUDA build, rmm, and a device)."""
    try:
        import implicit.gpu

        return bool(implicit.gpu.HAS_CUDA)
    except ImportError:
        return False


def fit(data: TrainingData, params: ALSParams, on_iteration: Callable[[int], None] | None = None) -> CFModel:
    """Fits ALS with bounded threads on the CPU, or on the GPU when `params.device` says so (the factors come back
    to the CPU for serving). `on_iteration` may raise to abort the fit."""
    device = params.device
    if device == "gpu":
        from implicit.gpu.als import AlternatingLeastSquares as Solver
    else:
        Solver = AlternatingLeastSquares  # the CPU class: never the GPU one by accident, even with CUDA

    user_ids, item_ids, user_items = confidence_matrix(data, params.rating_scale)
    if user_items.nnz == 0:
        empty = np.zeros((0, params.factors), dtype=np.float32)
        return CFModel(user_ids, item_ids, empty, empty, user_items, params)

    def callback(iteration: int, _elapsed: float, _loss: float) -> None:
        if on_iteration is not None:
            on_iteration(iteration)

    # implicit warns and slows down when BLAS runs its own threads beside ALS's.
    with threadpool_limits(1, "blas"):
        options = {"num_threads": params.threads} if device != "gpu" else {}
        als = Solver(
            factors=params.factors,
            iterations=params.iterations,
            regularization=params.regularization,
            alpha=params.confidence,
            random_state=params.random_state,
            **options,
        )
        als.fit(user_items, show_progress=False, callback=callback)
    if device == "gpu":
        als = als.to_cpu()
    return CFModel(
        user_ids=user_ids,
        item_ids=item_ids,
        user_factors=np.ascontiguousarray(als.user_factors, dtype=np.float32),
        item_factors=np.ascontiguousarray(als.item_factors, dtype=np.float32),
        user_items=user_items,
        params=params,
    )
