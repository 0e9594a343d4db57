"""The statistics behind online truth and canaries, in memory: Wilson's interval of a click-through rate, normal
intervals of means over readers (one reader's impressions counted once), the sequential test's decisions and its
false-decision rate when it looks after every batch, the metrics view that answers at once and refreshes behind, the
canary's sticky share, and the durations the settings take."""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Sequence
from datetime import datetime, timedelta

import pytest

from recommender.answers.statistics import (
    Decision,
    SequentialTest,
    click_through_rate,
    mean_reciprocal_rank,
    reads_per_1000,
)
from recommender.answers.view import OnlineView
from recommender.serving.policy import serves_canary
from recommender.settings import SettingsError, load_settings
from recommender.storage.feedback import OnlineStore
from recommender.storage.sums import OnlineSums, Summed


def one_each(n: int, hits: int, rank: int = 1) -> OnlineSums:
    """`n` readers with one impression each, `hits` of them with a click at `rank` (OnlineSums.of_users, counted)."""
    rr = 1.0 / rank
    return OnlineSums(n, n, n, Summed(hits, hits, hits), Summed(), Summed(hits * rr, hits * rr * rr, hits * rr))


def sums_of(rng: random.Random, n: int, hit_rate: float, rank: int = 1) -> OnlineSums:
    """`n` readers with one impression each, of which a share `hit_rate` had a click at `rank`."""
    return one_each(n, sum(rng.random() < hit_rate for _ in range(n)), rank)


def test_click_through_rate_has_wilsons_interval() -> None:
    interval = click_through_rate(OnlineSums.of_users([1.0] * 100, [1.0] * 10 + [0.0] * 90, [0.0] * 100, [0.0] * 100))
    assert interval.value == pytest.approx(0.1)
    assert (interval.low, interval.high) == (pytest.approx(0.0552, abs=1e-3), pytest.approx(0.1744, abs=1e-3))
    none = click_through_rate(OnlineSums.of_users([1.0] * 50, [0.0] * 50, [0.0] * 50, [0.0] * 50))
    assert none.value == 0 and none.low == pytest.approx(0, abs=1e-12) and 0.05 < none.high < 0.08  # not zero-width


def test_means_have_normal_intervals_that_narrow_with_more_readers() -> None:
    rng = random.Random(1)
    small, large = sums_of(rng, 200, 0.3, rank=2), sums_of(rng, 20_000, 0.3, rank=2)
    for sums in (small, large):
        mrr = mean_reciprocal_rank(sums)
        assert mrr.low < mrr.value < mrr.high and mrr.value == pytest.approx(0.15, abs=0.04)
    width = {id(s): mean_reciprocal_rank(s).high - mean_reciprocal_rank(s).low for s in (small, large)}
    assert width[id(large)] < width[id(small)] / 5
    assert one_each(5, 2, rank=2) == OnlineSums.of_users([1.0] * 5, [1.0, 1.0, 0, 0, 0], [0.0] * 5, [0.5, 0.5, 0, 0, 0])
    reads = reads_per_1000(OnlineSums.of_users([2.0, 2.0], [1.0, 0.0], [2.0, 0.0], [1.0, 0.0]))
    assert reads.value == 500 and reads.low >= 0


def test_impressions_of_one_reader_count_as_one_reader() -> None:
    """Ten readers with 100 impressions each say less than 1,000 readers with one: readers differ, and a canary
    is a set of readers. The interval is as wide as ten readers' worth."""
    clustered = OnlineSums.of_users([100.0] * 10, [100.0] * 3 + [0.0] * 7, [0.0] * 10, [100.0] * 3 + [0.0] * 7)
    spread = OnlineSums.of_users([1.0] * 1000, [1.0] * 300 + [0.0] * 700, [0.0] * 1000, [1.0] * 300 + [0.0] * 700)
    assert mean_reciprocal_rank(clustered).value == mean_reciprocal_rank(spread).value == pytest.approx(0.3)
    narrow, wide = mean_reciprocal_rank(spread), mean_reciprocal_rank(clustered)
    assert (wide.high - wide.low) > 5 * (narrow.high - narrow.low)
    assert click_through_rate(clustered).low < 0.15 < 0.25 < click_through_rate(spread).low


