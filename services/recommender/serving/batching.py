"""Dynamic batching (as Triton and TensorFlow Serving do it): concurrent requests wait at most `wait_seconds` for
each other, and at most `max_size` of them are answered by one call of the model.

Requests that arrive in one turn of the event loop are always answered together. A request waits for more only
while requests overlap (one came while another was waiting for its answer, within the last COMPANY_SECONDS): a
lone client is answered on the next turn of the event loop and pays nothing for batching, and the first request
after a busy spell pays at most the wait. With `wait_seconds` 0 (the default) nobody waits.

Measured on this project's 2-core machine (10,000 books, bench/results/serving.md): a shared product saves about a
fifth of the model's time per request in batches of 16, but through Envoy calls reach the server one per turn of the
loop, so batches stay at one or two without a wait; a 1 ms wait raised Recommend's requests/s at 16 connections by
3 to 10 % (within the run-to-run spread) and cost one to two milliseconds of p50 at two connections.

The model answers a batch exactly as it would answer each request alone (model/products.py).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

COMPANY_SECONDS = 1.0

Item = TypeVar("Item")
Answer = TypeVar("Answer")


@dataclass(frozen=True)
class BatchPolicy:
    wait_seconds: float = 0.0  # the longest a request waits for others
    max_size: int = 32  # a batch this large is answered at once


DEFAULT_BATCHING = BatchPolicy()


class Batcher(Generic[Item, Answer]):
    def __init__(
        self,
        answer: Callable[[Sequence[Item]], Sequence[Answer]],
        policy: BatchPolicy,
        on_batch: Callable[[int], None] = lambda size: None,
    ) -> None:
        """`answer(items)`: one answer per item, in order (it runs on the event loop). `on_batch(size)`: after
        each call of it (for metrics)."""
        self._answer = answer
        self._wait = policy.wait_seconds
        self._max = policy.max_size
        self._on_batch = on_batch
        self._pending: list[tuple[Item, asyncio.Future[Answer]]] = []
        self._flush: asyncio.Handle | asyncio.TimerHandle | None = None
        self._active = 0  # calls waiting for their answer
        self._company_at = -math.inf  # when a call last came while another was waiting (loop time)

    async def __call__(self, item: Item) -> Answer:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Answer] = loop.create_future()
        self._pending.append((item, future))
        if self._active:  # another call has not got its answer yet: requests overlap
            self._company_at = loop.time()
        if len(self._pending) >= self._max:
            self._run()
        elif self._flush is None:
            if self._wait > 0 and loop.time() - self._company_at < COMPANY_SECONDS:
                self._flush = loop.call_later(self._wait, self._run)
            else:  # the callbacks of this turn of the loop (requests that arrived with this one) still join
                self._flush = loop.call_soon(self._run)
        self._active += 1
        try:
            return await future
        finally:
            self._active -= 1

    def _run(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        batch, self._pending = self._pending, []
        live = [(item, future) for item, future in batch if not future.done()]  # a cancelled call needs no answer
        if not live:
            return
        self._on_batch(len(live))
        try:
            answers = self._answer([item for item, _future in live])
        except Exception as exc:
            for _item, future in live:
                future.set_exception(exc)
            return
        for (_item, future), answer in zip(live, answers, strict=True):
            future.set_result(answer)


Model = TypeVar("Model")
Asked = TypeVar("Asked")


def per_model(
    answer: Callable[[Model, Sequence[Asked]], list[Answer]],
) -> Callable[[Sequence[tuple[Model, Asked]]], list[Answer]]:
    """A batch answered by the model each request was meant for (a swap, or a canary, can fall between two)."""

    def answered(items: Sequence[tuple[Model, Asked]]) -> list[Answer]:
        groups: dict[int, tuple[Model, list[int]]] = {}
        for index, (model, _asked) in enumerate(items):
            groups.setdefault(id(model), (model, []))[1].append(index)
        answers: dict[int, Answer] = {}
        for model, indices in groups.values():
            answers |= zip(indices, answer(model, [items[i][1] for i in indices]), strict=True)
        return [answers[i] for i in range(len(items))]

    return answered
