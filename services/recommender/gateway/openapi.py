"""The OpenAPI 3 document of the JSON API, made from the descriptor set at build time (by gateway/codegen.py, as
Envoy's routes are made from it at start-up): every google.api.http binding with its parameters, its JSON body and
its answers, the shape of every message, the error shape {"detail": ...} that every failure has, which calls need
a credential, and every limit the service enforces on a request (model/validation.py's), so that the document
promises exactly what is accepted."""

from __future__ import annotations

import re
from typing import Any

from recommender.gateway.contract import Contract, Field, HttpRule, JsonKind
from recommender.model import validation as v
from recommender.v1 import STATE_CHANGING

ERROR_STATUSES = {
    "400": "bad input: the detail names the field (or the entry naming a book that is not in the catalogue)",
    "401": "a credential is needed (RECOMMENDER_API_KEY or a JWT): refused before the body is read",
    "403": "the credential is not accepted, or a cross-origin request or an unknown Host",
    "404": "no such thing (an unknown path, version, answer, or a book or reader that is not stored)",
    "405": "the path takes another method",
    "409": "the current state forbids the call: a retrain is running, no canary runs, or the active version "
    "changed meanwhile",
    "413": "the request body is too large",
    "415": "the request body is not declared as JSON",
    "431": "the request headers are too large, or too many",
    "500": "an internal error: the detail gives the request id to find it in the log",
    "503": "no model yet, or the database cannot be reached",
}

_ID = {"type": "integer", "format": "int32", "minimum": 1, "maximum": v.MAX_ID}
_LIMIT = {"minimum": 1, "maximum": v.MAX_LIMIT}
_NO_NUL = "^[^\\u0000]*$"
_TIMESTAMP = {
    "type": "integer",
    "format": "int64",
    "minimum": 1,
    "maximum": v.MAX_TIMESTAMP,
    "description": "Unix seconds; left out for now. A time ahead of the server's clock counts as now.",
}
_VERSION = "^\\s*[0-9A-Za-z._-]{%d,%d}\\s*$"


def _text(limit: int) -> dict[str, Any]:
    return {"type": "string", "maxLength": limit, "pattern": _NO_NUL}


def _batch(name: str) -> dict[str, Any]:
    return {"minItems": 1, "maxItems": v.MAX_BATCH, "description": f"1 to {v.MAX_BATCH} {name}, in one transaction"}


_GENRES = {
    "type": "array",
    "maxItems": v.MAX_FILTER_GENRES,
    "items": _text(v.MAX_GENRE),
    "description": f"any of these genres (repeat the parameter), at most {v.MAX_FILTER_GENRES}",
}
# What Recommend and RecommendForSession may restrict their answers to.
_FILTERS: dict[str, dict[str, Any]] = {
    "limit": _LIMIT,
    "genre": _GENRES,
    "exclude": {
        "type": "array",
        "maxItems": v.MAX_EXCLUDED,
        "items": _ID,
        "description": f"books never in the answer (repeat the parameter), at most {v.MAX_EXCLUDED}",
    },
    "min_year": {"minimum": v.MIN_YEAR, "maximum": v.MAX_YEAR},
    "max_year": {"minimum": v.MIN_YEAR, "maximum": v.MAX_YEAR},
    "max_per_author": _LIMIT,
}


