"""Parameter types shared by the routes."""

from __future__ import annotations

from typing import Any

from pydantic import BeforeValidator


def _ascii_digits(value: Any) -> Any:
    # int() also reads "9\x85" (a trailing Unicode space) or "٣" (an Arabic-Indic digit) as a
    # number; an id in a URL is plain ASCII digits, anything else is a 422 like any other bad id.
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        raise ValueError("must be a non-negative integer written in the digits 0-9")
    return value


ASCII_ID = BeforeValidator(_ascii_digits)
