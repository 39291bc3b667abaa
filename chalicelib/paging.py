"""Opaque pagination tokens: base64url JSON that the server alone interprets."""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from chalicelib.errors import ValidationFailed


def encode(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).decode().rstrip("=")


def decode(token: str | None) -> dict[str, Any] | None:
    if token is None:
        return None
    try:
        if len(token) > 2048:
            raise ValueError
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if not isinstance(data, dict):
            raise ValueError
        return data
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ValidationFailed("nextToken: is not a token this API issued.", field="nextToken") from None


def page_size(raw: str | None, default: int = 20, maximum: int = 100) -> int:
    if raw is None:
        return default
    if not re.fullmatch(r"[0-9]{1,4}", raw) or not 1 <= int(raw) <= maximum:
        raise ValidationFailed(f"pageSize: must be an integer from 1 to {maximum}.", field="pageSize")
    return int(raw)
