"""The client side of otaflow's OpenAPI: signed RPC calls (ACS3-HMAC-SHA256, like the
official SDK) and PostObject uploads. The ``otaflow`` CLI (``otaflow.cli.ops``) and the
web console (``otaflow.web.console``) call the API through it."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

from otaflow.api.params import API_VERSION, flatten
from otaflow.api.signature import sign_request


def signed_call_headers(
    access_key_id: str,
    access_key_secret: str,
    host: str,
    action: str,
    query: Mapping[str, str],
    *,
    date: datetime | float | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The headers of one signed RPC call to ``host``: a POST of ``query`` (in the URL)
    with an empty body, as ``OpsClient`` sends it; ``date`` and ``nonce`` default to now
    and a fresh one (set them to test stale or replayed calls). Any HTTP client can send
    the call with these headers and no others."""
    return sign_request(
        access_key_id=access_key_id,
        access_key_secret=access_key_secret,
        method="POST",
        host=host,
        query=query,
        action=action,
        version=API_VERSION,
        # urllib (and aiohttp) send a content type with every POST: sign it (the body is
        # empty), so the header sent is the header signed.
        headers={
            "accept": "application/json",
            "content-type": "application/x-www-form-urlencoded",
        },
        date=date,
        nonce=nonce,
    )


class ApiCallError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class OpsClient:
    """A minimal signed RPC client for otaflow's API (and the platform's)."""

    def __init__(self, endpoint: str, access_key_id: str, access_key_secret: str) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.host = urlsplit(self.endpoint).netloc
        self.access_key_id = access_key_id
        self.access_key_secret = access_key_secret

    def call(self, action: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Send one operation; returns the answer body or raises ``ApiCallError``."""
        query = flatten(dict(params or {}))
        headers = signed_call_headers(
            self.access_key_id, self.access_key_secret, self.host, action, query
        )
        url = f"{self.endpoint}/?{urlencode(query)}" if query else f"{self.endpoint}/"
        request = urllib.request.Request(url, data=b"", headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                body: dict[str, Any] = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                err = json.loads(exc.read())
            except ValueError:
                raise ApiCallError(f"HTTP{exc.code}", str(exc)) from None
            raise ApiCallError(err.get("Code", f"HTTP{exc.code}"), err.get("Message", "")) from None
        except urllib.error.URLError as exc:
            raise ApiCallError("ConnectionFailed", f"{self.endpoint}: {exc.reason}") from None
        except (OSError, http.client.HTTPException) as exc:  # reset, timeout, not HTTP
            raise ApiCallError("ConnectionFailed", f"{self.endpoint}: {exc}") from None
        except ValueError:
            raise ApiCallError(
                "NotTheOtaApi", f"{self.endpoint} answered, but not as otaflow's OpenAPI"
            ) from None
        if not isinstance(body, dict):
            raise ApiCallError(
                "NotTheOtaApi", f"{self.endpoint} answered, but not as otaflow's OpenAPI"
            )
        if body.get("Success") is False:
            raise ApiCallError(str(body.get("Code")), str(body.get("ErrorMessage")))
        return body

    def upload(self, fields: Mapping[str, Any], data: bytes) -> None:
        """Upload a file with the object store's PostObject form a Generate*URL answer
        describes (multipart POST to Host; every field before ``file``)."""
        boundary = f"otaflow-{uuid.uuid4().hex}"
        form = {
            "key": fields["Key"],
            "policy": fields["Policy"],
            "OSSAccessKeyId": fields.get("OSSAccessKeyId") or fields.get("AccessKeyId"),
            "Signature": fields["Signature"],
            "success_action_status": "200",
        }
        body = bytearray()
        for name, value in form.items():
            body += (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
            ).encode()
        body += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="file"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        body += data + f"\r\n--{boundary}--\r\n".encode()
        request = urllib.request.Request(
            fields["Host"],
            data=bytes(body),
            method="POST",
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=300):
                pass
        except urllib.error.HTTPError as exc:
            raise ApiCallError(f"Upload{exc.code}", exc.read().decode(errors="replace")) from None
