"""Generates the Python stubs and Envoy's descriptor set from proto/, so neither is ever edited by hand.

`python -m recommender.gateway.codegen` writes them; `--check` regenerates into a temporary folder and fails if the
files in the tree are missing or differ (stale after a proto change).
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

from recommender.gateway.paths import DESCRIPTOR, OPENAPI

# The repository (codegen runs from a source tree: a checkout, or the package's build).
ROOT = Path(__file__).resolve().parents[3]
PROTO_DIR = ROOT / "proto"
STUBS_DIR = ROOT / "services"
PROTO_FILES = ("recommender/v1/recommender.proto",)
STUB_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def _include_dirs() -> list[str]:
    """googleapis' google/api/*.proto ship in googleapis-common-protos; protobuf's own types in grpcio-tools."""
    import google.api  # the googleapis-common-protos package

    googleapis = Path(next(iter(google.api.__path__))).parents[1]
    well_known = Path(str(resources.files("grpc_tools") / "_proto"))
    return [str(PROTO_DIR), str(googleapis), str(well_known)]


def _plugin(name: str) -> str:
    """mypy-protobuf's protoc plugins: beside this Python, or on PATH (as in pip's isolated build environment)."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise SystemExit(f"{name} not found: install mypy-protobuf")
    return found


def generate(stubs_dir: Path, descriptor: Path) -> None:
    from grpc_tools import protoc

    stubs_dir.mkdir(parents=True, exist_ok=True)
    descriptor.parent.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        *(f"-I{d}" for d in _include_dirs()),
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={stubs_dir}",
        f"--grpc_python_out={stubs_dir}",
        f"--mypy_out={stubs_dir}",
        f"--mypy_grpc_out={stubs_dir}",
        f"--descriptor_set_out={descriptor}",
        "--include_imports",
        "--include_source_info",
        *PROTO_FILES,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the messages above")
    write_openapi(descriptor, descriptor.with_name(OPENAPI.name))


def write_openapi(descriptor: Path, target: Path) -> None:
    """The OpenAPI document of the JSON API, from the descriptor set just written."""
    import json

    from recommender.gateway.contract import Contract
    from recommender.gateway.openapi import document
    from recommender.v1 import SERVICE_NAME

    service = SERVICE_NAME
    text = json.dumps(document(Contract(descriptor, service), "Recommender", "v1"), indent=2) + "\n"
    target.write_text(text, encoding="utf-8")


def generated_files(stubs_dir: Path) -> list[Path]:
    return [stubs_dir / f"{proto.removesuffix('.proto')}{suffix}" for proto in PROTO_FILES for suffix in STUB_SUFFIXES]


def stale_files() -> list[str]:
    """Files in the tree that are missing or differ from a fresh generation."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh_stubs, fresh_descriptor = Path(tmp) / "stubs", Path(tmp) / "recommender.binpb"
        generate(fresh_stubs, fresh_descriptor)
        pairs = list(zip(generated_files(fresh_stubs), generated_files(STUBS_DIR), strict=True))
        pairs += [(fresh_descriptor, DESCRIPTOR), (fresh_descriptor.with_name(OPENAPI.name), OPENAPI)]
        return [
            str(current.relative_to(ROOT))
            for fresh, current in pairs
            if not current.exists() or not filecmp.cmp(fresh, current, shallow=False)
        ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if generated files are missing or stale")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        if stale:
            print("stale or missing generated files (run `python -m recommender.gateway.codegen`):", *stale, sep="\n  ")
            return 1
        print("generated files are up to date")
        return 0
    generate(STUBS_DIR, DESCRIPTOR)
    print(f"generated stubs under {STUBS_DIR.relative_to(ROOT)}/recommender/v1 and {DESCRIPTOR.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
