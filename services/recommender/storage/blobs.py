"""Model versions' files kept in PostgreSQL (RECOMMENDER_ARTIFACT_STORE=postgres), for replicas that share no disk."""

from __future__ import annotations

from collections.abc import Collection

from recommender.storage.db import BULK_SECONDS, Database


class ArtifactBlobs:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def save(self, version: str, files: dict[str, bytes]) -> None:
        async with self._db.transaction() as conn:
            await conn.execute("DELETE FROM model_artifacts WHERE version = $1", version)
            await conn.executemany(
                "INSERT INTO model_artifacts (version, name, data) VALUES ($1, $2, $3)",
                [(version, name, data) for name, data in files.items()],
                timeout=BULK_SECONDS,
            )

    async def files(self, version: str) -> dict[str, bytes]:
        """The stored files of `version`; empty when the database holds none."""
        rows = await self._db.fetch(
            "SELECT name, data FROM model_artifacts WHERE version = $1", version, seconds=BULK_SECONDS
        )
        return {row["name"]: bytes(row["data"]) for row in rows}

    async def versions(self) -> list[str]:
        """The versions whose files the database holds."""
        rows = await self._db.fetch("SELECT DISTINCT version FROM model_artifacts")
        return [row["version"] for row in rows]

    async def delete(self, versions: Collection[str]) -> None:
        await self._db.execute("DELETE FROM model_artifacts WHERE version = ANY($1::text[])", list(versions))
