"""The package store: firmware files on disk, how they get there, and the signed URLs
devices fetch them by.

Downloads: ``{base}/packages/{path}?Expires={unix s}&Signature={hex}``, the
HMAC-SHA256 of ``GET\\npath\\nexpires`` under the deployment's URL key. Valid for 24
hours (the platform's rule); the package server refuses expired or altered URLs.

Uploads follow the object store's PostObject form, as GenerateOTAUploadURL describes
it: a multipart POST to ``Host`` with ``key``, ``policy``, ``OSSAccessKeyId``,
``Signature`` (and optionally ``success_action_status``), then ``file``. The policy is
base64 JSON (``expiration`` and ``conditions``, as the object store writes it) and the
signature is base64 HMAC-SHA256 of it under the URL key. Every upload grant is

* short-lived: it expires ``UPLOAD_LIFETIME_S`` after it was issued;
* for one key only, a fresh random one per GenerateOTAUploadURL call;
* single-use: the first upload that passes the checks claims the key (an exclusive
  create on disk, so two servers sharing the store agree); a second upload with the
  same grant is refused, and an upload never replaces a stored file. A package a
  firmware references can therefore never change under it.

Every stored file has its facts (size, MD5, SHA-256) kept beside it under ``.meta/``,
computed while the bytes streamed in, so CreateOTAFirmware reads them without
hashing a gigabyte on the command agent.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, unquote, urlparse

from otaflow import config

URL_LIFETIME_S = 24 * 3600
PACKAGE_PREFIX = "/packages/"
#: How long an upload grant (GenerateOTAUploadURL's policy) stays usable: the platform's
#: minute. It is checked when the upload starts, so a large file may take longer.
UPLOAD_LIFETIME_S = 60
#: The console's limit for one package file over HTTPS: 1,000 MB.
MAX_PACKAGE_BYTES = 1000 * 1024 * 1024
#: What GenerateOTAUploadURL answers as OSSAccessKeyId (there is no bucket owner here);
#: an upload must send it back unchanged.
UPLOAD_ACCESS_KEY_ID = "otaflow"
#: The URL key every checkout knows; only a deployment that runs wholly on loopback may
#: use it (see ``require_private_signing_key``).
DEV_SIGNING_KEY = "otaflow-dev-url-key"
_META_DIR = ".meta"
_CLAIM_DIR = ".claims"


@dataclass(frozen=True)
class StoredPackage:
    file_path: str
    size: int
    sha256: str
    md5: str


@dataclass(frozen=True)
class UploadGrant:
    """GenerateOTAUploadURL's fields for one upload."""

    key: str
    policy: str
    signature: str
    expires_at: int


class UploadRefused(Exception):
    """An upload the store will not take, in the object store's error terms."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class UnsafeSettings(RuntimeError):
    """Settings otaflow refuses to start with."""


def package_dir() -> Path:
    return Path(os.environ.get("OTAFLOW_PACKAGE_DIR", config.cache_dir() / "packages"))


def file_path_of_url(url: str) -> str:
    """The store path a package URL (from GenerateOTAUploadURL or a push) points at."""
    path = urlparse(url).path if "://" in url else url
    if path.startswith(PACKAGE_PREFIX):
        path = path[len(PACKAGE_PREFIX) :]
    return unquote(path.lstrip("/"))


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _hosts_of_bootstrap(bootstrap: str) -> list[str | None]:
    return [urlparse(f"kafka://{server.strip()}").hostname for server in bootstrap.split(",")]


def require_private_signing_key(settings: config.Settings) -> None:
    """Refuse the published dev key unless the whole deployment is on loopback.

    "The dev stack" is a deployment nothing outside the machine can reach: Kafka, the
    address the servers bind to and the package URL devices are given all loopback.
    Anywhere else a key every checkout knows would let anyone sign download and upload
    grants, so otaflow does not start; set ``OTAFLOW_URL_SIGNING_KEY`` (32+ characters,
    the same in every process of the deployment).
    """
    key = settings.url_signing_key
    on_loopback = (
        all(_is_loopback(h) for h in _hosts_of_bootstrap(settings.kafka_bootstrap))
        and _is_loopback(bind_address())
        and _is_loopback(urlparse(settings.package_base_url).hostname)
    )
    if key == DEV_SIGNING_KEY and not on_loopback:
        raise UnsafeSettings(
            "OTAFLOW_URL_SIGNING_KEY is the published dev key and this deployment is not "
            "on loopback: set OTAFLOW_URL_SIGNING_KEY to a secret of 32+ characters "
            "(the same in every otaflow process)"
        )
    if key != DEV_SIGNING_KEY and len(key) < 32:
        raise UnsafeSettings("OTAFLOW_URL_SIGNING_KEY must be at least 32 characters")


def bind_address() -> str:
    """Where the API and package servers listen: loopback unless ``OTAFLOW_BIND`` says."""
    return os.environ.get("OTAFLOW_BIND", "127.0.0.1")


def _utc_iso(seconds: int) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _parse_utc_iso(text: str) -> int:
    moment = dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
    return int(moment.timestamp())


class PackageUpload:
    """One upload in flight: bytes go to a part file, hashed as they come."""

    def __init__(self, store: PackageStore, key: str, max_bytes: int) -> None:
        self.store = store
        self.key = key
        self.max_bytes = max_bytes
        self.target = store.path(key)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.part = self.target.with_name(self.target.name + ".part")
        self._fh: BinaryIO | None = self.part.open("wb")
        self._sha, self._md5, self.size = hashlib.sha256(), hashlib.md5(), 0

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise UploadRefused(
                400, "EntityTooLarge", f"A package file may have at most {self.max_bytes} bytes."
            )
        self._sha.update(chunk)
        self._md5.update(chunk)
        assert self._fh is not None
        self._fh.write(chunk)

    def commit(self) -> StoredPackage:
        assert self._fh is not None
        self._fh.close()
        self._fh = None
        if self.size == 0:
            raise UploadRefused(400, "EntityTooSmall", "The package file is empty.")
        stored = StoredPackage(self.key, self.size, self._sha.hexdigest(), self._md5.hexdigest())
        self.store._write_meta(stored)
        self.part.replace(self.target)
        return stored

    def abort(self) -> None:
        """Nothing was stored: the grant may be used again until it expires."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self.part.unlink(missing_ok=True)
        self.store._claim_path(self.key).unlink(missing_ok=True)


