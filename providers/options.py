"""Which `provider_options` a client may set for a vendor: an allow-list, and nothing else.

Options reach the vendor's request body, so a name the SDK would read as transport (a base URL,
headers, the HTTP client, retries, a key) must never get through: each vendor names the request
fields of its SDK's typed parameters that a client may set, and every spelling the SDK accepts
for them. Everything else is refused, with a message naming what is allowed. Checking names
needs no SDK, so the API validates options without importing one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import ConfigDict, Field
from pydantic.alias_generators import to_camel

from rayruns.providers.base import CommonOptions
from rayruns.providers.errors import InvalidProviderOptions

MAX_OPTIONS_BYTES = 16 * 1024  # `provider_options` serialized as JSON
MAX_TIMEOUT_S = 3600.0


class VendorOptions(CommonOptions):
    """The common options, `timeout`, and the vendor's request fields in `passthrough`.

    After `admit`, extras hold only `passthrough` fields under their canonical names; the
    provider sends them in the request body as given.
    """

    model_config = ConfigDict(extra="allow", json_schema_extra=lambda s, cls: _allow_list(s, cls))

    # Request fields of the SDK's typed parameters a client may set (canonical names).
    passthrough: ClassVar[frozenset[str]] = frozenset()
    # Whether the SDK also accepts the camelCase spelling of every name (google-genai does).
    camel_case: ClassVar[bool] = False
    # A vendor's own name for a common option, e.g. Gemini's `max_output_tokens` for `max_tokens`.
    vendor_names: ClassVar[Mapping[str, str]] = {}

    # Seconds; it may only lower the server's provider timeout: above it, the server's holds.
    timeout: float | None = Field(default=None, gt=0, le=MAX_TIMEOUT_S)

    def request_fields(self) -> dict[str, Any]:
        """The fields for the vendor's request: the passthrough ones as given, and the common
        options that are set, under the vendor's names for them."""
        stop = [self.stop] if isinstance(self.stop, str) else self.stop
        common = {"temperature": self.temperature, "top_p": self.top_p, "stop": stop}
        common["max_tokens"] = self.max_tokens
        sent_as = {canonical: spelled for spelled, canonical in self.vendor_names.items()}
        given = {
            sent_as.get(name, name): value for name, value in common.items() if value is not None
        }
        return {**(self.model_extra or {}), **given}

    @classmethod
    def spellings(cls) -> dict[str, str]:
        """Every accepted name → the canonical one."""
        names = {name: name for name in [*cls.model_fields, *cls.passthrough]}
        names |= {spelled: cls.vendor_names[spelled] for spelled in cls.vendor_names}
        if cls.camel_case:
            names |= {to_camel(spelled): canonical for spelled, canonical in names.items()}
        return names

    @classmethod
    def allowed_summary(cls) -> str:
        common = ", ".join(sorted(cls.model_fields))
        fields = ", ".join(sorted(cls.passthrough))
        also = [*cls.vendor_names]
        text = f"allowed: {common}; and the request fields {fields}"
        if also:
            text += f"; also {', '.join(sorted(also))} (for the common option they stand for)"
        if cls.camel_case:
            text += "; each also in camelCase"
        return text

    @classmethod
    def admit(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """`options` under their canonical names; raises InvalidProviderOptions for any other."""
        spellings = cls.spellings()
        admitted: dict[str, Any] = {}
        refused: list[str] = []
        for name, value in options.items():
            canonical = spellings.get(name)
            if canonical is None:
                refused.append(name)
            elif canonical in admitted:
                raise InvalidProviderOptions(f"{name!r} repeats {canonical!r}, in another spelling")
            else:
                admitted[canonical] = value
        if refused:
            names = ", ".join(repr(name) for name in sorted(refused))
            raise InvalidProviderOptions(f"not allowed: {names}; {cls.allowed_summary()}")
        return admitted


def _allow_list(schema: dict[str, Any], cls: Any) -> None:
    """The JSON schema names what `admit` accepts: every spelling, nothing else (what the SDK
    checks inside a passthrough field is left to it; two spellings of one field are refused
    but not described, since schemathesis cannot generate from such a schema)."""
    properties: dict[str, Any] = schema.setdefault("properties", {})
    spellings: dict[str, str] = cls.spellings()
    for spelled, canonical in spellings.items():
        properties.setdefault(spelled, properties.get(canonical, {}))
    schema["additionalProperties"] = False
