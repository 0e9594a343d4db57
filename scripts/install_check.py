"""The package as a user installs it: a wheel built from this tree, installed (not editable) into a fresh virtual
environment, and `recommender serve` run from an empty folder elsewhere must serve the dashboard and the JSON API.
`scripts/dev.sh installcheck` runs it; CI runs it after the tests.

    python scripts/install_check.py [--keep]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

# Run as a script (`python scripts/...`): the repository root, where bench/ lives, on the path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.servers import ROOT, started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="leave the temporary folder (its path is printed)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="recommender-install-"))
    try:
        wheel = _build(work / "dist")
        venv = work / "venv"
        _run([sys.executable, "-m", "venv", str(venv)])
        _run([str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", str(wheel)])
        folder = work / "elsewhere"
        folder.mkdir()
        settings = {"tuning": "off", "demo_books": "300", "demo_users": "100", "demo_interactions": "3000"}
        command = [str(venv / "bin" / "recommender"), "serve"]
        with started(folder, settings, command=command, timeout=300, cwd=folder) as server:
            page = httpx.get(f"{server.url}/", timeout=10)
            answer = httpx.get(f"{server.url}/api/v1/recommendations", params={"user_id": 1, "limit": 3}, timeout=10)
            document = httpx.get(f"{server.url}/api/v1/openapi.json", timeout=10)
            config = next(server.data_dir.glob("envoy-*/envoy.yaml")).read_text()
        checks = {
            "the dashboard": page.status_code == 200 and "<html" in page.text,
            "a recommendation": answer.status_code == 200 and len(answer.json()["recommendations"]) == 3,
            "the OpenAPI document": document.status_code == 200 and document.json()["openapi"].startswith("3."),
            "Envoy's files from the installed package": str(venv) in config and str(ROOT) not in config,
        }
        for name, ok in checks.items():
            print(f"{'ok' if ok else 'FAILED'}: {name}, from {wheel.name} installed in {venv}, run in {folder}")
        if not checks["a recommendation"]:
            print(f"the recommendation's answer: {answer.status_code} {answer.text[:500]}")
        return 0 if all(checks.values()) else 1
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _build(dist: Path) -> Path:
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--disable-pip-version-check", "-w", str(dist),
          str(ROOT)])  # fmt: skip
    return next(dist.glob("recommender-*.whl"))


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


if __name__ == "__main__":
    sys.exit(main())
