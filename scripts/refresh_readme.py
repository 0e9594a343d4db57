"""Regenerates the sample outputs of the README and docs/api.md from a real run:
`.venv/bin/python scripts/refresh_readme.py`.

Starts `python server.py` on free ports with a fresh embedded PostgreSQL and the default demo catalogue, replays
the guide's curl session, `python test_retrain.py`, a session of fresh data (interactions, books, similar books)
and one of online feedback and a canary against it, and rewrites the console block that follows each
`<!-- sample: NAME -->` marker in those pages. `--check` only says whether the pages' blocks still have the shape
of a real run (the same commands, the same JSON keys), since versions, times and scores change with every run.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

# Run as a script (`python scripts/...`): the repository root, where bench/ lives, on the path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.servers import ROOT, health_at, started

PAGES = [ROOT / "README.md", ROOT / "docs" / "api.md"]  # the pages with samples
RUN = "scripts/refresh_readme.py"
SHOWN_URL = "http://localhost:8001"  # what the README shows, whatever port the run used
BLOCK = re.compile(r"(<!-- sample: (?P<name>[\w-]+) -->\n```console\n)(?P<body>[^`]*?)(\n```)")


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    comment: str = ""
    body: dict[str, object] | None = None

    def filled(self, found: dict[str, object]) -> Call:
        """The call with the "$name" values of its body replaced by what the session found (an answer's id...)."""
        if self.body is None:
            return self
        text = json.dumps(self.body)
        for name, value in found.items():
            text = text.replace(f'"${name}"', json.dumps(value))
        return Call(self.method, self.path, self.comment, json.loads(text))

    def command(self) -> str:
        url = SHOWN_URL + self.path
        url = f'"{url}"' if "?" in url else url
        verb = "" if self.method == "GET" else f"-X {self.method} "
        body = json.dumps(self.body, separators=(",", ":"))
        data = "" if self.body is None else f" -H 'Content-Type: application/json' -d '{body}'"
        return f"$ curl {verb}{url}{data}" + (f"   # {self.comment}" if self.comment else "")


WAIT_UNTIL_IDLE = Call("WAIT", "")
WAIT_FOR_IMPRESSIONS = Call("SLEEP", "")  # impressions are written in batches, within half a second
CURL_SESSION = [
    Call("GET", "/api/v1/model/info"),
    Call("POST", "/api/v1/retrain"),
    Call("POST", "/api/v1/retrain", "again, while it runs"),
    Call("GET", "/api/v1/health"),
    WAIT_UNTIL_IDLE,
    Call("GET", "/api/v1/health"),
    Call("GET", "/api/v1/model/info"),
    Call("GET", "/api/v1/recommendations?user_id=1&limit=5"),
    Call("GET", "/api/v1/recommendations?user_id=1&limit=1000"),
]
NEW_READER = 900_001
FRESH_DATA_SESSION = [
    Call("GET", f"/api/v1/recommendations?user_id={NEW_READER}&limit=3", "a new reader: popular books"),
    Call(
        "POST",
        "/api/v1/interactions",
        body={
            "interactions": [
                {"user_id": NEW_READER, "book_id": 12, "rating": 5},
                {"user_id": NEW_READER, "book_id": 40, "rating": 4},
            ]
        },
    ),
    Call("GET", f"/api/v1/recommendations?user_id={NEW_READER}&limit=3", "at once, no retrain"),
    Call("GET", f"/api/v1/users/{NEW_READER}/interactions?limit=5"),
    Call("GET", "/api/v1/books/12/similar?limit=3"),
    Call(
        "POST",
        "/api/v1/books",
        body={
            "books": [{"book_id": 5001, "title": "The Glass Orchard", "authors": "Ada Quill", "genres": ["fantasy"]}]
        },
    ),
    Call("POST", "/api/v1/interactions", body={"interactions": [{"user_id": NEW_READER, "book_id": 999999}]}),
]


BOOKSHOP_SESSION = [
    Call("GET", "/api/v1/recommendations?user_id=7&limit=3&genre=fantasy&min_year=1990&max_year=2020"),
    Call("GET", "/api/v1/recommendations?user_id=7&limit=3&exclude=12&exclude=13&max_per_author=1"),
    Call(
        "POST",
        "/api/v1/books",
        "out of print: hidden everywhere at once",
        {"books": [{"book_id": 30, "available": False}]},
    ),
    Call("GET", "/api/v1/books/popular?days=7&genre=fantasy&limit=3"),
    Call("GET", "/api/v1/books/new?genre=fantasy&limit=3"),
    Call(
        "POST",
        "/api/v1/recommendations/session",
        "a visitor who opened three books",
        {"book_ids": [1, 2, 3], "limit": 3},
    ),
    Call("POST", "/api/v1/books", "back in print", {"books": [{"book_id": 30, "available": True}]}),
    Call("DELETE", f"/api/v1/users/{NEW_READER}", "erase a reader (an admin call)"),
    Call("GET", f"/api/v1/recommendations?user_id={NEW_READER}&limit=3", "a stranger again"),
]


ONLINE_SESSION = [
    Call("GET", "/api/v1/recommendations?user_id=7&limit=3"),
    Call(
        "POST",
        "/api/v1/feedback",
        "the reader clicked the first book",
        body={"events": [{"recommendation_id": "$recommendation_id", "book_id": "$book_id", "event": "click"}]},
    ),
    WAIT_FOR_IMPRESSIONS,
    Call("GET", "/api/v1/model/online?bucket_minutes=60&hours=1"),
    Call("POST", "/api/v1/model/canary", "the previous version, for 10% of the readers", {"version": "$retired"}),
    Call("POST", "/api/v1/model/canary/abort", body={"reason": "seen enough"}),
]


@contextmanager
def running_server(
    workdir: Path, tuning_seconds: float | None = None, database_url: str | None = None
) -> Iterator[str]:
    """The service with the defaults, as a new user gets them (a cap on the searches' time, and an empty database
    of one's own in place of the embedded one, when given)."""
    settings = {"tuning_seconds": str(tuning_seconds)} if tuning_seconds is not None else {}
    with started(workdir, settings, database_url, timeout=180) as server:
        yield server.url


def curl_session(url: str, session: list[Call]) -> str:
    lines: list[str] = []
    previous: Call | None = None
    found: dict[str, object] = {}
    with httpx.Client(base_url=url, timeout=60) as client:
        for asked in session:
            if asked is WAIT_UNTIL_IDLE:
                while health_at(url).get("status") != "ok":
                    time.sleep(0.2)
                continue
            if asked is WAIT_FOR_IMPRESSIONS:
                time.sleep(1.5)
                continue
            found |= _retired(client)
            call = asked.filled(found)
            response = client.request(call.method, call.path, json=call.body)
            answer = response.json()
            if "recommendation_id" in answer:
                found |= {"recommendation_id": answer["recommendation_id"]}
                found |= {"book_id": answer["recommendations"][0]["book_id"]}
            if previous is not None and not previous.path == call.path == "/api/v1/health":  # a polling loop
                lines.append("")
            previous = call
            lines += [call.command(), json.dumps(answer, separators=(",", ":"), ensure_ascii=False)]
            if response.status_code != 200:
                lines.append(f"HTTP {response.status_code}")
    return "\n".join(lines)


def _retired(client: httpx.Client) -> dict[str, object]:
    """{"retired": the newest retired version whose files are kept}, when there is one."""
    models = client.get("/api/v1/models").json().get("models", [])
    kept = [m["version"] for m in models if m["status"] == "retired" and m["artifact_available"]]
    return {"retired": kept[0]} if kept else {}


def test_script(url: str) -> str:
    result = subprocess.run(
        [sys.executable, "test_retrain.py", "--base-url", url],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    return "$ python test_retrain.py\n" + result.stdout.replace(url, SHOWN_URL).rstrip()


def shape(text: str) -> list[str]:
    """What stays the same from run to run: the commands, and the keys of each JSON body and answer."""
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            out.append(" ".join(sorted(_keys(json.loads(line)))))
        elif line.startswith("$") and " -d '" in line:  # a body may carry what an earlier answer gave: its keys
            command, _, rest = line.partition(" -d '")
            body, _, comment = rest.partition("'")
            out.append(f"{command} -d {' '.join(sorted(_keys(json.loads(body))))}{comment}")
        elif line.startswith(("$", "HTTP")):
            out.append(line)
    return out


def _keys(value: object, prefix: str = "") -> Iterator[str]:
    if isinstance(value, dict):
        for key, inner in value.items():
            yield prefix + key
            yield from _keys(inner, f"{prefix}{key}.")
    elif isinstance(value, list) and value:
        yield from _keys(value[0], f"{prefix}[].")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare the pages' blocks with a real run")
    parser.add_argument("--tuning-seconds", type=float, help="a shorter tuning budget (the shapes do not change)")
    parser.add_argument("--database-url", help="an empty database to use instead of a new embedded PostgreSQL")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="refresh-readme-") as tmp,
        running_server(Path(tmp), args.tuning_seconds, args.database_url) as url,
    ):
        samples = {
            "curl": curl_session(url, CURL_SESSION),
            "test-retrain": test_script(url),
            "fresh-data": curl_session(url, FRESH_DATA_SESSION),
            "bookshop": curl_session(url, BOOKSHOP_SESSION),
            "online": curl_session(url, ONLINE_SESSION),
        }
    texts = {page: page.read_text(encoding="utf-8") for page in PAGES}
    found = {m["name"]: (page, m["body"]) for page, text in texts.items() for m in BLOCK.finditer(text)}
    if set(found) != set(samples):
        print(f"the pages have sample blocks {sorted(found)}, expected {sorted(samples)}", file=sys.stderr)
        return 1
    if args.check:
        stale = [name for name, body in samples.items() if shape(body) != shape(found[name][1])]
        for name in stale:
            print(f"{found[name][0].relative_to(ROOT)}: the {name!r} sample differs from a real run; run {RUN}")
        return 1 if stale else 0
    for page, text in texts.items():
        page.write_text(BLOCK.sub(lambda m: m[1] + samples[m["name"]] + m[4], text), encoding="utf-8")
    print(f"rewrote {', '.join(samples)} in {', '.join(str(page.relative_to(ROOT)) for page in PAGES)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
