"""Dynamic batching on a real event loop: who waits for whom, and what each caller gets back."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from recommender.serving.batching import Batcher, BatchPolicy


class Model:
    """Doubles numbers, in batches, remembering each batch; fails a batch holding a negative number."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __call__(self, items: Sequence[int]) -> list[int]:
        self.batches.append(list(items))
        if any(item < 0 for item in items):
            raise ValueError("negative")
        return [2 * item for item in items]


def test_requests_of_one_turn_of_the_loop_are_one_batch_and_each_gets_its_own_answer() -> None:
    async def main() -> None:
        model = Model()
        batcher = Batcher(model, BatchPolicy(wait_seconds=0.0, max_size=32))
        assert await asyncio.gather(*(batcher(i) for i in range(10))) == [2 * i for i in range(10)]
        assert model.batches == [list(range(10))]

    asyncio.run(main())


def test_a_full_batch_goes_at_once_and_the_rest_form_the_next() -> None:
    async def main() -> None:
        model, sizes = Model(), list[int]()
        batcher = Batcher(model, BatchPolicy(wait_seconds=60.0, max_size=4), sizes.append)
        assert await asyncio.gather(*(batcher(i) for i in range(8))) == [2 * i for i in range(8)]
        assert model.batches == [[0, 1, 2, 3], [4, 5, 6, 7]] and sizes == [4, 4]

    asyncio.run(main())


def test_a_lone_client_never_waits_and_company_is_waited_for() -> None:
    async def main() -> None:
        model = Model()
        batcher = Batcher(model, BatchPolicy(wait_seconds=60.0, max_size=3))
        for i in range(3):  # one at a time: no company, so the long wait never applies
            async with asyncio.timeout(10):
                assert await batcher(i) == 2 * i
        async with asyncio.timeout(10):  # two together: one batch, answered at once (nobody waited yet) ...
            assert await asyncio.gather(batcher(10), batcher(11)) == [20, 22]
        late = asyncio.ensure_future(batcher(20))  # ... but now a request waits for others ...
        await asyncio.sleep(0.05)
        assert not late.done()
        assert await asyncio.gather(batcher(21), batcher(22)) == [42, 44]  # ... until the batch is full
        assert await late == 40
        assert model.batches == [[0], [1], [2], [10, 11], [20, 21, 22]]

    asyncio.run(main())


def test_a_failing_batch_fails_each_of_its_callers_and_the_next_batch_is_answered() -> None:
    async def main() -> None:
        batcher = Batcher(Model(), BatchPolicy(wait_seconds=0.0))
        results = await asyncio.gather(batcher(1), batcher(-1), return_exceptions=True)
        assert [type(r) for r in results] == [ValueError, ValueError]
        assert await batcher(3) == 6

    asyncio.run(main())


def test_a_cancelled_call_leaves_its_batch_without_it() -> None:
    async def main() -> None:
        model = Model()
        batcher = Batcher(model, BatchPolicy(wait_seconds=0.0))
        gone = asyncio.ensure_future(batcher(1))
        kept = asyncio.ensure_future(batcher(2))
        await asyncio.sleep(0)  # both are pending now
        gone.cancel()
        assert await kept == 4
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert model.batches == [[2]]

    asyncio.run(main())
