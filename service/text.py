"""Text a client sends (bodies and query parameters), checked before it can reach the database.

PostgreSQL refuses NUL in text and JSON, and no name, note or filter here means a control character,
so both are a 422 naming the field instead of a database error:

- ``text(...)``: prose a person writes (purpose, reasons, notes): tab and line breaks allowed;
- ``line(...)``: one line (names, references, filters): no control character at all.

``IsoDateTime`` takes an ISO 8601 date-time only: pydantic would read ``0.5`` as seconds since 1970.
The patterns are also in the OpenAPI document, so a client (or a fuzzer) knows what is refused.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, StringConstraints
from pydantic_core import PydanticCustomError

# C0 controls, DEL, C1 controls; lone surrogates cannot be stored as UTF-8 either.
_LINE_REFUSED = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_TEXT_REFUSED = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
LINE_PATTERN = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"
TEXT_PATTERN = "^[^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*$"
_NUMBER = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")


def control_character(value: str) -> str | None:
    """The first character prose may not hold (as U+XXXX), or None: for text outside a pydantic model
    (the console's posted forms)."""
    found = _TEXT_REFUSED.search(value)
    return f"U+{ord(found.group()):04X}" if found else None


def _refusing(pattern: re.Pattern[str], allowed: str):
    def check(value: str) -> str:
        found = pattern.search(value)
        if found:
            raise PydanticCustomError(
                "control_character",
                "must not contain control characters{allowed} (found U+{code})",
                {"allowed": allowed, "code": f"{ord(found.group()):04X}"},
            )
        return value

    return AfterValidator(check)


_LINE = (_refusing(_LINE_REFUSED, ""), Field(json_schema_extra={"pattern": LINE_PATTERN}))
_TEXT = (_refusing(_TEXT_REFUSED, " other than tab and line breaks"), Field(json_schema_extra={"pattern": TEXT_PATTERN}))


def line(*, min_length: int | None = None, max_length: int | None = None, strip: bool = False) -> Any:
    """One line of text: ``Name = line(max_length=64)``, then ``name: Name``."""
    limits = StringConstraints(strip_whitespace=strip, min_length=min_length, max_length=max_length)
    return Annotated[str, limits, *_LINE]


def text(*, min_length: int | None = None, max_length: int | None = None, strip: bool = True) -> Any:
    """Prose (tab and line breaks allowed): ``Purpose = text(min_length=20, max_length=2000)``."""
    limits = StringConstraints(strip_whitespace=strip, min_length=min_length, max_length=max_length)
    return Annotated[str, limits, *_TEXT]


def _iso_only(value: Any) -> Any:
    if isinstance(value, int | float) or (isinstance(value, str) and _NUMBER.fullmatch(value)):
        raise PydanticCustomError(
            "iso_datetime", "must be an ISO 8601 date-time such as 2026-12-01T09:30:00Z, not a number"
        )
    return value


IsoDateTime = Annotated[datetime, BeforeValidator(_iso_only)]
