"""Every setting of the service, read from the environment (and command-line flags), validated once at start-up."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from recommender.model.params import ALSParams, GatePolicy, SplitParams, TrainingParams, TuningPolicy
from recommender.schedule import Schedule

_ALS, _TRAINING, _TUNING, _GATE, _SPLIT = ALSParams(), TrainingParams(), TuningPolicy(), GatePolicy(), SplitParams()
HOST = re.compile(r"^(\*|[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])$")
DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd]?)$")
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
ORIGIN = re.compile(r"^https?://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:\d{1,5})?$")


class SettingsError(ValueError):
    """A setting has a bad value; the message names the environment variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECOMMENDER_", frozen=True, extra="forbid")

    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("database_url", "DATABASE_URL"), min_length=1
    )
    grpc_host: str = Field(default="127.0.0.1", min_length=1)
    grpc_port: int = Field(default=50051, ge=0, le=65535)
    http_host: str = Field(default="127.0.0.1", min_length=1)
    http_port: int = Field(default=8001, ge=1, le=65535)
    # Off: serve gRPC only (a replica behind a gateway of its own: `recommender gateway`).
    gateway: bool = True
    # For `recommender gateway`: the replicas' gRPC addresses, host:port, comma-separated.
    upstreams: str | None = None
    # 0: a free port, so that several instances on one machine never clash; the address is logged and written to
    # <data_dir>/envoy-admin-address.
    envoy_admin_port: int = Field(default=0, ge=0, le=65535)
    data_dir: Path = Path("var")
    artifacts_dir: Path = Path("artifacts")
    # Where replicas get model versions: "local" (the artifacts folder, shared by processes on one host or a shared
    # disk) or "postgres" (the files are also stored in the database; the folder is each host's cache).
    artifact_store: Literal["local", "postgres"] = "local"
    # The CF weight of the blend, 0-1, or "auto": chosen by training on the validation split.
    alpha: float | Literal["auto"] = _TRAINING.alpha
    # Training knobs.
    train_threads: int = Field(default=_ALS.threads, ge=1, le=64)
    # auto: implicit's GPU ALS when CUDA is usable (the `gpu` extra on an NVIDIA machine), else the CPU.
    train_device: Literal["auto", "cpu", "gpu"] = "auto"
    als_factors: int = Field(default=_ALS.factors, ge=1, le=1024)
    als_iterations: int = Field(default=_ALS.iterations, ge=1, le=200)
    als_regularization: float = Field(default=_ALS.regularization, ge=0.0)
    als_confidence: float = Field(default=_ALS.confidence, gt=0.0)
    als_rating_scale: float = Field(default=_ALS.rating_scale, ge=0.0)
    popularity_prior: float = Field(default=_TRAINING.popularity_prior, ge=0.0)
    cf_prior: float = Field(default=_TRAINING.cf_prior, ge=0.0)
    # A catalogue of this many books or more gets an index at training time (model/index.py); 0: always.
    index_min_books: int = Field(default=_TRAINING.index.min_books, ge=0)
    # A reader's book signals (their authors, the series they read in order) re-rank the blend's shortlist, with
    # weights the search chooses; "off": the blend alone, from the next retrain.
    book_signals: Literal["auto", "off"] = "auto"
    # Evaluation in every retrain (see recommender.model.evaluation) and the promotion gate.
    tuning: Literal["auto", "off"] = "auto" if _TUNING.enabled else "off"
    tuning_trials: int = Field(default=_TUNING.trials, ge=1, le=10_000)
    retrain_trials: int = Field(default=_TUNING.retrain_trials, ge=1, le=10_000)
    tuning_seconds: float = Field(default=_TUNING.seconds or 0.0, ge=0.0)  # 0: no cap
    tuning_halving: bool = _TUNING.halving
    # Millions of multiply-adds a request's model maths may take with a searched configuration (0: no budget).
    cost_budget: float = Field(default=_TUNING.cost_budget or 0.0, ge=0.0)
    # Gone: a budget in milliseconds released a worse model on a slower machine. Set, it stops the start-up.
    latency_budget_ms: str | None = None
    gate_tolerance: float = Field(default=_GATE.tolerance, ge=0.0)
    eval_holdout: float = Field(default=_SPLIT.holdout, gt=0.0, lt=1.0)
    eval_min_positives: int = Field(default=_SPLIT.min_positives, ge=2)
    eval_seed: int = _SPLIT.seed
    eval_split: Literal["random", "time"] = "time" if _SPLIT.by_time else "random"
    eval_max_users: int = Field(default=_SPLIT.max_users, ge=1)
    # Operations: credentials for the calls that change state, the retrain schedule, metrics and logs.
    api_key: SecretStr | None = None  # at least 8 characters
    jwt_secret: SecretStr | None = None  # at least 16
    jwt_public_key: str | None = None  # PEM text, or the path of a PEM file
    jwt_audience: str | None = None
    auth_reads: bool = False
    # The Host names the HTTP gateway answers to, comma-separated, or "*" for any; by default the loopback names
    # when it listens on loopback (a web page that rebinds its own name to 127.0.0.1 gets nothing), else any.
    allowed_hosts: str | None = None
    # Web origins (scheme://host[:port]) whose pages may call the API from a browser (CORS), comma-separated.
    cors_origins: str | None = None
    retrain_schedule: str | None = None
    retrain_min_new_interactions: int = Field(default=0, ge=0)
    metrics_host: str = "127.0.0.1"
    # 0: a free port, logged and listed in <data_dir>/metrics-targets.json.
    metrics_port: int = Field(default=0, ge=0, le=65535)
    log_format: Literal["text", "json"] = "text"
    # Impressions (every Recommend answer, for online metrics): recorded or not, kept how long, and how long after
    # one a read of a shown book counts for it. Durations: seconds, or a number with s, m, h or d.
    impressions: bool = True
    impressions_retention: timedelta = timedelta(days=30)
    attribution_window: timedelta = timedelta(days=7)
    # Canaries: "auto" makes a retrain's candidate that passes the offline gate a canary at canary_share, promoted
    # or aborted by a sequential test of its online metrics (or aborted after canary_max_impressions).
    canary: Literal["off", "auto"] = "off"
    canary_share: float = Field(default=0.1, gt=0.0, lt=1.0)
    canary_max_impressions: int = Field(default=20_000, ge=100)
    canary_check_seconds: float = Field(default=10.0, gt=0.0, le=3600.0)
    # Dynamic batching of Recommend and SimilarBooks: how long a request waits for others, and how many at most.
    batch_wait_ms: float = Field(default=0.0, ge=0.0, le=100.0)
    batch_max: int = Field(default=32, ge=1, le=1024)
    # Serving processes behind Envoy: the main one (which also retrains) and workers that follow its versions.
    # Unset: one per core the process may use, as many as memory holds (cli/capacity.py).
    workers: int | None = Field(default=None, ge=1, le=64)
    tfidf_max_features: int = Field(default=_TRAINING.tfidf_max_features, ge=1, le=1_000_000)
    keep_versions: int = Field(default=5, ge=1, le=1000)
    # Demo catalogue written into an empty database on first start.
    demo_seed: int = 42
    demo_books: int = Field(default=2000, ge=0)
    demo_users: int = Field(default=600, ge=0)
    demo_interactions: int = Field(default=24_000, ge=0)

    @field_validator("alpha")
    @classmethod
    def _alpha_range(cls, alpha: float | str) -> float | str:
        if isinstance(alpha, float) and not 0.0 <= alpha <= 1.0:
            raise ValueError("must be between 0 and 1, or auto")
        return alpha

    @property
    def tunes_blend(self) -> bool:
        """Alpha and the popularity prior are searched unless alpha is set to a number."""
        return self.alpha == "auto" or "alpha" not in self.model_fields_set

    @property
    def start_alpha(self) -> float:
        """The alpha to train with (and to show before the first model): "auto" starts from the default."""
        return _TRAINING.alpha if self.alpha == "auto" else float(self.alpha)

    @field_validator("latency_budget_ms")
    @classmethod
    def _gone(cls, value: str | None) -> None:
        if value is not None:
            raise ValueError(
                "is no longer read: a budget in milliseconds chose a worse model on a slower machine; "
                "RECOMMENDER_COST_BUDGET states it in millions of multiply-adds (docs/model.md)"
            )
        return None

    @field_validator("impressions_retention", "attribution_window", mode="before")
    @classmethod
    def _duration(cls, value: object) -> object:
        if isinstance(value, str) and (found := DURATION.match(value.strip())):
            return timedelta(seconds=float(found[1]) * DURATION_UNITS[found[2] or "s"])
        return value

    @field_validator("impressions_retention", "attribution_window")
    @classmethod
    def _positive_duration(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be longer than 0")
        return value

    @field_validator("retrain_schedule")
    @classmethod
    def _schedule(cls, text: str | None) -> str | None:
        return Schedule.parse(text).text if text else None

    @field_validator("jwt_public_key")
    @classmethod
    def _public_key(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if "-----BEGIN" not in value:
            try:
                value = Path(value).read_text(encoding="utf-8")
            except OSError as exc:
                raise ValueError(f"must be a PEM public key or the path of one ({exc.strerror})") from None
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        try:
            load_pem_public_key(value.encode())
        except (ValueError, TypeError) as exc:
            raise ValueError(f"is not a PEM public key that can be read ({exc})") from None
        return value

    @field_validator("api_key", "jwt_secret", mode="before")
    @classmethod
    def _secret(cls, value: object, info: ValidationInfo) -> object:
        if isinstance(value, str):
            if value != value.strip():
                raise ValueError("must not start or end with spaces (a blank or padded key is a mistake)")
            shortest = 8 if info.field_name == "api_key" else 16
            if len(value) < shortest:
                raise ValueError(f"must be at least {shortest} characters long")
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, value: str | None) -> str | None:
        if value is None:
            return None
        hosts = [host.strip() for host in value.split(",") if host.strip()]
        if not hosts or any(not HOST.match(host) for host in hosts):
            raise ValueError('must be host names or addresses, comma-separated (no ports), or "*"')
        return ",".join(hosts)

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: str | None) -> str | None:
        if value is None:
            return None
        origins = [origin.strip().rstrip("/") for origin in value.split(",") if origin.strip()]
        if not origins or any(not ORIGIN.match(origin) for origin in origins):
            raise ValueError("must be web origins like https://app.example.com:8443, comma-separated")
        return ",".join(origins)

    @property
    def hosts(self) -> list[str]:
        """The Host names the gateway answers to (["*"]: any)."""
        if self.allowed_hosts:
            return self.allowed_hosts.split(",")
        loopback = self.http_host in ("127.0.0.1", "localhost", "::1", "[::1]") or self.http_host.startswith("127.")
        return ["localhost", "127.0.0.1", "[::1]"] if loopback else ["*"]

    @property
    def origins(self) -> list[str]:
        return self.cors_origins.split(",") if self.cors_origins else []

    @property
    def has_credentials(self) -> bool:
        return bool(self.api_key or self.jwt_secret or self.jwt_public_key)

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, url: str | None) -> str | None:
        if url is not None and urlsplit(url).scheme not in ("postgresql", "postgres"):
            raise ValueError("must be a PostgreSQL URL like postgresql://user:password@host:5432/dbname")
        return url

    @property
    def embedded_pgdata(self) -> Path:
        return self.data_dir / "pgdata"


_SECRETS = {"api_key", "jwt_secret", "database_url"}  # never echoed, not even in errors


def _env_name(field: str) -> str:
    return "DATABASE_URL" if field == "database_url" else f"RECOMMENDER_{field.upper()}"


def _flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with command-line values (None = not given) taking precedence.

    A bad value is reported under the name it was given by: the flag when it came from the command line."""
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else "?"
            name = _flag_name(field) if field in given else _env_name(field)
            message = str(error["msg"]).removeprefix("Value error, ")
            shown = "a value that is not shown" if field in _SECRETS else repr(error.get("input"))
            problems.append(f"{name}: {message} (got {shown})")
        raise SettingsError("invalid setting: " + "; ".join(problems)) from None
