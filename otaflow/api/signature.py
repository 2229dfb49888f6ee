"""ACS3-HMAC-SHA256 request signatures, as the Alibaba Cloud OpenAPI SDKs compute them.

The official Python SDK (``alibabacloud_tea_openapi`` 0.4.x, whose signing code is
``Utils.get_authorization``) signs every request of the IoT 2018-01-20 API like this::

    CanonicalRequest =
        HTTPMethod + "\\n" +            # "POST" (or "GET" for two IoT actions)
        CanonicalURI + "\\n" +          # the raw path, "/" for RPC-style APIs
        CanonicalQueryString + "\\n" +  # see canonical_query_string()
        CanonicalHeaders + "\\n" +      # "name:value\\n" per signed header, sorted by name
        SignedHeaders + "\\n" +         # the sorted lower-case names joined by ";"
        HashedRequestPayload            # hex SHA-256 of the body (= x-acs-content-sha256)
    StringToSign = "ACS3-HMAC-SHA256" + "\\n" + hex(SHA256(CanonicalRequest))
    Signature    = hex(HMAC-SHA256(AccessKeySecret, StringToSign))
    Authorization: ACS3-HMAC-SHA256 Credential=<AK>,SignedHeaders=<names>,Signature=<hex>

Details that matter for a byte-exact match with that SDK:

* It signs *every* header it sets at signing time, not only ``host``/``x-acs-*``/
  ``content-type``: ``accept``, ``user-agent`` and ``x-acs-credentials-provider`` are in
  ``SignedHeaders`` too. Headers the HTTP library adds later (``Accept-Encoding``,
  ``Content-Length``) are not. The verifier therefore trusts the ``SignedHeaders`` list
  of the request, and only insists that the headers which carry meaning (``host`` and
  every ``x-acs-*``/``content-type`` header present) are in it.
* A canonical header value is the header value with surrounding whitespace stripped;
  inner whitespace is kept.
* In the canonical query string the values are percent-encoded with
  ``urllib.parse.quote(value, safe="~")`` (RFC 3986: space -> ``%20``, ``*`` -> ``%2A``,
  ``~`` kept) but the Python SDK leaves the *keys* as they are, while the published
  algorithm (and the Java/Go SDKs) encode keys too. Keys of this API are plain
  ``[A-Za-z0-9.]`` so both agree; the verifier accepts either form.
* On the wire the SDK encodes the query with ``urlencode`` (space -> ``+``); the
  server decodes it before verifying, so that encoding does not matter here.

Errors use the Alibaba Cloud POP gateway's codes and messages (see ``SignatureError``).
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import hmac
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

__all__ = [
    "ALGORITHM",
    "REQUIRED_SIGNED_HEADERS",
    "AuthorizationHeader",
    "SignatureError",
    "SignatureVerifier",
    "SignedRequest",
    "canonical_headers",
    "canonical_query_string",
    "canonical_request",
    "compute_signature",
    "format_acs_date",
    "hash_payload",
    "parse_acs_date",
    "parse_authorization",
    "sign_request",
    "string_to_sign",
]

ALGORITHM = "ACS3-HMAC-SHA256"
EMPTY_PAYLOAD_SHA256 = hashlib.sha256(b"").hexdigest()

#: Headers a request must carry and sign (the SDK always sends and signs all of them).
REQUIRED_SIGNED_HEADERS: tuple[str, ...] = (
    "host",
    "x-acs-action",
    "x-acs-content-sha256",
    "x-acs-date",
    "x-acs-signature-nonce",
    "x-acs-version",
)

_ACS_DATE_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


class SignatureError(Exception):
    """A request failed authentication; ``code``/``message``/``http_status`` are what
    the Alibaba Cloud gateway answers with in that case.

    The response body the SDK expects for it is JSON with ``RequestId``, ``HostId``,
    ``Code``, ``Message`` (see ``to_body``); the SDK raises ``ClientException`` with
    that ``Code`` for any 4xx.
    """

    def __init__(self, code: str, message: str, http_status: int = 400) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.http_status = http_status

    def to_body(self, request_id: str, host_id: str = "") -> dict[str, str]:
        body = {"RequestId": request_id, "Code": self.code, "Message": self.message}
        if host_id:
            body["HostId"] = host_id
        body["Recommend"] = f"https://api.aliyun.com/troubleshoot?q={self.code}"
        return body


# ---------------------------------------------------------------------------
# Error factories. Codes and messages are the POP gateway's documented common
# client errors; the ones marked "convention" follow its Missing{Parameter}
# pattern for ACS3 headers that have no documented dedicated code.
# ---------------------------------------------------------------------------


def _missing_authorization() -> SignatureError:  # convention (Missing{Parameter})
    return SignatureError("MissingAuthorization", "Authorization is mandatory for this action.")


def _incomplete_signature(detail: str = "") -> SignatureError:
    msg = "The request signature does not conform to Aliyun standards."
    return SignatureError("IncompleteSignature", f"{msg} {detail}".strip())


def _invalid_signature_method() -> SignatureError:
    return SignatureError("InvalidSignatureMethod", "Specified signature method is not valid.")


def _access_key_not_found() -> SignatureError:
    return SignatureError("InvalidAccessKeyId.NotFound", "Specified access key is not found.", 404)


def _missing_timestamp() -> SignatureError:  # convention (v2 name of x-acs-date)
    return SignatureError("MissingTimestamp", "x-acs-date is mandatory for this action.")


def _timestamp_format() -> SignatureError:
    return SignatureError(
        "InvalidTimeStamp.Format", "Specified time stamp or date value is not well formatted."
    )


def _timestamp_expired() -> SignatureError:
    return SignatureError(
        "InvalidTimeStamp.Expired", "Specified time stamp or date value is expired."
    )


def _missing_nonce() -> SignatureError:  # convention (v2 name of x-acs-signature-nonce)
    return SignatureError(
        "MissingSignatureNonce", "x-acs-signature-nonce is mandatory for this action."
    )


def _nonce_used() -> SignatureError:
    return SignatureError("SignatureNonceUsed", "Specified signature nonce was used already.")


def _signature_mismatch(server_string_to_sign: str) -> SignatureError:
    return SignatureError(
        "SignatureDoesNotMatch",
        "Specified signature is not matched with our calculation. "
        f"server string to sign is:{server_string_to_sign}",
    )


# ---------------------------------------------------------------------------
# Canonicalisation (mirrors alibabacloud_tea_openapi.utils / alibabacloud_openapi_util)
# ---------------------------------------------------------------------------


def _percent_encode(value: str) -> str:
    return quote(value, safe="~", encoding="utf-8")


def canonical_query_string(query: Mapping[str, str], *, encode_keys: bool = False) -> str:
    """Sorted ``key=value`` pairs joined by ``&``, values RFC 3986 percent-encoded.

    ``encode_keys=False`` is the Python SDK's form (keys verbatim), ``True`` the
    published algorithm's form (keys encoded too, then sorted).
    """
    pairs = []
    for key, value in query.items():
        if value is None:
            continue
        pairs.append((_percent_encode(key) if encode_keys else key, _percent_encode(str(value))))
    pairs.sort()
    return "&".join(f"{k}={v}" for k, v in pairs)


def _lower_headers(headers: Mapping[str, str]) -> dict[str, list[str]]:
    """Group header values by lower-case name (works for plain dicts and multidicts)."""
    grouped: dict[str, list[str]] = {}
    for name, value in headers.items():
        if value is None:
            continue
        grouped.setdefault(name.lower(), []).append(str(value).strip())
    return grouped


def canonical_headers(
    headers: Mapping[str, str], signed: Iterable[str] | None = None
) -> tuple[str, str]:
    """Return ``(CanonicalHeaders, SignedHeaders)``.

    With ``signed=None`` every header is signed, like the Python SDK does. Repeated
    headers are joined with ``,`` after sorting their values (SDK behaviour).
    """
    grouped = _lower_headers(headers)
    names = sorted(grouped) if signed is None else sorted({n.lower() for n in signed})
    lines = []
    for name in names:
        values = grouped.get(name)
        if values is None:
            raise KeyError(name)
        lines.append(f"{name}:{','.join(sorted(values))}\n")
    return "".join(lines), ";".join(names)


def hash_payload(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def canonical_request(
    method: str,
    path: str,
    canonical_query: str,
    canonical_header_block: str,
    signed_headers: str,
    hashed_payload: str,
) -> str:
    return "\n".join(
        [
            method.upper(),
            path or "/",
            canonical_query,
            canonical_header_block,
            signed_headers,
            hashed_payload,
        ]
    )


def string_to_sign(canonical: str, algorithm: str = ALGORITHM) -> str:
    return f"{algorithm}\n{hashlib.sha256(canonical.encode('utf-8')).hexdigest()}"


def compute_signature(secret: str, to_sign: str) -> str:
    return hmac.new(secret.encode("utf-8"), to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class AuthorizationHeader:
    algorithm: str
    access_key_id: str
    signed_headers: tuple[str, ...]
    signature: str


def parse_authorization(value: str) -> AuthorizationHeader:
    """Parse ``ACS3-HMAC-SHA256 Credential=AK,SignedHeaders=a;b,Signature=hex``.

    Raises ``SignatureError`` (``InvalidSignatureMethod`` for another algorithm,
    ``IncompleteSignature`` for anything malformed).
    """
    value = value.strip()
    algorithm, _, rest = value.partition(" ")
    if not rest:
        raise _incomplete_signature("Authorization header is malformed.")
    if algorithm != ALGORITHM:
        raise _invalid_signature_method()
    fields: dict[str, str] = {}
    for part in rest.split(","):
        name, sep, field_value = part.strip().partition("=")
        if not sep or name in fields:
            raise _incomplete_signature("Authorization header is malformed.")
        fields[name] = field_value.strip()
    credential = fields.get("Credential", "")
    signed = fields.get("SignedHeaders", "")
    signature = fields.get("Signature", "")
    if not credential or not signed or not signature or len(fields) != 3:
        raise _incomplete_signature("Authorization header is malformed.")
    names = tuple(signed.split(";"))
    if any(not n or n != n.lower() for n in names):
        raise _incomplete_signature("SignedHeaders is malformed.")
    return AuthorizationHeader(algorithm, credential, names, signature.lower())


def format_acs_date(moment: datetime | float | None = None) -> str:
    """``x-acs-date`` value: UTC, ``yyyy-MM-ddTHH:mm:ssZ``."""
    return _to_datetime(moment).strftime(_ACS_DATE_FORMAT)


def parse_acs_date(value: str) -> datetime:
    """Parse an ``x-acs-date`` (ISO 8601 UTC with ``Z``, optional fractional seconds)."""
    value = value.strip()
    if len(value) == 20 and value[10] == "T" and value[19] == "Z" and value[:19].isascii():
        # The form every SDK sends; fromisoformat reads it in a tenth of strptime's time
        # (it is parsed on every call). Anything else takes the strict formats below.
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(value[:19]).replace(tzinfo=UTC)
    for fmt in (_ACS_DATE_FORMAT, "%Y-%m-%dT%H:%M:%S.%fZ"):
        try:
            return datetime.strptime(value.strip(), fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    raise _timestamp_format()


def _to_datetime(moment: datetime | float | None) -> datetime:
    if moment is None:
        return datetime.now(UTC)
    if isinstance(moment, datetime):
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return datetime.fromtimestamp(float(moment), UTC)


# ---------------------------------------------------------------------------
# Signing (for otaflow's own clients)
# ---------------------------------------------------------------------------


def sign_request(
    *,
    access_key_id: str,
    access_key_secret: str,
    method: str,
    host: str,
    path: str = "/",
    query: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
    action: str | None = None,
    version: str | None = None,
    date: datetime | float | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """Sign a request the way the Python SDK does and return the headers to send.

    ``query`` is the *decoded* query (send it with any correct URL encoding). The result
    holds ``host``, ``x-acs-action``/``x-acs-version`` (when given), ``x-acs-date``,
    ``x-acs-signature-nonce``, ``x-acs-content-sha256``, the caller's ``headers``
    (lower-cased; all of them are signed, so add unsigned ones afterwards) and
    ``authorization``.
    """
    out: dict[str, str] = {"host": host}
    if action is not None:
        out["x-acs-action"] = action
    if version is not None:
        out["x-acs-version"] = version
    out["x-acs-date"] = format_acs_date(date)
    out["x-acs-signature-nonce"] = nonce or uuid.uuid4().hex
    for name, value in (headers or {}).items():
        out[name.lower()] = str(value)
    payload_hash = hash_payload(body)
    out["x-acs-content-sha256"] = payload_hash
    header_block, signed = canonical_headers(out)
    canonical = canonical_request(
        method, path, canonical_query_string(query or {}), header_block, signed, payload_hash
    )
    signature = compute_signature(access_key_secret, string_to_sign(canonical))
    out["authorization"] = (
        f"{ALGORITHM} Credential={access_key_id},SignedHeaders={signed},Signature={signature}"
    )
    return out


# ---------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------


class _NonceCache:
    """Nonces seen recently, each forgotten ``ttl`` seconds after it was recorded."""

    def __init__(self, ttl: float, max_entries: int) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._expiry: dict[tuple[str, str], float] = {}
        self._heap: list[tuple[float, tuple[str, str]]] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._expiry)

    def _purge(self, now: float) -> None:
        while self._heap and (self._heap[0][0] <= now or len(self._expiry) > self._max):
            expires, key = heapq.heappop(self._heap)
            if self._expiry.get(key) == expires:
                del self._expiry[key]

    def add(self, key: tuple[str, str], now: float) -> bool:
        """Record ``key``; False if it is already there and not yet expired."""
        with self._lock:
            self._purge(now)
            if key in self._expiry:
                return False
            expires = now + self._ttl
            self._expiry[key] = expires
            heapq.heappush(self._heap, (expires, key))
            if len(self._expiry) > self._max:
                self._purge(now)
            return True


#: Longest x-acs-signature-nonce accepted (the SDK sends 32 hex characters).
MAX_NONCE_CHARS = 128


@dataclass(frozen=True)
class SignedRequest:
    """Who signed a request, the date it was signed for (ms) and its nonce."""

    auth: AuthorizationHeader
    signed_at_ms: int
    nonce: str
    now: float

    @property
    def access_key_id(self) -> str:
        return self.auth.access_key_id

    def replay_key(self) -> str:
        """The command agent's key for this request's nonce: the same for a replay of the
        same signed request (same date, AccessKey and nonce), sorted by date."""
        return f"{self.signed_at_ms:013d}/{self.access_key_id}/{self.nonce}"


class SignatureVerifier:
    """Check ACS3-HMAC-SHA256 requests against a table of AccessKey pairs.

    ``max_skew_s``: how far ``x-acs-date`` may be from the server clock (the platform
    allows 15 minutes either way). ``nonce_ttl_s``: how long a nonce is remembered;
    the default, twice the skew, covers every moment at which a replay of the same
    signed request could still pass the date check. At most ``max_nonces`` are kept
    (oldest dropped first); nonces are recorded only for requests whose signature
    verified, so only key holders can fill the table.
    """

    def __init__(
        self,
        access_keys: Mapping[str, str],
        max_skew_s: float = 900,
        nonce_ttl_s: float | None = None,
        *,
        max_nonces: int = 1_000_000,
    ) -> None:
        self._keys = dict(access_keys)
        self.max_skew_s = float(max_skew_s)
        ttl = 2 * self.max_skew_s if nonce_ttl_s is None else float(nonce_ttl_s)
        self._nonces = _NonceCache(ttl, max_nonces)

    @property
    def remembered_nonces(self) -> int:
        return len(self._nonces)

    def precheck(
        self, headers: Mapping[str, str], now: datetime | float | None = None
    ) -> SignedRequest:
        """The checks that need only the headers (done before the body is read, so an
        unsigned or expired request never makes the server read a large body):
        Authorization well formed, AccessKey known, date within the skew, nonce given.
        Raises ``SignatureError``."""
        grouped = _lower_headers(headers)
        authorization = grouped.get("authorization")
        if not authorization:
            raise _missing_authorization()
        if len(authorization) != 1:
            raise _incomplete_signature("Authorization header is repeated.")
        auth = parse_authorization(authorization[0])

        if auth.access_key_id not in self._keys:
            raise _access_key_not_found()

        date_values = grouped.get("x-acs-date")
        if not date_values or not date_values[0]:
            raise _missing_timestamp()
        signed_at = parse_acs_date(date_values[0])
        current = _to_datetime(now)
        if abs((current - signed_at).total_seconds()) > self.max_skew_s:
            raise _timestamp_expired()

        nonce_values = grouped.get("x-acs-signature-nonce")
        if not nonce_values or not nonce_values[0]:
            raise _missing_nonce()
        nonce = nonce_values[0]
        if len(nonce) > MAX_NONCE_CHARS or not nonce.isprintable():
            raise _incomplete_signature(
                f"x-acs-signature-nonce must be 1-{MAX_NONCE_CHARS} printable characters."
            )
        return SignedRequest(auth, int(signed_at.timestamp() * 1000), nonce, current.timestamp())

    def verify(
        self,
        method: str,
        path: str,
        query: Mapping[str, str],
        headers: Mapping[str, str],
        body: bytes,
        now: datetime | float | None = None,
    ) -> str:
        """Return the AccessKey ID that signed the request or raise ``SignatureError``.

        ``path`` is the raw request path (no query), ``query`` the decoded URL query
        parameters only (form-body parameters are covered by the payload hash),
        ``headers`` the received headers (any case), ``body`` the raw body bytes.
        """
        return self.verify_request(method, path, query, headers, body, now).access_key_id

    def verify_request(
        self,
        method: str,
        path: str,
        query: Mapping[str, str],
        headers: Mapping[str, str],
        body: bytes,
        now: datetime | float | None = None,
        prechecked: SignedRequest | None = None,
    ) -> SignedRequest:
        """``verify``, returning who signed it, when, and with which nonce.
        ``prechecked``: what ``precheck`` answered for these headers, when the caller
        ran it before reading the body (it is not run twice)."""
        signed_request = prechecked or self.precheck(headers, now)
        auth = signed_request.auth
        secret = self._keys[auth.access_key_id]
        grouped = _lower_headers(headers)

        signed = set(auth.signed_headers)
        for name in REQUIRED_SIGNED_HEADERS:
            if name not in grouped:
                raise _incomplete_signature(f"Header {name} is missing.")
        for name in grouped:
            must_sign = name.startswith("x-acs-") or name in ("host", "content-type")
            if must_sign and name not in signed:
                raise _incomplete_signature(f"Header {name} is not signed.")
        if "authorization" in signed:
            raise _incomplete_signature("Authorization cannot be a signed header.")
        missing = [name for name in signed if name not in grouped]
        if missing:
            raise _incomplete_signature(f"Signed header {missing[0]} is missing.")

        header_block, signed_line = canonical_headers(headers, signed)
        # The payload line is the hash of the body we got, so a body that does not
        # match x-acs-content-sha256 (which is itself signed) fails the comparison.
        payload_hash = hash_payload(body)
        # The Python SDK's canonical query (raw keys) first, then the published form
        # (encoded keys); they differ only if a key has characters outside [A-Za-z0-9._~-].
        query_forms = [canonical_query_string(query)]
        encoded_keys_form = canonical_query_string(query, encode_keys=True)
        if encoded_keys_form != query_forms[0]:
            query_forms.append(encoded_keys_form)
        matched = False
        server_sts = ""
        for canonical_query in query_forms:
            canonical = canonical_request(
                method, path, canonical_query, header_block, signed_line, payload_hash
            )
            candidate_sts = string_to_sign(canonical)
            server_sts = server_sts or candidate_sts
            expected = compute_signature(secret, candidate_sts)
            matched = hmac.compare_digest(expected, auth.signature) or matched
        if not matched:
            raise _signature_mismatch(server_sts)

        if not self._nonces.add((auth.access_key_id, signed_request.nonce), signed_request.now):
            raise _nonce_used()
        return signed_request