# Beyond the types: what the service refuses, per message and field. Field schemas here replace the generated ones
# where "type" is given, and add to them otherwise.
CONSTRAINTS: dict[str, dict[str, dict[str, Any]]] = {
    "RecommendRequest": {
        "user_id": _ID,
        **_FILTERS,
        "recommendation_id": {"format": "uuid", "description": "the answer this call continues (its next page)"},
        "offset": {"minimum": 0, "maximum": 1000},
    },
    "RecommendForSessionRequest": {
        "book_ids": {
            "type": "array",
            "minItems": 1,
            "maxItems": v.MAX_LIMIT,
            "items": _ID,
            "description": f"the books the visitor opened, 1 to {v.MAX_LIMIT}",
        },
        **_FILTERS,
    },
    "DeleteUserRequest": {"user_id": _ID},
    "DeleteBookRequest": {"book_id": _ID},
    "PopularBooksRequest": {"days": {"minimum": 1, "maximum": 365}, "limit": _LIMIT, "genre": _GENRES},
    "NewBooksRequest": {"limit": _LIMIT, "genre": _GENRES},
    "SimilarBooksRequest": {"book_id": _ID, "limit": _LIMIT},
    "UserInteractionsRequest": {"user_id": _ID, "limit": _LIMIT},
    "OnlineHistoryRequest": {
        "bucket_minutes": {"minimum": 1, "maximum": v.MAX_BUCKET_MINUTES},
        "hours": {"minimum": 1, "maximum": v.MAX_HISTORY_HOURS},
    },
    "RollbackRequest": {"version": {"pattern": _VERSION % (0, v.MAX_VERSION)}},
    "StartCanaryRequest": {
        "version": {"pattern": _VERSION % (1, v.MAX_VERSION)},
        "share": {"exclusiveMinimum": True, "minimum": 0, "exclusiveMaximum": True, "maximum": 1},
    },
    "AbortCanaryRequest": {"reason": _text(v.MAX_REASON)},
    "RecordInteractionsRequest": {"interactions": _batch("interactions")},
    "InteractionInput": {
        "user_id": _ID,
        "book_id": _ID,
        "rating": {"minimum": 0, "maximum": v.MAX_RATING},
        "timestamp": _TIMESTAMP,
        "recommendation_id": {"format": "uuid"},
    },
    "UpsertBooksRequest": {"books": _batch("books")},
    "BookInput": {
        "book_id": _ID,
        "title": {**_text(v.MAX_TITLE), "pattern": "^[^\\u0000]*[^\\s\\u0000][^\\u0000]*$"},
        "authors": _text(v.MAX_AUTHORS),
        "description": _text(v.MAX_DESCRIPTION),
        "genres": {
            "type": "array",
            "maxItems": v.MAX_GENRES,
            "items": _text(v.MAX_GENRE),
            "description": f"at most {v.MAX_GENRES}, each at most {v.MAX_GENRE} characters",
        },
        "published_year": {"minimum": v.MIN_YEAR, "maximum": v.MAX_YEAR},
    },
    "RecordFeedbackRequest": {"events": _batch("events")},
    "FeedbackEvent": {
        "recommendation_id": {"format": "uuid"},
        "book_id": _ID,
        "event": {"enum": list(v.FEEDBACK_EVENTS)},
        "timestamp": _TIMESTAMP,
    },
}
# Fields a request must give (the others may be left out, or sent as null).
REQUIRED: dict[str, list[str]] = {
    "RecommendRequest": ["user_id"],
    "RecommendForSessionRequest": ["book_ids"],
    "StartCanaryRequest": ["version"],
    "RecordInteractionsRequest": ["interactions"],
    "InteractionInput": ["user_id", "book_id"],
    "UpsertBooksRequest": ["books"],
    "BookInput": ["book_id"],
    "RecordFeedbackRequest": ["events"],
    "FeedbackEvent": ["recommendation_id", "book_id", "event"],
}
SECURITY_SCHEMES = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "RECOMMENDER_API_KEY, or a JWT (RECOMMENDER_JWT_SECRET / RECOMMENDER_JWT_PUBLIC_KEY); needed "
        "only once one is configured",
    },
    "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key", "description": "RECOMMENDER_API_KEY"},
}


def document(contract: Contract, title: str, version: str) -> dict[str, Any]:
    rules = contract.rules()
    paths: dict[str, dict[str, Any]] = {}
    for rule in rules:
        paths.setdefault(_path(rule.path), {})[rule.method.lower()] = _operation(contract, rule)
    requests = set(contract.reachable([rule.request for rule in rules]))
    messages = contract.reachable([m for rule in rules for m in (rule.request, rule.response)])
    schemas = {_name(message): _schema(contract, message, strict=message in requests) for message in messages}
    schemas["Error"] = {
        "type": "object",
        "properties": {"detail": {"type": "string", "description": "what went wrong, in words a user can act on"}},
        "required": ["detail"],
        "additionalProperties": False,
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": title,
            "version": version,
            "description": "The Recommender's RPCs as JSON over HTTP, through Envoy's gRPC-JSON transcoder. Field "
            'names are snake_case; zero values are printed. Every error is {"detail": "..."}.',
        },
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": SECURITY_SCHEMES},
    }


def _path(template: str) -> str:
    return re.sub(r"\{([^}=]+)(=[^}]*)?\}", r"{\1}", template)


