"""Uploads the way tools written for the platform do them: the object store's
PostObject form, built only from a GenerateOTAUploadURL / GenerateDeviceNameListURL
answer (a multipart POST to ``Host``; every field before ``file``)."""

from __future__ import annotations

from typing import Any

import requests


def post_object(fields: Any, data: bytes, *, timeout: float = 60) -> requests.Response:
    """``fields``: the SDK's response data model (or the raw ``Data`` dict)."""
    raw = fields if isinstance(fields, dict) else fields.to_map()
    access_key_id = raw.get("OSSAccessKeyId") or raw.get("AccessKeyId")
    form = {
        "key": raw["Key"],
        "policy": raw["Policy"],
        "OSSAccessKeyId": access_key_id,
        "Signature": raw["Signature"],
        "success_action_status": "200",
    }
    return requests.post(
        raw["Host"],
        data=form,
        files={"file": ("package.bin", data, "application/octet-stream")},
        timeout=timeout,
    )
