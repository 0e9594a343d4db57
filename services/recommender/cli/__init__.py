"""The `recommender` command: serve, worker, gateway, train, tune, evaluate, import. `main` reads the settings
once (environment and flags), then hands over to the command's module: serving.py for the long-running processes,
jobs.py for the ones that run and end."""

from __future__ import annotations

import errno
import os
import signal
import sys

from recommender import logs
from recommender.cli.arguments import parser
from recommender.cli.jobs import evaluate, import_files, train, tune
from recommender.cli.serving import gateway, serve, worker
from recommender.settings import Settings, SettingsError, load_settings
from recommender.storage.db import DatabaseUnavailable


def main(argv: list[str] | None = None) -> int:
    # The only children (pg_ctl, Envoy) exec at once, so gRPC's fork handlers have nothing to protect.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    args = parser().parse_args(argv)
    try:
        upstreams = ",".join(getattr(args, "upstream", None) or []) or None
        given = {name: getattr(args, name, None) for name in Settings.model_fields}
        settings = load_settings(**(given | {"upstreams": upstreams}))
    except SettingsError as exc:
        print(f"recommender: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_format)
    if settings.train_device == "gpu" and args.command in ("serve", "train", None):
        from recommender.model.cf import cuda_available

        if not cuda_available():
            print(
                "recommender: RECOMMENDER_TRAIN_DEVICE=gpu, but CUDA is not usable here: install the package with its "
                "gpu extra (recommender[gpu]) on a machine with an NVIDIA GPU, or set it to auto or cpu",
                file=sys.stderr,
            )
            return 2
    # A closed terminal (SIGHUP) or a plain kill (SIGTERM) stops as cleanly as Ctrl-C: the embedded database and
    # Envoy are stopped on the way out. `serve` replaces these with its own handlers once its event loop runs.
    for sig in (signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, _interrupt)
    command = args.command or "serve"
    problem = _unusable_folders(settings, command)
    if problem:
        print(f"recommender: invalid setting: {problem}", file=sys.stderr)
        return 2
    try:
        if command == "serve":
            return serve(settings)
        if command == "worker":
            return worker(settings)
        if command == "gateway":
            return gateway(settings)
        if command == "train":
            return train(settings, args.force)
        if command == "evaluate":
            return evaluate(settings, args.books, args.interactions, args.out)
        if command == "tune":
            return tune(settings)
        return import_files(settings, args.books, args.interactions)
    except DatabaseUnavailable as exc:
        where = "DATABASE_URL" if settings.database_url else f"the embedded PostgreSQL in {settings.embedded_pgdata}"
        print(f"recommender: {where}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _unusable_folders(settings: Settings, command: str) -> str:
    """Why the data or artifacts folder cannot be used (created when missing), naming its setting; "" when both
    can. `evaluate` uses neither."""
    folders = {"RECOMMENDER_DATA_DIR": settings.data_dir}
    if command in ("serve", "train", "tune"):
        folders["RECOMMENDER_ARTIFACTS_DIR"] = settings.artifacts_dir
    if command == "evaluate":
        return ""
    for name, folder in folders.items():
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if not os.access(folder, os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, "not writable")
        except OSError as exc:
            return f"{name}: cannot use {str(folder)!r} as a folder ({exc.strerror or exc})"
    return ""


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)
