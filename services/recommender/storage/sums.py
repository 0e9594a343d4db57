"""A version's online sums as the roll-ups read them (storage/rollups.py): per impression (one Recommend answer)
whether any shown book was clicked, how many were read, and the reciprocal rank of the first book clicked or read,
summed by reader; the statistics over them are answers/statistics.py's."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Summed:
    """A per-impression quantity x summed by reader u (x_u, with I_u the reader's impressions)."""

    total: float = 0.0  # sum of x_u
    squares: float = 0.0  # sum of x_u squared
    cross: float = 0.0  # sum of x_u * I_u

    @classmethod
    def of(cls, per_user: Sequence[float], impressions: Sequence[float]) -> Summed:
        return cls(
            float(sum(per_user)),
            float(sum(x * x for x in per_user)),
            float(sum(x * i for x, i in zip(per_user, impressions, strict=True))),
        )


@dataclass(frozen=True)
class OnlineSums:
    impressions: int = 0
    users: int = 0  # readers with at least one impression
    impression_squares: float = 0.0  # the sum over readers of I_u squared
    clicks: Summed = Summed()  # impressions with at least one click
    reads: Summed = Summed()  # books read
    reciprocal_ranks: Summed = Summed()
    since: datetime | None = None  # the first impression counted

    @classmethod
    def of_users(
        cls,
        impressions: Sequence[float],
        clicks: Sequence[float],
        reads: Sequence[float],
        reciprocal_ranks: Sequence[float],
    ) -> OnlineSums:
        """From per-reader sums (parallel sequences, one entry per reader with impressions)."""
        return cls(
            impressions=int(sum(impressions)),
            users=len(impressions),
            impression_squares=float(sum(i * i for i in impressions)),
            clicks=Summed.of(clicks, impressions),
            reads=Summed.of(reads, impressions),
            reciprocal_ranks=Summed.of(reciprocal_ranks, impressions),
        )
