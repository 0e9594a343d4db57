"""Databases on the session's embedded PostgreSQL: a fresh one per test that asks, and direct reads of them."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from bench.servers import QUICK, Server, launch


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def create_database(postgres_url: str) -> str:
    """A new, empty database on the server at `postgres_url`; returns its URL."""
    name = f"t_{uuid.uuid4().hex[:12]}"

    async def create() -> None:
        conn = await asyncpg.connect(postgres_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    return with_database(postgres_url, name)


def fetch(database_url: str, query: str, *args: object) -> list[tuple[object, ...]]:
    """The rows of `query`, read straight from the database."""

    async def read() -> list[tuple[object, ...]]:
        conn = await asyncpg.connect(database_url)
        try:
            return [tuple(row) for row in await conn.fetch(query, *args)]
        finally:
            await conn.close()

    return asyncio.run(read())


def active_version(database_url: str) -> str | None:
    """The registry's active version, read straight from the database."""
    rows = fetch(database_url, "SELECT version FROM model_versions WHERE status = 'active'")
    return str(rows[0][0]) if rows else None


@dataclass(frozen=True)
class Template:
    """A database with the test demo catalogue and a first model already trained, and that model's artifacts: each
    copy is a new database (PostgreSQL copies the template's files) and a copy of the artifacts, so that a server
    started on it serves at once, without seeding or training (for the tests that do not look at those)."""

    server_url: str
    name: str
    artifacts: Path

    def copy(self, workdir: Path) -> str:
        """A new database made from the template, the artifacts copied to `workdir`/artifacts; returns its URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"

        async def create() -> None:
            conn = await asyncpg.connect(self.server_url)
            try:
                await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.name}"')
            finally:
                await conn.close()

        asyncio.run(create())
        shutil.copytree(self.artifacts, workdir / "artifacts", dirs_exist_ok=True)
        return with_database(self.server_url, name)

    @contextmanager
    def served(self, workdir: Path, **settings: str) -> Iterator[Server]:
        """The real `python server.py` on a copy of this template (`settings`: RECOMMENDER_* without the prefix),
        stopped when the block ends."""
        running = launch(workdir, QUICK | settings, self.copy(workdir))
        try:
            running.wait_idle()
            yield running
        finally:
            running.stop()


def trained_template(server_url: str, folder: Path, settings: Mapping[str, object]) -> Template:
    """Seeds a new database with the demo catalogue of `settings` and trains its first model, in this process."""
    from recommender.settings import load_settings
    from recommender.storage.db import Database
    from recommender.storage.seed import DemoSize, prepare_database
    from recommender.training.config import make_trainer

    url = create_database(server_url)
    chosen = load_settings(database_url=url, artifacts_dir=folder / "artifacts", **settings)

    async def seed() -> None:
        async with await Database.connect(url, max_size=1) as db:
            size = DemoSize(chosen.demo_seed, chosen.demo_books, chosen.demo_users, chosen.demo_interactions)
            await prepare_database(db, size)

    asyncio.run(seed())
    make_trainer(chosen, url)()  # its connections are closed when it returns: the template can be copied
    return Template(server_url, urlsplit(url).path.lstrip("/"), folder / "artifacts")
