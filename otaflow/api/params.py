"""RPC-style request parameters of the Alibaba Cloud IoT OpenAPI (version 2018-01-20).

What the official Python SDK (``alibabacloud_iot20180120`` 5.x on
``alibabacloud_tea_openapi`` 0.4.x, ACS3 signatures) sends, verified by capturing its
requests:

* ``POST /`` for every operation, except ``ListOTAModuleByProduct`` and
  ``QueryJobStatistics``, which are ``GET /``.
* The action and version travel in headers: ``x-acs-action: CreateOTADynamicUpgradeJob``,
  ``x-acs-version: 2018-01-20`` (no ``Action``/``Version``/``Format`` query parameters;
  the legacy v2-signature path puts them in the query instead, which is also accepted).
* Parameters go in the URL query string for almost all operations (every OTA, product,
  device and group operation otaflow serves). A few operations put some or all of them
  in an ``application/x-www-form-urlencoded`` body instead; of otaflow's operations
  that is ``BatchCheckDeviceNames`` (``DeviceName.N`` and ``DeviceNameList.N.*`` in the
  body, ``ProductKey``/``IotInstanceId`` in the query). A server must merge both.
* Query and body are encoded with ``urllib.parse.urlencode`` (space -> ``+``,
  ``/`` -> ``%2F``, ``~`` kept); the body's keys are sorted.
* Structured values are flattened: lists as ``Name.1``, ``Name.2`` ... (1-based),
  objects as ``Name.Key``, so a list of objects is ``Tag.1.Key``/``Tag.1.Value``.
  ``None`` values are omitted (a ``None`` list element still consumes its index).
* Scalars are sent as ``str(value)``: integers in decimal, booleans as ``True`` /
  ``False`` (capitalised: Python's ``str(True)``; other SDKs send ``true``/``false``,
  so booleans must be parsed case-insensitively).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

__all__ = [
    "API_VERSION",
    "LEGACY_COMMON_PARAMS",
    "ParamError",
    "Params",
    "RpcRequest",
    "encode_form",
    "flatten",
    "parse_bool",
    "parse_int",
    "parse_rpc_request",
    "unflatten",
]

API_VERSION = "2018-01-20"

#: Common parameters of the legacy (v2, signature-in-query) RPC style; they are not
#: operation parameters and are dropped from ``RpcRequest.params``.
LEGACY_COMMON_PARAMS = frozenset(
    {
        "Action",
        "Version",
        "Format",
        "AccessKeyId",
        "Signature",
        "SignatureMethod",
        "SignatureVersion",
        "SignatureNonce",
        "SignatureType",
        "Timestamp",
        "SecurityToken",
    }
)


class ParamError(ValueError):
    """A request's parameters are unusable; codes follow the POP gateway's conventions
    (``Missing{Name}`` / ``Invalid{Name}``, HTTP 400)."""

    def __init__(self, code: str, message: str, http_status: int = 400) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.http_status = http_status

    @classmethod
    def missing(cls, name: str) -> ParamError:
        return cls(f"Missing{name}", f"{name} is mandatory for this action.")

    @classmethod
    def invalid(cls, name: str, detail: str = "") -> ParamError:
        message = f"Specified parameter {name} is not valid."
        return cls(f"Invalid{name}", f"{message} {detail}".strip())


# --------------------------------------------------------------------------- flattening


def _scalar(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten nested params the way the SDK does (``OpenApiUtilClient.query``).

    ``{"Tag": [{"Key": "a"}], "SrcVersion": ["1", "2"], "NeedPush": True}`` ->
    ``{"Tag.1.Key": "a", "SrcVersion.1": "1", "SrcVersion.2": "2", "NeedPush": "True"}``.
    ``None`` is skipped; a ``None`` list element keeps its index (``A.1``, ``A.3``).
    """
    out: dict[str, str] = {}

    def walk(key: str, value: Any) -> None:
        if value is None:
            return
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(f"{key}.{k}" if key else str(k), v)
        elif isinstance(value, list | tuple):
            for index, item in enumerate(value, start=1):
                walk(f"{key}.{index}", item)
        else:
            out[key] = _scalar(value)

    walk(prefix, params)
    return out


def _is_index(segment: str) -> bool:
    return segment.isascii() and segment.isdigit()


