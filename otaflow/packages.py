"""The package store: firmware files on disk, and the signed URLs devices fetch them by.

A download URL is ``{base}/packages/{path}?Expires={unix s}&Signature={hex}``, the
HMAC-SHA256 of ``path\\nexpires`` under the deployment's URL key. It is valid for 24
hours (the platform's rule); the package server refuses expired or altered URLs.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

from otaflow import config

URL_LIFETIME_S = 24 * 3600
PACKAGE_PREFIX = "/packages/"


@dataclass(frozen=True)
class StoredPackage:
    file_path: str
    size: int
    sha256: str
    md5: str


def package_dir() -> Path:
    return Path(os.environ.get("OTAFLOW_PACKAGE_DIR", config.cache_dir() / "packages"))


def file_path_of_url(url: str) -> str:
    """The store path a package URL (from GenerateOTAUploadURL or a push) points at."""
    path = urlparse(url).path if "://" in url else url
    if path.startswith(PACKAGE_PREFIX):
        path = path[len(PACKAGE_PREFIX) :]
    return unquote(path.lstrip("/"))


class PackageStore:
    def __init__(self, settings: config.Settings, root: Path | None = None) -> None:
        self.settings = settings
        self.root = root or package_dir()
        self.key = settings.url_signing_key.encode()

    def path(self, file_path: str) -> Path:
        resolved = (self.root / file_path).resolve()
        if not resolved.is_relative_to(self.root.resolve()):
            raise ValueError(f"package path escapes the store: {file_path!r}")
        return resolved

    def add_bytes(self, file_path: str, data: bytes) -> StoredPackage:
        target = self.path(file_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(target.suffix + ".part")
        tmp.write_bytes(data)
        tmp.replace(target)
        return self.describe(file_path)

    def add_file(self, file_path: str, source: Path) -> StoredPackage:
        target = self.path(file_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        return self.describe(file_path)

    def describe(self, file_path: str) -> StoredPackage:
        sha, md5, size = hashlib.sha256(), hashlib.md5(), 0
        with self.path(file_path).open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                sha.update(block)
                md5.update(block)
                size += len(block)
        return StoredPackage(file_path, size, sha.hexdigest(), md5.hexdigest())

    def url(self, file_path: str) -> str:
        """The unsigned location (what GenerateOTAUploadURL hands out)."""
        return f"{self.settings.package_base_url}{PACKAGE_PREFIX}{quote(file_path)}"

    def signature(self, file_path: str, expires: int, method: str = "GET") -> str:
        # The method is signed too: a download link must never be usable to upload.
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
