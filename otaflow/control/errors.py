"""Errors the control plane answers with, in the platform's shape (Code + ErrorMessage)."""

from __future__ import annotations


class ApiError(Exception):
    """A refused call. ``code`` is the platform's error code, ``message`` its text."""

    def __init__(self, code: str, message: str, http_status: int = 200) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        # The platform answers business errors with HTTP 200 and Success=false;
        # only authentication and malformed requests use 4xx.
        self.http_status = http_status


def missing(name: str) -> ApiError:
    return ApiError("iot.common.InvalidFormattedParameter", f"{name} is mandatory for this action.")


def invalid(name: str, why: str) -> ApiError:
    return ApiError(
        "iot.common.InvalidFormattedParameter", f"The parameter {name} is invalid: {why}"
    )
