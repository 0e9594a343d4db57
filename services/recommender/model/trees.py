"""A forest of binary decision trees as flat arrays, and its score of feature rows in one compiled pass: what a
version's learned second stage serves (model/learned.py). Built from a gradient-boosted ensemble's dump (LightGBM's
`Booster.dump_model()`, fitted in training/ranker.py), so serving needs no learning library, and stored with the
version as arrays like its factors.

A node either splits (a row goes left where its value of the node's feature is at most the threshold, as
LightGBM's numerical "<=" splits decide) or is a leaf, whose value the row's score adds: a row's score is the sum
over the trees of the leaf it reaches.

Scoring walks each tree for many rows at once and without a branch (`Layout`): a split's children are adjacent, so
the next node is the left child plus one where the value is above the threshold, and a leaf is its own child, so
every row takes its tree's depth in steps. The rows' walks are independent, so the processor overlaps them; walked
one row at a time with a branch a level, 60 trees of 15 leaves took 1.3 µs a row, mostly mispredicted branches.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt

from recommender.model.compiled import compiled

IntArray = npt.NDArray[np.int32]
Float64Array = npt.NDArray[np.float64]

LEAF = -1  # a leaf's feature


class TreesError(ValueError):
    """A dump or stored arrays that are not a forest this module can evaluate."""


@dataclass(frozen=True)
class Trees:
    """Every node of every tree, in the order the dump lists them; a tree's nodes follow its root."""

    feature: IntArray  # per node, the feature it splits on (LEAF: a leaf)
    threshold: Float64Array  # per split, its threshold (left: value <= threshold)
    left: IntArray  # per split, its children (node indices)
    right: IntArray
    value: Float64Array  # per leaf, what it adds to a row's score
    roots: IntArray  # per tree, its root
    features: int  # how many values a row has

    @classmethod
    def of_dump(cls, dump: dict[str, Any]) -> Trees:
        """From LightGBM's `Booster.dump_model()` (numerical "<=" splits only, as a ranker over numbers has)."""
        nodes: list[tuple[int, float, int, int, float]] = []
        roots = [_flattened(tree["tree_structure"], nodes) for tree in dump["tree_info"]]
        feature, threshold, left, right, value = [list(column) for column in zip(*nodes, strict=True)] or [[]] * 5
        return cls.of_arrays({
            "feature": np.array(feature, dtype=np.int32), "threshold": np.array(threshold, dtype=np.float64),
            "left": np.array(left, dtype=np.int32), "right": np.array(right, dtype=np.int32),
            "value": np.array(value, dtype=np.float64), "roots": np.array(roots, dtype=np.int32),
            "features": np.array(int(dump["max_feature_idx"]) + 1),
        })  # fmt: skip

    @classmethod
    def stump(cls, feature: int, threshold: float, below: float, above: float, features: int) -> Trees:
        """A forest of one split: rows whose `feature` is above `threshold` score `above`, the others `below`."""
        return cls.of_arrays({
            "feature": np.array([feature, LEAF, LEAF]), "threshold": np.array([threshold, 0.0, 0.0]),
            "left": np.array([1, -1, -1]), "right": np.array([2, -1, -1]), "value": np.array([0.0, below, above]),
            "roots": np.array([0]), "features": np.array(features),
        })  # fmt: skip

    def arrays(self) -> dict[str, npt.NDArray[Any]]:
        """What `of_arrays` reads back (a version's stored file)."""
        return {
            "feature": self.feature, "threshold": self.threshold, "left": self.left, "right": self.right,
            "value": self.value, "roots": self.roots, "features": np.array(self.features),
        }  # fmt: skip

    @classmethod
    def of_arrays(cls, arrays: dict[str, npt.NDArray[Any]]) -> Trees:
        """The forest in `arrays`, checked: every child a node, every tree ending in leaves, no cycle."""
        trees = cls(
            np.asarray(arrays["feature"], dtype=np.int32), np.asarray(arrays["threshold"], dtype=np.float64),
            np.asarray(arrays["left"], dtype=np.int32), np.asarray(arrays["right"], dtype=np.int32),
            np.asarray(arrays["value"], dtype=np.float64), np.asarray(arrays["roots"], dtype=np.int32),
            int(arrays["features"]),
        )  # fmt: skip
        trees.check()
        return trees

    def check(self) -> None:
        n = len(self.feature)
        if not all(len(a) == n for a in (self.threshold, self.left, self.right, self.value)):
            raise TreesError("the trees' node arrays differ in length")
        splits = self.feature != LEAF
        if np.any(self.feature[splits] < 0) or np.any(self.feature[splits] >= self.features):
            raise TreesError("a split reads a feature the rows do not have")
        children = np.concatenate([self.left[splits], self.right[splits]])
        # Children come after their parent (the dump's order, depth first): no cycle, every path ends in a leaf.
        parents = np.concatenate([np.flatnonzero(splits)] * 2)
        if np.any(children <= parents) or np.any(children >= n) or np.any(self.roots < 0) or np.any(self.roots >= n):
            raise TreesError("a tree's child is not a later node")
        if not np.all(np.isfinite(self.threshold[splits])) or not np.all(np.isfinite(self.value)):
            raise TreesError("the trees hold a value that is not finite")

    def scores(self, values: Float64Array) -> Float64Array:
        """Each row's score (rows x `features` finite values)."""
        if values.ndim != 2 or values.shape[1] != self.features:
            raise TreesError(f"rows of {values.shape[-1]} values, the trees read {self.features}")
        return forest(np.ascontiguousarray(values, dtype=np.float64), self.layout.arrays)

    @cached_property
    def layout(self) -> Layout:
        return Layout.of(self)


