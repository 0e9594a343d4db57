"""A database ready to serve: the schema migrated and, on first start, the demo catalogue written into it."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from recommender.storage import demo
from recommender.storage.catalogue import CatalogueStore
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
    catalogue = CatalogueStore(db)
    if (await catalogue.counts())["books"] > 0:
        return
    generated = await asyncio.to_thread(demo.generate, size.seed, size.books, size.users, size.interactions)
    if await catalogue.seed_if_empty(generated.books, generated.interactions):
        log.info(
            "the database was empty: filled it with the demo catalogue (%d books, %d users, %d interactions); "
            "`recommender import` loads your own",
            len(generated.books),
            size.users,
            len(generated.interactions),
        )