def unflatten(flat: Mapping[str, str]) -> dict[str, Any]:
    """Inverse of ``flatten``: numeric segments become (1-based, compacted) lists.

    ``{"Tag.1.Key": "a", "Tag.1.Value": "b", "DeviceName.1": "x", "DeviceName.2": "y"}``
    -> ``{"Tag": [{"Key": "a", "Value": "b"}], "DeviceName": ["x", "y"]}``.

    Indices are ordered numerically and gaps are closed (``A.1``, ``A.3`` -> 2 items).
    A name used both as a value and as a prefix (``A=1`` and ``A.1=2``) raises
    ``ParamError`` (``Invalid{A}``). Keys with empty segments are kept verbatim.
    """
    root: dict[str, Any] = {}
    for key, value in flat.items():
        segments = key.split(".")
        if any(not s for s in segments):
            root[key] = value
            continue
        node = root
        for depth, segment in enumerate(segments):
            last = depth == len(segments) - 1
            existing = node.get(segment)
            if last:
                if isinstance(existing, dict):
                    raise ParamError.invalid(".".join(segments[: depth + 1]))
                node[segment] = value
            else:
                if existing is None:
                    existing = node[segment] = {}
                elif not isinstance(existing, dict):
                    raise ParamError.invalid(".".join(segments[: depth + 1]))
                node = existing
    return {k: _listify(v) for k, v in root.items()}