@dataclass(frozen=True)
class Layout:
    """The trees laid out for `forest`: each split's children adjacent (`first`: the left one), each leaf its own
    child with an infinite threshold, and each tree's depth."""

    feature: IntArray  # a leaf's: 0 (it compares with +inf: stays)
    threshold: Float64Array
    first: IntArray
    value: Float64Array  # 0 at a split
    roots: IntArray
    depth: IntArray

    @classmethod
    def of(cls, trees: Trees) -> Layout:
        order: list[int] = []  # new place -> the node's index in `trees`
        roots, depths = [], []
        for root in trees.roots.tolist():
            roots.append(len(order))
            order.append(root)
            depth, level = 0, [len(order) - 1]
            while any(trees.feature[order[at]] != LEAF for at in level):
                below = []
                for at in level:
                    node = order[at]
                    if trees.feature[node] != LEAF:
                        below += [len(order), len(order) + 1]
                        order += [int(trees.left[node]), int(trees.right[node])]
                level, depth = below, depth + 1
            depths.append(depth)
        old = np.array(order, dtype=np.int64)
        new_of = np.empty(len(trees.feature), dtype=np.int64)
        new_of[old] = np.arange(len(old))
        leaf = trees.feature[old] == LEAF
        first = np.where(leaf, np.arange(len(old)), new_of[np.where(leaf, 0, trees.left[old])])
        return cls(
            np.where(leaf, 0, trees.feature[old]).astype(np.int32), np.where(leaf, np.inf, trees.threshold[old]),
            first.astype(np.int32), np.where(leaf, trees.value[old], 0.0), np.array(roots, dtype=np.int32),
            np.array(depths, dtype=np.int32),
        )  # fmt: skip

    @property
    def arrays(self) -> tuple[IntArray, Float64Array, IntArray, Float64Array, IntArray, IntArray]:
        """What `forest` reads."""
        return self.feature, self.threshold, self.first, self.value, self.roots, self.depth


def _flattened(node: dict[str, Any], nodes: list[tuple[int, float, int, int, float]]) -> int:
    """`node` and the nodes under it appended to `nodes` depth first; its index."""
    at = len(nodes)
    if "leaf_value" in node:
        nodes.append((LEAF, 0.0, -1, -1, float(node["leaf_value"])))
        return at
    if node.get("decision_type", "<=") != "<=":
        raise TreesError(f"a split of kind {node['decision_type']!r}: only numerical '<=' splits are served")
    nodes.append((int(node["split_feature"]), float(node["threshold"]), -1, -1, 0.0))
    left = _flattened(node["left_child"], nodes)
    right = _flattened(node["right_child"], nodes)
    nodes[at] = (nodes[at][0], nodes[at][1], left, right, 0.0)
    return at


@compiled
def forest(values: Any, trees: tuple[Any, Any, Any, Any, Any, Any]) -> Any:
    """Each row of `values`'s score: the sum over the trees of the leaf it reaches (`trees`: `Layout.arrays`)."""
    feature, threshold, first, value, roots, depth = trees
    rows = values.shape[0]
    scores = np.zeros(rows)
    nodes = np.empty(rows, dtype=np.int64)
    for t in range(len(roots)):
        nodes[:] = roots[t]
        for _ in range(depth[t]):
            for i in range(rows):  # independent walks: overlapped
                node = nodes[i]
                nodes[i] = first[node] + (values[i, feature[node]] > threshold[node])
        for i in range(rows):
            scores[i] += value[nodes[i]]
    return scores
