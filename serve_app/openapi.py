"""The OpenAPI document, made to tell the truth: every status, SSE bodies, the error shapes.

Routes declare what they answer with `answers(...)`; `install_openapi` then adds what FastAPI
cannot see: the Chat Completions body (read by hand, to answer in OpenAI's error shape), and which
`provider_options` each provider accepts, chosen by the request's `model`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict

from rayruns.actors.frames import FRAME_ADAPTER
from rayruns.providers.catalog import MODEL_NAME_PATTERN, PROVIDER_NAMES, provider_class

MODEL_PATTERN = rf"^({'|'.join(PROVIDER_NAMES)})/{MODEL_NAME_PATTERN}$"
DEFAULT_PROVIDER = "fake"


class ErrorBody(BaseModel):
    """Every answer other than 2xx (outside `/v1/chat/completions`)."""

    model_config = ConfigDict(extra="forbid")

    detail: str
    errors: list[dict[str, Any]] | None = None
    run_id: str | None = None


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorBody(BaseModel):
    """Errors of `/v1/chat/completions`, in OpenAI's shape."""

    error: OpenAIErrorDetail


_WHY: dict[int, str] = {
    400: "The body is not JSON, or names an unknown provider; a malformed Last-Event-ID.",
    401: "A key is required and none, or no valid one, was given.",
    404: "No such run.",
    409: "The conversation has an active run (`run_id` names it).",
    413: "The body is larger than RAYRUNS_MAX_BODY_BYTES.",
    422: "The request failed validation; `detail` says where.",
    429: "Too many live runs; retry after `Retry-After` seconds.",
    502: "The provider failed before the first chunk.",
    503: "The run registry is unavailable; retry shortly.",
    504: "The provider timed out before the first chunk.",
}

SSE = "text/event-stream"
_SSE_ONLY = "x-sse-only"


def _sse_event(data: dict[str, Any], events: list[str]) -> dict[str, Any]:
    """One Server-Sent Event (schemathesis and OpenAPI 3.2 read the schema per event)."""
    return {
        "type": "object",
        "description": "One event of the stream; the last one's data is `[DONE]` (docs/api.md)",
        "required": ["data"],
        "properties": {
            "event": {"type": "string", "enum": events},
            "id": {"type": "string", "pattern": "^[0-9]+$"},
            # JSON of `x-data-schema`, or `[DONE]` on the last event.
            "data": {"type": "string", "x-data-schema": data},
        },
    }


RUN_EVENTS = _sse_event({"$ref": "#/components/schemas/Frame"}, ["message", "error"])
CHUNK_EVENTS = _sse_event({"type": "object", "description": "a chat.completion.chunk"}, ["message"])


def answers(
    *statuses: int,
    ok: type[BaseModel] | None = None,
    sse: dict[str, Any] | None = None,
    json_ok: bool = True,
    openai_errors: bool = False,
) -> dict[int | str, dict[str, Any]]:
    """The `responses` of a route: its 200 (JSON, SSE or both) and each error status it gives."""
    content: dict[str, Any] = {}
    if json_ok:
        content["application/json"] = {"schema": {}}
    if sse is not None:
        content[SSE] = {"schema": sse}
    out: dict[int | str, dict[str, Any]] = {200: {"description": "OK", "content": content}}
    if not json_ok:  # FastAPI adds its JSON default to every 200: `install_openapi` drops it
        out[200][_SSE_ONLY] = True
    if ok is not None:
        out[200]["model"] = ok
    for status in statuses:
        body = OpenAIErrorBody if openai_errors and status not in (413, 503) else ErrorBody
        out[status] = {"model": body, "description": _WHY[status]}
    return out


def _options_by_model(field: str = "model") -> list[dict[str, Any]]:
    """JSON-schema `if`/`then` pairs: `provider_options` follows the provider named in `model`."""
    rules: list[dict[str, Any]] = []
    for name in PROVIDER_NAMES:
        options = provider_class(name).options_model.model_json_schema(
            ref_template="#/components/schemas/{model}"
        )
        options.pop("$defs", None)
        names_it: dict[str, Any] = {
            "properties": {field: {"pattern": f"^{name}/"}},
            "required": [field],
        }
        if name == DEFAULT_PROVIDER:
            names_it = {"anyOf": [names_it, {"not": {"required": [field]}}]}
        rules.append({"if": names_it, "then": {"properties": {"provider_options": options}}})
    return rules


def _option_defs() -> dict[str, Any]:
    defs: dict[str, Any] = {}
    for name in PROVIDER_NAMES:
        schema = provider_class(name).options_model.model_json_schema(
            ref_template="#/components/schemas/{model}"
        )
        defs.update(schema.get("$defs", {}))
    return defs


def _not_null(param: dict[str, Any]) -> None:
    """A parameter left out is absent, never `null`: a client cannot send one as null."""
    schema = param["schema"]
    if schema.get("type") == "integer":  # declared by the route, over the str it reads
        schema.pop("anyOf", None)
        schema.pop("maxLength", None)
        return
    branches = [b for b in schema.get("anyOf", ()) if b.get("type") != "null"]
    if "anyOf" in schema and len(branches) < len(schema["anyOf"]):
        del schema["anyOf"]
        if len(branches) == 1:
            schema.update(branches[0])
        else:
            schema["anyOf"] = branches


def _body_ref(doc: dict[str, Any], path: str) -> str | None:
    body = doc["paths"].get(path, {}).get("post", {}).get("requestBody")
    if body is None:
        return None
    ref: str | None = body["content"]["application/json"]["schema"].get("$ref")
    return None if ref is None else ref.rsplit("/", 1)[-1]


def install_openapi(
    app: FastAPI, chat_body: type[BaseModel], server_tools: Sequence[str] = ()
) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        chat = chat_body.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(chat.pop("$defs", {}))
        schemas[chat_body.__name__] = chat
        doc["paths"]["/v1/chat/completions"]["post"]["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"$ref": f"#/components/schemas/{chat_body.__name__}"}
                }
            },
        }
        schemas.update(_option_defs())
        frames = FRAME_ADAPTER.json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(frames.pop("$defs", {}))
        schemas["Frame"] = frames
        for name in (_body_ref(doc, "/v1/runs"), chat_body.__name__):
            if name is None:
                continue
            body = schemas[name]
            body["properties"]["model"]["pattern"] = MODEL_PATTERN
            body["allOf"] = _options_by_model()
        for item in doc["paths"].values():
            for operation in item.values():
                ok = operation["responses"].get("200", {})
                if ok.pop(_SSE_ONLY, False):
                    ok["content"].pop("application/json", None)
                for param in operation.get("parameters", ()):
                    _not_null(param)
                if operation.get("security"):
                    # A key is needed only once one exists (serve_app/auth.py): on a server
                    # without keys every route is open, so no credentials is a valid choice.
                    operation["security"].append({})
        if "ServerToolRef" in schemas:
            # Only registered server tools may be named; without any, no server entry is valid.
            name = schemas["ServerToolRef"]["properties"]["name"]
            if server_tools:
                name["enum"] = list(server_tools)
            else:
                name["not"] = {}
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
