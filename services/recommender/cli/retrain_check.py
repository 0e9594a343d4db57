"""The guide's automated test (`python test_retrain.py`): its seven steps against a running service over HTTP.

Each step prints ✅ or ❌; the exit code is non-zero if any step failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

DEFAULT_URL = "http://localhost:8001"
RETRAIN_RUNNING = "Retraining already in progress"


class StepFailed(Exception):
    pass


@dataclass
class Check:
    client: httpx.Client
    timeout: float
    failures: int = 0
    facts: dict[str, Any] = field(default_factory=dict)

    def step(self, number: int, title: str, action: Callable[[], str]) -> None:
        try:
            detail = action()
            print(f"✅ {number}. {title}: {detail}", flush=True)
        except (StepFailed, httpx.HTTPError, ValueError, KeyError) as exc:
            self.failures += 1
            print(f"❌ {number}. {title}: {exc}", flush=True)

    def get(self, path: str) -> dict[str, Any]:
        response = self.client.get(path)
        body: dict[str, Any] = response.json()
        if response.status_code != 200:
            raise StepFailed(f"GET {path} answered {response.status_code} {body}")
        return body

    def wait_until_idle(self) -> list[str]:
        """Polls /health until it says "ok"; returns the statuses seen."""
        seen: list[str] = []
        deadline = time.monotonic() + self.timeout
        while True:
            status = self.get("/api/v1/health")["status"]
            if not seen or seen[-1] != status:
                seen.append(status)
            if status == "ok":
                return seen
            if time.monotonic() > deadline:
                raise StepFailed(f"still {status!r} after {self.timeout:.0f} s")
            time.sleep(0.5)

    def health(self) -> str:
        body = self.get("/api/v1/health")
        if body["status"] not in ("ok", "retraining"):
            raise StepFailed(f"unexpected status {body}")
        if not body["models_loaded"]:
            self.wait_until_idle()  # the first model is still being trained
            body = self.get("/api/v1/health")
            if not body["models_loaded"]:
                raise StepFailed(f"no model loaded: {body}")
        return str(body)

    def model_info(self) -> str:
        body = self.get("/api/v1/model/info")
        expected = {"status", "alpha", "cf_model", "content_model", "is_retraining"}
        if missing := expected - body.keys():
            raise StepFailed(f"missing fields {sorted(missing)} in {body}")
        if body["status"] != "loaded":
            raise StepFailed(f"status is {body['status']!r}")
        self.facts["version"] = body.get("version")
        return f"version {body.get('version')}, cf_model {body['cf_model']}, content_model {body['content_model']}"

    def recommendations(self, label: str) -> Callable[[], str]:
        def check() -> str:
            body = self.get("/api/v1/recommendations?user_id=1&limit=5")
            books = body["recommendations"]
            if not 1 <= len(books) <= 5:
                raise StepFailed(f"expected 1-5 books, got {len(books)}")
            scores = [book["score"] for book in books]
            if scores != sorted(scores, reverse=True):
                raise StepFailed(f"not best first: {scores}")
            self.facts[label] = body.get("model_version")
            served = f"{[book['book_id'] for book in books]} from model {body.get('model_version')}"
            if label == "after" and self.facts.get("before") == body.get("model_version"):
                last = self.get("/api/v1/model/info").get("last_retrain", {})
                if last.get("outcome") != "rejected":
                    raise StepFailed(f"still served by model {body.get('model_version')} after the retrain")
                return f"{served}: the new version was rejected by the promotion gate ({last.get('reason')})"
            return served

        return check

    def retrain(self) -> str:
        response = self.client.post("/api/v1/retrain")
        if response.status_code == 409:  # somebody else's retrain: wait for it, then start ours
            self.wait_until_idle()
            response = self.client.post("/api/v1/retrain")
        body = response.json()
        if response.status_code != 200 or body.get("status") != "accepted":
            raise StepFailed(f"answered {response.status_code} {body}")
        return str(body["message"])

    def monitor(self) -> str:
        return " → ".join(self.wait_until_idle())

    def concurrent_retrains(self, count: int = 5) -> str:
        start = threading.Barrier(count)

        def post() -> tuple[int, dict[str, Any]]:
            start.wait()
            response = self.client.post("/api/v1/retrain")
            return response.status_code, response.json()

        with ThreadPoolExecutor(max_workers=count) as pool:
            answers = list(pool.map(lambda _: post(), range(count)))
        self.wait_until_idle()
        codes = sorted(code for code, _ in answers)
        conflicts = [body for code, body in answers if code == 409]
        if codes != [200] + [409] * (count - 1) or any(body != {"detail": RETRAIN_RUNNING} for body in conflicts):
            raise StepFailed(f"expected one 200 and {count - 1} x 409, got {answers}")
        return f"{count} simultaneous requests: one accepted, {count - 1} x 409 {RETRAIN_RUNNING!r}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--base-url", default=os.environ.get("RECOMMENDER_URL", DEFAULT_URL), help="env RECOMMENDER_URL"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for a retrain")
    args = parser.parse_args(argv)
    print(f"Testing {args.base_url}")
    with httpx.Client(base_url=args.base_url, timeout=30.0) as client:
        check = Check(client, args.timeout)
        check.step(1, "Initial health", check.health)
        check.step(2, "Model info", check.model_info)
        check.step(3, "Recommendations before the retrain", check.recommendations("before"))
        check.step(4, "Trigger a retrain", check.retrain)
        check.step(5, "Monitor progress", check.monitor)
        check.step(6, "Recommendations after the retrain", check.recommendations("after"))
        check.step(7, "Concurrent retrain prevention", check.concurrent_retrains)
    print(f"{7 - check.failures} passed, {check.failures} failed")
    return 1 if check.failures else 0


if __name__ == "__main__":
    sys.exit(main())