def _listify(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    if node and all(_is_index(k) for k in node):
        ordered = sorted(node, key=lambda k: (int(k), k))
        return [_listify(node[k]) for k in ordered]
    return {k: _listify(v) for k, v in node.items()}


def encode_form(flat: Mapping[str, str]) -> str:
    """URL-encode flat params like the SDK's form body (sorted keys, ``+`` for space)."""
    return urlencode(sorted(flat.items()))


# ------------------------------------------------------------------------ scalar parsing


def parse_bool(value: str, name: str = "value") -> bool:
    """``true``/``false`` in any case (the Python SDK sends ``True``/``False``)."""
    lowered = value.strip().lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    raise ParamError.invalid(name, f"Expected true or false, got {value!r}.")


def parse_int(
    value: str, name: str = "value", *, minimum: int | None = None, maximum: int | None = None
) -> int:
    text = value.strip()
    digits = text[1:] if text[:1] in "+-" else text
    if not digits or not digits.isascii() or not digits.isdigit():
        raise ParamError.invalid(name, f"Expected an integer, got {value!r}.")
    number = int(text)
    if minimum is not None and number < minimum:
        raise ParamError.invalid(name, f"Must be at least {minimum}.")
    if maximum is not None and number > maximum:
        raise ParamError.invalid(name, f"Must be at most {maximum}.")
    return number


# ---------------------------------------------------------------------------- requests


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


@dataclass(frozen=True)
class RpcRequest:
    """An RPC-style call: action, version and its flat ``Name.N.Key`` parameters."""

    action: str
    version: str
    params: dict[str, str] = field(default_factory=dict)

    def structured(self) -> dict[str, Any]:
        return unflatten(self.params)

    def accessor(self) -> Params:
        return Params(self.params)


#: The SDK's deepest parameters are three levels (``DeviceNameList.N.DeviceName``).
MAX_JSON_DEPTH = 8


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_JSON_BRACKETS = re.compile(rb"[\[\]{}]")


def _json_depth(body: bytes) -> int:
    """Deepest nesting of brackets outside strings, without parsing (json.loads recurses
    once per level and would hit Python's recursion limit on hostile input)."""
    depth = deepest = 0
    for bracket in _JSON_BRACKETS.findall(_JSON_STRING.sub(b"", body)):
        if bracket in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _body_params(content_type: str, body: bytes) -> dict[str, str]:
    media_type = content_type.split(";", 1)[0].strip().lower()
    if not body.strip():
        return {}
    if media_type == "application/x-www-form-urlencoded":
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ParamError("InvalidParameter.Format", "Request body is not UTF-8.") from exc
        return dict(parse_qsl(text, keep_blank_values=True))
    if media_type == "application/json":
        if _json_depth(body) > MAX_JSON_DEPTH:
            raise ParamError(
                "InvalidParameter.Format",
                f"Request body nests deeper than {MAX_JSON_DEPTH} levels.",
            )
        try:
            decoded = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise ParamError("InvalidParameter.Format", "Request body is not valid JSON.") from exc
        if not isinstance(decoded, dict):
            raise ParamError("InvalidParameter.Format", "Request body must be a JSON object.")
        return flatten(decoded)
    # Octet streams (file uploads) are not parameters; leave them to the operation.
    return {}


def parse_rpc_request(
    method: str,
    query: Mapping[str, str],
    headers: Mapping[str, str],
    body: bytes = b"",
    *,
    expected_version: str | None = API_VERSION,
) -> RpcRequest:
    """Collect action, version and parameters of a request as the SDK sends it.

    ``query`` is the decoded URL query. Form-body parameters are merged over query
    parameters (the SDK never sends a name in both). Action/version come from the
    ``x-acs-action``/``x-acs-version`` headers, falling back to the legacy ``Action``/
    ``Version`` query parameters. Raises ``ParamError``: ``MissingAction``,
    ``MissingVersion``, ``InvalidVersion`` (when ``expected_version`` is set and differs),
    ``UnsupportedHTTPMethod`` or ``InvalidParameter.Format``.
    """
    if method.upper() not in ("GET", "POST"):
        raise ParamError("UnsupportedHTTPMethod", "This http method not supported.", 403)
    action = _header(headers, "x-acs-action") or query.get("Action") or ""
    version = _header(headers, "x-acs-version") or query.get("Version") or ""
    if not action:
        raise ParamError.missing("Action")
    if not version:
        raise ParamError.missing("Version")
    if expected_version is not None and version != expected_version:
        raise ParamError.invalid("Version", f"Supported version: {expected_version}.")
    params = {k: v for k, v in query.items() if k not in LEGACY_COMMON_PARAMS}
    content_type = _header(headers, "content-type") or ""
    for key, value in _body_params(content_type, body).items():
        if key not in LEGACY_COMMON_PARAMS:
            params[key] = value
    return RpcRequest(action=action, version=version, params=params)


class Params:
    """Typed access to a request's flat parameters, raising POP-style ``ParamError``."""

    def __init__(self, flat: Mapping[str, str]) -> None:
        self.flat = dict(flat)
        self.tree = unflatten(self.flat)

    def _raw(self, name: str, required: bool) -> Any:
        value = self.tree.get(name)
        if value is None or value == "" or value == [] or value == {}:
            if required:
                raise ParamError.missing(name)
            return None
        return value

    def _scalar_text(self, name: str, required: bool) -> str | None:
        value = self._raw(name, required)
        if value is None:
            return None
        if not isinstance(value, str):
            raise ParamError.invalid(name, "Expected a single value.")
        return value

    def get_str(
        self,
        name: str,
        *,
        required: bool = False,
        default: str | None = None,
        max_length: int | None = None,
    ) -> str | None:
        value = self._scalar_text(name, required)
        if value is None:
            return default
        if max_length is not None and len(value) > max_length:
            raise ParamError.invalid(name, f"At most {max_length} characters.")
        return value

    def get_int(
        self,
        name: str,
        *,
        required: bool = False,
        default: int | None = None,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> int | None:
        value = self._scalar_text(name, required)
        if value is None:
            return default
        return parse_int(value, name, minimum=minimum, maximum=maximum)

    def get_bool(
        self, name: str, *, required: bool = False, default: bool | None = None
    ) -> bool | None:
        value = self._scalar_text(name, required)
        if value is None:
            return default
        return parse_bool(value, name)

    def get_list(
        self, name: str, *, required: bool = False, max_items: int | None = None
    ) -> list[str]:
        """A repeated scalar ``Name.N`` (a bare ``Name=value`` counts as one item)."""
        value = self._raw(name, required)
        if value is None:
            return []
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ParamError.invalid(name, "Expected a list of values.")
        if max_items is not None and len(items) > max_items:
            raise ParamError.invalid(name, f"At most {max_items} items.")
        return list(items)

    def get_objects(
        self, name: str, *, required: bool = False, max_items: int | None = None
    ) -> list[dict[str, Any]]:
        """A repeated object ``Name.N.Field``."""
        value = self._raw(name, required)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(i, dict) for i in value):
            raise ParamError.invalid(name, "Expected a list of objects.")
        if max_items is not None and len(value) > max_items:
            raise ParamError.invalid(name, f"At most {max_items} items.")
        return list(value)
