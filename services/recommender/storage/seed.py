"""A database ready to serve: the schema migrated and, on first start, the demo catalogue written into it."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from recommender import demo
from recommender.storage.db import Database

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoSize:
    seed: int
    books: int
    users: int
    interactions: int


async def prepare_database(db: Database, size: DemoSize) -> None:
    """Migrates, and fills an empty database with a demo catalogue of `size`."""
    await db.migrate()
    if (await db.counts())["books"] > 0:
        return
    catalogue = await asyncio.to_thread(demo.generate, size.seed, size.books, size.users, size.interactions)
    if await db.seed_if_empty(catalogue.books, catalogue.interactions):
        log.info(
            "the database was empty: filled it with the demo catalogue (%d books, %d users, %d interactions); "
            "`recommender import` loads your own",
            len(catalogue.books),
            size.users,
            len(catalogue.interactions),
        )
