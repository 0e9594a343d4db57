"""The command line's flags (each also a RECOMMENDER_* variable: settings.py)."""

from __future__ import annotations

import argparse
from pathlib import Path


def _alpha(value: str) -> float | str:
    return value if value == "auto" else float(value)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recommender", description="Hybrid book recommender (gRPC + JSON/HTTP).")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--database-url", dest="database_url", help="PostgreSQL URL (env DATABASE_URL)")
    common.add_argument("--data-dir", type=Path, help="embedded database folder (env RECOMMENDER_DATA_DIR)")
    common.add_argument("--artifacts-dir", type=Path, help="model versions (env RECOMMENDER_ARTIFACTS_DIR)")
    training = argparse.ArgumentParser(add_help=False)
    training.add_argument("--alpha", type=_alpha, help="CF weight in the blend, 0-1, or auto (env RECOMMENDER_ALPHA)")
    training.add_argument("--train-threads", type=int, help="training threads (env RECOMMENDER_TRAIN_THREADS)")
    commands = parser.add_subparsers(dest="command")
    serve_cmd = commands.add_parser("serve", parents=[common, training], help="run the service (the default)")
    serve_cmd.add_argument("--grpc-host", help="gRPC listen host (env RECOMMENDER_GRPC_HOST)")
    serve_cmd.add_argument("--grpc-port", type=int, help="gRPC port (env RECOMMENDER_GRPC_PORT)")
    serve_cmd.add_argument("--http-host", help="JSON/HTTP gateway listen host (env RECOMMENDER_HTTP_HOST)")
    serve_cmd.add_argument("--http-port", type=int, help="JSON/HTTP gateway port (env RECOMMENDER_HTTP_PORT)")
    serve_cmd.add_argument(
        "--no-gateway",
        dest="gateway",
        action="store_const",
        const=False,
        help="gRPC only, for a replica behind `recommender gateway` (env RECOMMENDER_GATEWAY=false)",
    )
    gateway_cmd = commands.add_parser(
        "gateway", parents=[common], help="run the JSON/HTTP gateway (Envoy) alone, in front of replicas"
    )
    gateway_cmd.add_argument(
        "--upstream",
        dest="upstream",
        action="append",
        metavar="HOST:PORT",
        help="a replica's gRPC address; repeat for each (env RECOMMENDER_UPSTREAMS, comma-separated)",
    )
    gateway_cmd.add_argument("--http-host", help="listen host (env RECOMMENDER_HTTP_HOST)")
    gateway_cmd.add_argument("--http-port", type=int, help="listen port (env RECOMMENDER_HTTP_PORT)")
    train_cmd = commands.add_parser("train", parents=[common, training], help="train a new model version now")
    train_cmd.add_argument("--force", action="store_true", help="promote it even if it scores worse than the active")
    commands.add_parser("worker", parents=[common])  # a serving process started by `serve` (RECOMMENDER_WORKERS)
    commands.add_parser(
        "tune",
        parents=[common, training],
        help="search for a better configuration now (the next retrains start from it); nothing is released",
    )
    evaluate_cmd = commands.add_parser(
        "evaluate", parents=[training], help="run the evaluation protocol on CSV files in the import format"
    )
    evaluate_cmd.add_argument("--books", type=Path, required=True, help="CSV as for import")
    evaluate_cmd.add_argument("--interactions", type=Path, required=True, help="CSV as for import")
    evaluate_cmd.add_argument("--out", type=Path, help="write evaluation.csv and evaluation.png here")
    import_cmd = commands.add_parser("import", parents=[common], help="import books and interactions from CSV")
    import_cmd.add_argument("--books", type=Path, help="CSV: book_id,title[,authors,description,genres,published_year]")
    import_cmd.add_argument("--interactions", type=Path, help="CSV: user_id,book_id[,rating,timestamp]")
    return parser
