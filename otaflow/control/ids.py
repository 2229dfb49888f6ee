"""Identifiers for firmware, batches and requests.

Derived from the command's request id, so a command applied twice after a crash
makes the same ids (and the request-id check finds it already done).
"""

from __future__ import annotations

import hashlib

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def derived_id(request_id: str, salt: str, length: int = 22) -> str:
    digest = int.from_bytes(hashlib.sha256(f"{salt}|{request_id}".encode()).digest(), "big")
    chars = []
    for _ in range(length):
        digest, rem = divmod(digest, len(_ALPHABET))
        chars.append(_ALPHABET[rem])
    return "".join(chars)
