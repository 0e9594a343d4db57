"""Prometheus endpoints, read as a scraper would."""

from __future__ import annotations

import httpx


def scraped(address: str, sample: str) -> float:
    """One sample's value on a Prometheus endpoint (0 when absent)."""
    for line in httpx.get(f"http://{address}/metrics", timeout=5).text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
