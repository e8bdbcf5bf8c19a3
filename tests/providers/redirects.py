"""Every provider option we know of that could send a request, or its key, somewhere else.

Each is refused for every vendor: spellings of base URLs, HTTP options (google-genai takes
`http_options` in a request's config, in snake_case or camelCase, top level or nested), extra
headers, query and body, keys, clients, retries, a timeout above the server's, and the fields a
provider sets itself.
"""

from __future__ import annotations

from typing import Any

ABOVE_ANY_CAP_S = 10**7


def redirecting_options(url: str) -> list[dict[str, Any]]:
    headers = {"x-goog-api-key": "other", "authorization": "Bearer other", "host": "other"}
    http_options: list[dict[str, Any]] = [
        {"base_url": url},
        {"baseUrl": url},
        {"headers": headers},
        {"api_version": "../../other"},
        {"apiVersion": "../../other"},
        {"client_args": {"base_url": url}},
        {"async_client_args": {"base_url": url}},
        {"asyncClientArgs": {"baseUrl": url}},
        {"retry_options": {"attempts": 10}},
        {"retryOptions": {"attempts": 10}},
        {"timeout": ABOVE_ANY_CAP_S},
        {"extra_body": {"model": "other"}},
        {"extraBody": {"model": "other"}},
    ]
    options: list[dict[str, Any]] = [
        {name: nested} for name in ("http_options", "httpOptions") for nested in http_options
    ]
    for name in ("base_url", "baseUrl", "api_base", "apiBase", "endpoint", "url", "host"):
        options.append({name: url})
    for name in ("extra_headers", "extraHeaders", "default_headers", "defaultHeaders", "headers"):
        options.append({name: headers})
    for name in ("extra_query", "extraQuery", "default_query", "defaultQuery", "query"):
        options.append({name: {"key": "other"}})
    for name in ("extra_body", "extraBody"):
        options.append({name: {"model": "other", "stream": False}})
    for name in ("api_key", "apiKey", "key", "authorization", "auth_token", "credentials"):
        options.append({name: "other"})
    for name in ("client", "http_client", "httpClient", "httpx_client", "httpx_async_client"):
        options.append({name: {"base_url": url}})
    options += [
        {"httpxAsyncClient": {"baseUrl": url}},
        {"aiohttp_client": {"base_url": url}},
        {"max_retries": 10},
        {"maxRetries": 10},
        {"retry_options": {"attempts": 10}},
        {"retryOptions": {"attempts": 10}},
        {"timeout": ABOVE_ANY_CAP_S},
        {"should_return_http_response": True},
        {"shouldReturnHttpResponse": True},
        {"vertexai": True},
        {"project": "other"},
        {"location": "other"},
        {"organization": "other"},
        {"workspace_id": "other"},
        {"model": "other"},
        {"messages": []},
        {"stream": False},
        {"stream_options": {"include_usage": False}},
        {"n": 3},
        {"system": "other"},
        {"system_instruction": "other"},
        {"systemInstruction": "other"},
        {"candidate_count": 2},
        {"automatic_function_calling": {"disable": False}},
        {"automaticFunctionCalling": {"disable": False}},
    ]
    return options