class PackageStore:
    def __init__(self, settings: config.Settings, root: Path | None = None) -> None:
        require_private_signing_key(settings)
        self.settings = settings
        self.root = root or package_dir()
        self.key = settings.url_signing_key.encode()

    def path(self, file_path: str) -> Path:
        if any(part.startswith(".") for part in Path(file_path).parts):
            raise ValueError("package paths have no hidden segments")
        resolved = (self.root / file_path).resolve()
        if not resolved.is_relative_to(self.root.resolve()):
            raise ValueError("package path escapes the store")
        return resolved

    # -- files ------------------------------------------------------------------------

    def add_bytes(self, file_path: str, data: bytes) -> StoredPackage:
        """Store a file directly (operators, tests, the demo); uploads use ``begin_upload``."""
        target = self.path(file_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".part")
        tmp.write_bytes(data)
        stored = StoredPackage(
            file_path, len(data), hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest()
        )
        self._write_meta(stored)
        tmp.replace(target)
        return stored

    def add_file(self, file_path: str, source: Path) -> StoredPackage:
        target = self.path(file_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        stored = self.describe(file_path)
        self._write_meta(stored)
        return stored

    def describe(self, file_path: str) -> StoredPackage:
        sha, md5, size = hashlib.sha256(), hashlib.md5(), 0
        with self.path(file_path).open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                sha.update(block)
                md5.update(block)
                size += len(block)
        return StoredPackage(file_path, size, sha.hexdigest(), md5.hexdigest())

    def facts(self, file_path: str) -> StoredPackage | None:
        """Size and digests of a stored file, or None when there is no such file."""
        try:
            target = self.path(file_path)
        except ValueError:
            return None
        if not target.is_file():
            return None
        size = target.stat().st_size
        try:
            meta = json.loads(self._meta_path(file_path).read_text())
            if meta["size"] == size:
                return StoredPackage(file_path, size, meta["sha256"], meta["md5"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        # Stored before facts were kept, or replaced by hand: hash it once.
        stored = self.describe(file_path)
        self._write_meta(stored)
        return stored

    def _meta_path(self, file_path: str) -> Path:
        return self.root / _META_DIR / f"{file_path}.json"

    def _write_meta(self, stored: StoredPackage) -> None:
        meta = self._meta_path(stored.file_path)
        meta.parent.mkdir(parents=True, exist_ok=True)
        tmp = meta.with_name(meta.name + ".tmp")
        tmp.write_text(json.dumps(asdict(stored)))
        tmp.replace(meta)

    # -- download URLs -----------------------------------------------------------------

    def url(self, file_path: str) -> str:
        """The unsigned location (GenerateOTAUploadURL's FirmwareUrl)."""
        return f"{self.settings.package_base_url}{PACKAGE_PREFIX}{quote(file_path)}"

    def signature(self, file_path: str, expires: int, method: str = "GET") -> str:
        # The method is signed too: a download link must never be usable for anything else.
        message = f"{method}\n{file_path}\n{expires}".encode()
        return hmac.new(self.key, message, hashlib.sha256).hexdigest()

    def signed_url(self, file_path: str, now: float | None = None, method: str = "GET") -> str:
        expires = int((now if now is not None else time.time()) + URL_LIFETIME_S)
        sig = self.signature(file_path, expires, method)
        return f"{self.url(file_path)}?Expires={expires}&Signature={sig}"

    def check(
        self,
        file_path: str,
        expires: str,
        signature: str,
        now: float | None = None,
        method: str = "GET",
    ) -> str:
        """Return '' when the URL is good, else why it is refused."""
        try:
            expires_at = int(expires)
        except ValueError:
            return "malformed Expires"
        if not hmac.compare_digest(self.signature(file_path, expires_at, method), signature):
            return "signature does not match"
        if (now if now is not None else time.time()) > expires_at:
            return "URL expired"
        return ""

    # -- uploads -----------------------------------------------------------------------

    def _policy_signature(self, policy: str) -> str:
        digest = hmac.new(self.key, b"POST-POLICY\n" + policy.encode(), hashlib.sha256)
        return base64.b64encode(digest.digest()).decode()

    def grant_upload(
        self, key: str, now: float | None = None, max_bytes: int = MAX_PACKAGE_BYTES
    ) -> UploadGrant:
        """A PostObject policy for one upload of ``key`` (a fresh random key per call)."""
        self.path(key)  # a key the store could never hold is never granted
        expires_at = int(now if now is not None else time.time()) + UPLOAD_LIFETIME_S
        document = {
            "expiration": _utc_iso(expires_at),
            "conditions": [
                ["eq", "$key", key],
                ["content-length-range", 1, max_bytes],
            ],
        }
        policy = base64.b64encode(json.dumps(document, separators=(",", ":")).encode()).decode()
        return UploadGrant(key, policy, self._policy_signature(policy), expires_at)

    def begin_upload(self, form: Mapping[str, str], now: float | None = None) -> PackageUpload:
        """Check an upload's form fields (everything before ``file``) and claim its key.

        Raises ``UploadRefused`` for a forged, altered, expired or reused grant.
        """
        fields = {name.lower(): value for name, value in form.items()}
        key, policy = fields.get("key", ""), fields.get("policy", "")
        signature = fields.get("signature", "")
        if not (key and policy and signature and "ossaccesskeyid" in fields):
            raise UploadRefused(
                400,
                "InvalidArgument",
                "key, policy, OSSAccessKeyId and Signature come before file.",
            )
        if fields["ossaccesskeyid"] != UPLOAD_ACCESS_KEY_ID:
            raise UploadRefused(403, "InvalidAccessKeyId", "The OSSAccessKeyId is not known.")
        if not hmac.compare_digest(self._policy_signature(policy), signature):
            raise UploadRefused(
                403, "SignatureDoesNotMatch", "The signature does not match the policy."
            )
        document = self._policy_document(policy)
        if (now if now is not None else time.time()) > _parse_utc_iso(document["expiration"]):
            raise UploadRefused(403, "AccessDenied", "Invalid according to Policy: Policy expired.")
        max_bytes = MAX_PACKAGE_BYTES
        for condition in document["conditions"]:
            if condition[0] == "eq" and condition[1] == "$key" and condition[2] != key:
                raise UploadRefused(
                    403, "AccessDenied", "Invalid according to Policy: key does not match."
                )
            if condition[0] == "content-length-range":
                max_bytes = int(condition[2])
        try:
            target = self.path(key)
        except ValueError:
            raise UploadRefused(400, "InvalidObjectName", "The key is not valid.") from None
        claim = self._claim_path(key)
        claim.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.close(os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            raise UploadRefused(
                409, "FileAlreadyExists", "This upload policy was already used."
            ) from None
        if target.exists():  # stored some other way: never replace it
            raise UploadRefused(409, "FileAlreadyExists", "A package is stored under this key.")
        return PackageUpload(self, key, max_bytes)

    def _policy_document(self, policy: str) -> dict[str, Any]:
        # Only reached once the signature matched, so this is our own document.
        document: dict[str, Any] = json.loads(base64.b64decode(policy))
        return document

    def _claim_path(self, key: str) -> Path:
        return self.root / _CLAIM_DIR / hashlib.sha256(key.encode()).hexdigest()
