"""Signed requests (ACS3-HMAC-SHA256) and their refusals: wrong signature, stale date,
replayed nonce, unsigned, unknown action.

Shared deployment (``conftest.py``, one for the package) and helpers:
``tests/integration/api_support.py``.
"""

from __future__ import annotations

import time
import uuid

import pytest
import requests
from alibabacloud_iot20180120 import models as m
from Tea.exceptions import TeaException

from otaflow.api.client import signed_call_headers
from tests.integration.api_support import (
    AK,
    SK,
    Deployment,
)

pytestmark = pytest.mark.integration


def _signed_post(api: Deployment, date: float, nonce: str, secret: str = SK) -> requests.Response:
    host = f"127.0.0.1:{api.settings.api_port}"
    query = {"ProductKey": "nothing"}
    headers = signed_call_headers(AK, secret, host, "QueryProduct", query, date=date, nonce=nonce)
    return requests.post(f"http://{host}/", params=query, headers=headers, timeout=30)


def test_wrong_signature_stale_date_replayed_nonce_and_unsigned_are_refused(
    api: Deployment,
) -> None:
    with pytest.raises(TeaException) as wrong:
        api.sdk("not-the-secret").query_product(m.QueryProductRequest(product_key="x"))
    assert wrong.value.code == "SignatureDoesNotMatch"

    stale = _signed_post(api, time.time() - 20 * 60, uuid.uuid4().hex)
    assert (stale.status_code, stale.json()["Code"]) == (400, "InvalidTimeStamp.Expired")

    nonce = uuid.uuid4().hex
    first = _signed_post(api, time.time(), nonce)
    assert first.status_code == 200 and first.json()["Code"] == "iot.prod.NotExistedProduct"
    replay = _signed_post(api, time.time(), nonce)
    assert (replay.status_code, replay.json()["Code"]) == (400, "SignatureNonceUsed")

    unsigned = requests.post(
        f"http://127.0.0.1:{api.settings.api_port}/",
        headers={"x-acs-action": "QueryProduct", "x-acs-version": "2018-01-20"},
        timeout=10,
    )
    assert (unsigned.status_code, unsigned.json()["Code"]) == (400, "MissingAuthorization")

    with pytest.raises(TeaException) as missing_api:
        api.call_raw("NoSuchAction", {})
    assert missing_api.value.code == "InvalidApi.NotFound"
