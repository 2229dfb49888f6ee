"""Upload grants (PostObject), the package server's answers and the safe defaults."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import FormData
from aiohttp.test_utils import TestClient, TestServer

from otaflow import config
from otaflow.api.server import Api
from otaflow.package_server import make_app
from otaflow.packages import (
    DEV_SIGNING_KEY,
    UPLOAD_LIFETIME_S,
    PackageStore,
    UnsafeSettings,
    UploadRefused,
    bind_address,
    file_path_of_url,
    require_private_signing_key,
)

NOW = 1_800_000_000.0


@pytest.fixture
def store(tmp_path: Path) -> PackageStore:
    return PackageStore(config.Settings(), root=tmp_path / "packages")


def form_of(store: PackageStore, key: str, now: float = NOW) -> dict[str, str]:
    grant = store.grant_upload(key, now=now)
    return {
        "key": grant.key,
        "policy": grant.policy,
        "OSSAccessKeyId": "otaflow",
        "Signature": grant.signature,
    }


def upload(store: PackageStore, form: dict[str, str], data: bytes, now: float = NOW) -> Any:
    pending = store.begin_upload(form, now=now)
    pending.write(data)
    return pending.commit()


def test_a_grant_uploads_once_and_its_facts_are_kept(store: PackageStore) -> None:
    form = form_of(store, "ota/one.bin")
    policy = json.loads(base64.b64decode(form["policy"]))
    assert ["eq", "$key", "ota/one.bin"] in policy["conditions"]
    assert policy["expiration"].endswith("Z")
    stored = upload(store, form, b"first")
    assert store.facts("ota/one.bin") == stored and stored.size == 5
    # Reused: refused, and the stored file is untouched.
    with pytest.raises(UploadRefused) as caught:
        upload(store, form, b"second")
    assert (caught.value.status, caught.value.code) == (409, "FileAlreadyExists")
    assert store.path("ota/one.bin").read_bytes() == b"first"


def test_forged_altered_expired_and_foreign_grants_are_refused(store: PackageStore) -> None:
    form = form_of(store, "ota/two.bin")
    cases = {
        "SignatureDoesNotMatch": dict(form, Signature=base64.b64encode(b"x" * 32).decode()),
        # The policy of one key does not upload another (the signature covers the policy).
        "AccessDenied": dict(form, key="ota/other.bin"),
        "InvalidAccessKeyId": dict(form, OSSAccessKeyId="someone"),
        "InvalidArgument": {k: v for k, v in form.items() if k != "policy"},
    }
    for code, forged in cases.items():
        with pytest.raises(UploadRefused) as caught:
            store.begin_upload(forged, now=NOW)
        assert caught.value.code == code
    with pytest.raises(UploadRefused) as caught:
        store.begin_upload(form, now=NOW + UPLOAD_LIFETIME_S + 1)
    assert "expired" in caught.value.message
    # None of these stored anything or used the grant up.
    assert upload(store, form, b"ok").size == 2


def test_a_failed_upload_stores_nothing_and_leaves_the_grant_usable(store: PackageStore) -> None:
    grant = store.grant_upload("ota/three.bin", now=NOW, max_bytes=4)
    form = {
        "key": grant.key,
        "policy": grant.policy,
        "OSSAccessKeyId": "otaflow",
        "Signature": grant.signature,
    }
    pending = store.begin_upload(form, now=NOW)
    with pytest.raises(UploadRefused) as caught:
        pending.write(b"12345")
    assert caught.value.code == "EntityTooLarge"
    pending.abort()
    assert store.facts("ota/three.bin") is None
    assert upload(store, form, b"1234").size == 4


def test_a_stored_file_is_never_replaced_by_an_upload(store: PackageStore) -> None:
    store.add_bytes("ota/four.bin", b"operator's file")
    with pytest.raises(UploadRefused) as caught:
        store.begin_upload(form_of(store, "ota/four.bin"), now=NOW)
    assert caught.value.code == "FileAlreadyExists"
    assert store.path("ota/four.bin").read_bytes() == b"operator's file"


def test_the_published_key_only_runs_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTAFLOW_BIND", raising=False)
    assert bind_address() == "127.0.0.1"
    dev = config.Settings()
    assert dev.url_signing_key == DEV_SIGNING_KEY
    require_private_signing_key(dev)  # the dev stack: everything on loopback
    for unsafe in (
        replace(dev, kafka_bootstrap="kafka:9092"),
        replace(dev, package_base_url="https://ota.example.com"),
        replace(dev, url_signing_key="short"),
    ):
        with pytest.raises(UnsafeSettings):
            PackageStore(unsafe)
    monkeypatch.setenv("OTAFLOW_BIND", "0.0.0.0")
    with pytest.raises(UnsafeSettings):
        require_private_signing_key(dev)
    secret = replace(dev, kafka_bootstrap="kafka:9092", url_signing_key="s" * 32)
    require_private_signing_key(secret)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_platform_fields_drive_a_postobject_upload(store: PackageStore, tmp_path: Path) -> None:
    """GenerateOTAUploadURL's fields, and nothing else, make the form; .tar.xz and .pack
    are accepted suffixes (the console's list)."""
    api = Api(config.Settings(), control_client=None, views=None, packages=store)  # type: ignore[arg-type]
    fields = api.local("GenerateOTAUploadURL", {"FileSuffix": "tar.xz"})
    assert fields["Key"].endswith(".tar.xz") and "UploadUrl" not in fields
    assert api.local("GenerateOTAUploadURL", {"FileSuffix": "pack"})["Key"].endswith(".pack")

    async def go() -> None:
        async with TestClient(TestServer(make_app(store))) as client:

            def form(data: bytes, **override: str) -> FormData:
                values = {
                    "key": fields["Key"],
                    "policy": fields["Policy"],
                    "OSSAccessKeyId": fields["OSSAccessKeyId"],
                    "Signature": fields["Signature"],
                    "success_action_status": "201",
                    **override,
                }
                out = FormData()
                for name, value in values.items():
                    out.add_field(name, value)
                out.add_field("file", data, filename="fw.tar.xz")
                return out

            forged = await client.post("/", data=form(b"x", Signature="AAAA"))
            body = await forged.text()
            assert forged.status == 403 and "<Code>SignatureDoesNotMatch</Code>" in body
            done = await client.post("/", data=form(b"package bytes"))
            assert done.status == 201, await done.text()
            assert f"<Key>{fields['Key']}</Key>" in await done.text()
            again = await client.post("/", data=form(b"other bytes"))
            text = await again.text()
            assert again.status == 409 and "<Code>FileAlreadyExists</Code>" in text
            # No error names a server path or carries a trace.
            for answer in (body, text):
                assert str(tmp_path) not in answer and "Traceback" not in answer
            missing = await client.get("/packages/ota/nothing.bin?Expires=1&Signature=x")
            assert missing.status == 403 and str(tmp_path) not in await missing.text()

    run(go())
    stored = store.facts(file_path_of_url(fields["FirmwareUrl"]))
    assert stored is not None and stored.size == len(b"package bytes")


@pytest.mark.parametrize("module", ["otaflow.api_main", "streams.worker"])
def test_processes_refuse_to_start_off_loopback_with_the_dev_key(
    module: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTAFLOW_")}
    # Nothing listens there: a process that got past the check would fail differently.
    env.update(OTAFLOW_KAFKA_BOOTSTRAP="192.0.2.1:9092", OTAFLOW_DATA=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-m", module], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "OTAFLOW_URL_SIGNING_KEY" in done.stderr and "Traceback" not in done.stderr


def test_an_unexpected_server_error_names_no_path(
    store: PackageStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(form: Any, now: float | None = None) -> Any:
        raise OSError(28, "No space left on device", str(tmp_path / "packages" / "ota"))

    monkeypatch.setattr(store, "begin_upload", broken)

    async def go() -> tuple[int, str]:
        async with TestClient(TestServer(make_app(store))) as client:
            form = FormData()
            form.add_field("key", "ota/x.bin")
            form.add_field("file", b"x", filename="x.bin")
            answer = await client.post("/", data=form)
            return answer.status, await answer.text()

    status, text = run(go())
    assert status == 500 and "<Code>InternalError</Code>" in text
    assert str(tmp_path) not in text and "Traceback" not in text and "No space" not in text