def _operation(contract: Contract, rule: HttpRule) -> dict[str, Any]:
    fields = contract.fields(rule.request)
    in_path = set(re.findall(r"\{([^}=]+)", rule.path))
    required = set(REQUIRED.get(_name(rule.request), [])) | in_path
    parameters = [
        {
            "name": field.name,
            "in": "path" if field.name in in_path else "query",
            "required": field.name in required,
            "description": field.doc,
            "schema": _constrained(field, _name(rule.request)),
        }
        for field in fields
        if field.name in in_path or (rule.body != "*" and field.kind is not JsonKind.MESSAGE)
    ]
    error = {"description": "", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    responses: dict[str, Any] = {
        "200": {
            "description": "OK",
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{_name(rule.response)}"}}},
        }
    }
    responses |= {status: {**error, "description": text} for status, text in ERROR_STATUSES.items()}
    operation: dict[str, Any] = {
        "operationId": rule.rpc,
        "summary": rule.doc.split("\n", 1)[0] if rule.doc else rule.rpc,
        "description": rule.doc,
        "responses": responses,
    }
    if parameters:
        operation["parameters"] = parameters
    if rule.rpc in STATE_CHANGING:
        operation["security"] = [{"bearer": []}, {"apiKey": []}]
    if rule.body == "*":
        operation["requestBody"] = {
            "required": bool(REQUIRED.get(_name(rule.request))),  # POST /api/v1/retrain takes none, as the guide
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{_name(rule.request)}"}}},
        }
    return operation


def _name(message: str) -> str:
    return message.rsplit(".", 1)[-1]


def _schema(contract: Contract, message: str, strict: bool) -> dict[str, Any]:
    """A message as JSON. Answers print every field but unset messages and unset optional fields; requests may
    leave any out (or send null), and the gateway refuses fields a message does not have."""
    fields = contract.fields(message)
    if not strict:
        properties = {field.name: _field_schema(field) for field in fields}
        printed = [f.name for f in fields if not f.presence]
        return {
            "type": "object",
            "properties": properties,
            **({"description": contract.doc(message)} if contract.doc(message) else {}),
            **({"required": printed} if printed else {}),
        }
    required = REQUIRED.get(_name(message), [])
    properties = {
        # The JSON mapping reads null as "left out"; a required field must be given.
        field.name: _constrained(field, _name(message))
        if field.name in required
        else _nullable(_constrained(field, _name(message)))
        for field in fields
    }
    schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if contract.doc(message):
        schema["description"] = contract.doc(message)
    if required:
        schema["required"] = required
    return schema


def _constrained(field: Field, message: str) -> dict[str, Any]:
    """A request field's schema with what the service enforces on it."""
    schema = _field_schema(field)
    extra = CONSTRAINTS.get(message, {}).get(field.name)
    if extra is None:
        return schema
    if "type" in extra:  # replaces the generated one (a 64-bit integer sent as a number, a list of strings)
        doc = " ".join(filter(None, (field.doc, extra.get("description"))))
        replaced = {key: value for key, value in extra.items() if key != "description"}
        return replaced | ({"description": doc} if doc else {})
    if schema.get("type") == "array":
        return {**schema, **{k: extra[k] for k in ("minItems", "maxItems") if k in extra}}
    return {**schema, **extra}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        return {"allOf": [schema], "nullable": True}
    return {**schema, "nullable": True} if schema else schema


def _field_schema(field: Field) -> dict[str, Any]:
    if field.kind is JsonKind.MESSAGE:
        item: dict[str, Any] = {"$ref": f"#/components/schemas/{_name(field.message)}"}
    elif field.kind is JsonKind.FREE:
        item = {}
    elif field.kind is JsonKind.LIST:
        item = {"type": "array"}
    elif field.kind is JsonKind.BOOL:
        item = {"type": "boolean"}
    elif field.kind is JsonKind.INTEGER:
        item = {"type": "integer", "format": field.format}
    elif field.kind is JsonKind.NUMBER:
        item = {"type": "number", "format": field.format}
    else:
        item = {"type": "string", **({"format": field.format} if field.format else {})}
    schema = {"type": "array", "items": item} if field.repeated else item
    if field.doc and "$ref" not in schema:
        schema = {**schema, "description": field.doc}
    return schema
