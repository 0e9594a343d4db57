"""The OpenAPI 3 document of the JSON API, made from the descriptor set at build time (by recommender.codegen, as
Envoy's routes are made from it at start-up): every google.api.http binding with its parameters, its JSON body and
its answers, the shape of every message, and the error shape {"detail": ...} that every failure has."""

from __future__ import annotations

import re
from typing import Any

from recommender.gateway.contract import Contract, Field, HttpRule, JsonKind

ERROR_STATUSES = {
    "400": "bad input: the detail names the field",
    "401": "a credential is needed (RECOMMENDER_API_KEY or a JWT)",
    "403": "the credential is not accepted, or a cross-origin request or an unknown Host",
    "404": "no such thing",
    "405": "the path takes another method",
    "409": "a retrain is running",
    "413": "the request body is too large",
    "415": "the request body is not declared as JSON",
    "429": "too large for the service (a gRPC client's message)",
    "500": "an internal error: the detail gives the request id to find it in the log",
    "503": "no model yet, or the database cannot be reached",
}


def document(contract: Contract, title: str, version: str) -> dict[str, Any]:
    rules = contract.rules()
    paths: dict[str, dict[str, Any]] = {}
    for rule in rules:
        paths.setdefault(_path(rule.path), {})[rule.method.lower()] = _operation(contract, rule)
    messages = contract.reachable([m for rule in rules for m in (rule.request, rule.response)])
    schemas = {_name(message): _schema(contract, message, strict=_is_request(message, rules)) for message in messages}
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
        "components": {"schemas": schemas},
    }


def _path(template: str) -> str:
    return re.sub(r"\{([^}=]+)(=[^}]*)?\}", r"{\1}", template)


def _operation(contract: Contract, rule: HttpRule) -> dict[str, Any]:
    fields = contract.fields(rule.request)
    in_path = set(re.findall(r"\{([^}=]+)", rule.path))
    parameters = [
        {
            "name": field.name,
            "in": "path" if field.name in in_path else "query",
            "required": field.name in in_path,
            "description": field.doc,
            "schema": _field_schema(field),
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
    if rule.body == "*":
        operation["requestBody"] = {
            "required": False,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{_name(rule.request)}"}}},
        }
    return operation


def _is_request(message: str, rules: list[HttpRule]) -> bool:
    return any(message == rule.request for rule in rules)


def _name(message: str) -> str:
    return message.rsplit(".", 1)[-1]


def _schema(contract: Contract, message: str, strict: bool) -> dict[str, Any]:
    """A message as JSON. Answers print every field but unset messages and unset optional fields; requests may
    leave any out (or send null), and the gateway refuses fields a message does not have."""
    fields = contract.fields(message)
    properties = {field.name: _field_schema(field) for field in fields}
    if strict:  # the JSON mapping reads null as "left out"
        properties = {name: _nullable(schema) for name, schema in properties.items()}
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if contract.doc(message):
        schema["description"] = contract.doc(message)
    printed = [f.name for f in fields if not f.presence]
    if not strict and printed:
        schema["required"] = printed
    if strict:
        schema["additionalProperties"] = False
    return schema


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        return {"allOf": [schema], "nullable": True}
    return {**schema, "nullable": True} if schema else schema


def _field_schema(field: Field) -> dict[str, Any]:
    if field.kind is JsonKind.MESSAGE:
        item: dict[str, Any] = {"$ref": f"#/components/schemas/{_name(field.message)}"}
    elif field.kind is JsonKind.FREE:
        item = {}
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