def test_the_sequential_test_finds_a_real_difference_and_waits_without_one() -> None:
    test = SequentialTest()
    rng = random.Random(7)
    assert test.decide(sums_of(rng, 100, 0.5), sums_of(rng, 100, 0.1)).decision is Decision.WAIT  # too few
    better = test.decide(sums_of(rng, 3000, 0.30), sums_of(rng, 3000, 0.20))
    assert better.decision is Decision.PROMOTE and "higher" in better.reason
    worse = test.decide(sums_of(rng, 3000, 0.20), sums_of(rng, 3000, 0.30))
    assert worse.decision is Decision.ABORT and "lower" in worse.reason
    same = test.decide(sums_of(rng, 3000, 0.25), sums_of(rng, 3000, 0.25))
    assert same.decision is Decision.WAIT
    end = test.decide(sums_of(rng, 20_000, 0.25), sums_of(rng, 20_000, 0.25))
    assert end.decision is Decision.ABORT and "active version stays" in end.reason


def test_looking_after_every_batch_keeps_false_decisions_near_alpha() -> None:
    """An A/A canary checked every 100 impressions up to the maximum: the mixture SPRT stays always valid."""
    test = SequentialTest(max_impressions=5000)
    rng = random.Random(3)
    runs, wrong = 200, 0
    for _ in range(runs):
        hits = [0, 0]
        for n in range(100, test.max_impressions, 100):
            for arm in (0, 1):
                hits[arm] += sum(rng.random() < 0.2 for _ in range(100))
            if test.decide(one_each(n, hits[0]), one_each(n, hits[1])).decision is not Decision.WAIT:
                wrong += 1
                break
    assert wrong / runs <= 0.08


class CountingStore(OnlineStore):
    """An online record in memory whose sums say how often they were read, and which can fail."""

    def __init__(self) -> None:  # no database
        self.reads = 0
        self.failing = False

    async def sums(self, since: datetime | None = None, versions: Sequence[str] | None = None) -> dict[str, OnlineSums]:
        if self.failing:
            raise OSError("the database is away")
        self.reads += 1
        return {"v1": one_each(self.reads, 0)}


def test_the_view_answers_at_once_and_refreshes_behind() -> None:
    async def scenario() -> None:
        store = CountingStore()
        view = OnlineView(store, fresh_seconds=0.05)
        assert (await view.sums())["v1"].impressions == 1  # the first answer waits for the read
        assert (await view.sums())["v1"].impressions == 1 and store.reads == 1  # fresh: not read again
        await asyncio.sleep(0.06)
        assert (await view.sums())["v1"].impressions == 1  # aged: the last sums at once, a read behind them
        await asyncio.sleep(0.01)
        assert (await view.sums())["v1"].impressions == 2
        store.failing = True
        await asyncio.sleep(0.06)
        assert (await view.sums())["v1"].impressions == 2  # a failed refresh keeps the last sums
        await asyncio.sleep(0.01)
        assert (await view.sums())["v1"].impressions == 2
        await view.close()

    asyncio.run(scenario())


def test_the_canary_share_is_a_sticky_hash_honoured_within_binomial_bounds() -> None:
    users = range(1, 100_001)
    chosen = [u for u in users if serves_canary(u, 0.1)]
    assert abs(len(chosen) - 10_000) < 4 * math.sqrt(100_000 * 0.1 * 0.9)
    assert set(chosen) <= {u for u in users if serves_canary(u, 0.3)}  # a larger share keeps the smaller one's users
    assert [serves_canary(u, 0.1) for u in range(1, 50)] == [serves_canary(u, 0.1) for u in range(1, 50)]


def test_durations_take_units_and_refuse_nonsense() -> None:
    loaded = load_settings(impressions_retention="30d", attribution_window="12h")
    assert loaded.impressions_retention == timedelta(days=30) and loaded.attribution_window == timedelta(hours=12)
    assert load_settings(attribution_window="90").attribution_window == timedelta(seconds=90)
    for bad in ("0", "soon", "-5d"):
        with pytest.raises(SettingsError):
            load_settings(attribution_window=bad)
