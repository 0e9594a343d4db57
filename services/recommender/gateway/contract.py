"""The JSON API as the descriptor set describes it: each RPC's google.api.http binding, and the fields of its
messages as JSON sees them. Envoy's routes, the gateway's body checks and the OpenAPI document are all made from
this, so a change to the proto reaches them all. Only protobuf and googleapis' protos are needed (it runs in the
package build)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from pathlib import Path

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2

Kind = descriptor_pb2.FieldDescriptorProto

# Messages whose JSON is free-form (any JSON value).
FREE_FORM = {".google.protobuf.Struct", ".google.protobuf.Value", ".google.protobuf.ListValue"}
# Well-known messages whose JSON is a scalar: an RFC 3339 string, a duration string, a wrapped value.
SCALAR_MESSAGES = {".google.protobuf.Timestamp", ".google.protobuf.Duration"} | {
    f".google.protobuf.{name}Value"
    for name in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String")
}
INTEGERS = {Kind.TYPE_INT32, Kind.TYPE_UINT32, Kind.TYPE_SINT32, Kind.TYPE_FIXED32, Kind.TYPE_SFIXED32}
LONGS = {Kind.TYPE_INT64, Kind.TYPE_UINT64, Kind.TYPE_SINT64, Kind.TYPE_FIXED64, Kind.TYPE_SFIXED64}  # JSON strings
NUMBERS = {Kind.TYPE_DOUBLE, Kind.TYPE_FLOAT}


class JsonKind(StrEnum):
    MESSAGE = "message"  # an object of known fields
    FREE = "free"  # any JSON value
    LIST = "list"  # a JSON array of any values (google.protobuf.ListValue)
    BOOL = "bool"
    INTEGER = "integer"
    NUMBER = "number"
    STRING = "string"  # strings, 64-bit integers, enums, timestamps


@dataclass(frozen=True)
class Field:
    name: str  # as the proto names it (the JSON name the service prints)
    json_name: str  # lowerCamelCase, which the JSON mapping accepts too
    kind: JsonKind
    message: str  # the message type's full name, for MESSAGE fields
    repeated: bool
    presence: bool  # printed only when set: proto3 `optional` fields and (singular) message fields
    doc: str
    format: str = ""  # JSON Schema's format for strings and numbers: date-time, int32, int64, double


@dataclass(frozen=True)
class HttpRule:
    method: str  # GET, POST, ...
    path: str  # /api/v1/books/{book_id}/similar
    body: str  # "*": the request message is the JSON body; "": no body
    rpc: str
    request: str  # full message names
    response: str
    doc: str


class Contract:
    def __init__(self, descriptor: Path, service: str) -> None:
        self._files = descriptor_pb2.FileDescriptorSet.FromString(descriptor.read_bytes())
        self._service = service

    @cached_property
    def _messages(self) -> dict[str, tuple[descriptor_pb2.DescriptorProto, dict[tuple[int, ...], str]]]:
        found = {}
        for file in self._files.file:
            comments = {
                tuple(location.path): location.leading_comments.strip() for location in file.source_code_info.location
            }
            for index, message in enumerate(file.message_type):
                found[f".{file.package}.{message.name}"] = (message, {
                    path[2:]: text for path, text in comments.items() if path[:2] == (4, index)
                })  # fmt: skip
        return found

    def rules(self) -> list[HttpRule]:
        """The google.api.http bindings of the service's RPCs."""
        rules = []
        for file in self._files.file:
            for s_index, service in enumerate(file.service):
                if f"{file.package}.{service.name}" != self._service:
                    continue
                comments = {
                    tuple(location.path): location.leading_comments.strip()
                    for location in file.source_code_info.location
                }
                for m_index, method in enumerate(service.method):
                    rule: http_pb2.HttpRule = method.options.Extensions[annotations_pb2.http]
                    verb = rule.WhichOneof("pattern")
                    if not verb or verb == "custom":
                        continue
                    rules.append(
                        HttpRule(
                            verb.upper(),
                            getattr(rule, verb),
                            rule.body,
                            method.name,
                            method.input_type.lstrip("."),
                            method.output_type.lstrip("."),
                            comments.get((6, s_index, 2, m_index), ""),
                        )
                    )
        return rules

    def fields(self, message: str) -> list[Field]:
        """The JSON fields of a message (full name, with or without the leading dot)."""
        proto, comments = self._messages[message if message.startswith(".") else f".{message}"]
        fields = []
        for index, field in enumerate(proto.field):
            kind, type_name = _kind(field)
            fields.append(
                Field(
                    field.name,
                    field.json_name,
                    kind,
                    type_name.lstrip("."),
                    field.label == Kind.LABEL_REPEATED,
                    field.proto3_optional or (field.type == Kind.TYPE_MESSAGE and field.label != Kind.LABEL_REPEATED),
                    comments.get((2, index), ""),
                    _format(field),
                )
            )
        return fields

    def doc(self, message: str) -> str:
        return self._messages[message if message.startswith(".") else f".{message}"][1].get((), "")

    def reachable(self, messages: list[str]) -> list[str]:
        """`messages` and every message type their fields use, each once, in order of discovery."""
        seen: list[str] = []
        todo = list(messages)
        while todo:
            name = todo.pop(0)
            if name in seen:
                continue
            seen.append(name)
            todo += [f.message for f in self.fields(name) if f.kind is JsonKind.MESSAGE]
        return seen


def _kind(field: descriptor_pb2.FieldDescriptorProto) -> tuple[JsonKind, str]:
    if field.type == Kind.TYPE_MESSAGE:
        if field.type_name == ".google.protobuf.ListValue":
            return JsonKind.LIST, ""
        if field.type_name in FREE_FORM:
            return JsonKind.FREE, ""
        if field.type_name in SCALAR_MESSAGES:
            return JsonKind.STRING, ""
        return JsonKind.MESSAGE, field.type_name
    if field.type == Kind.TYPE_BOOL:
        return JsonKind.BOOL, ""
    if field.type in INTEGERS:
        return JsonKind.INTEGER, ""
    if field.type in NUMBERS:
        return JsonKind.NUMBER, ""
    return JsonKind.STRING, ""  # strings, bytes, enums, and 64-bit integers, which JSON carries as strings


def _format(field: descriptor_pb2.FieldDescriptorProto) -> str:
    if field.type_name == ".google.protobuf.Timestamp":
        return "date-time"
    if field.type in INTEGERS:
        return "int32"
    if field.type in LONGS:
        return "int64"
    return "double" if field.type in NUMBERS else ""
