"""Field types every wire schema shares, with the bounds the database and Python's datetime impose.

Unbounded, an integer would reach `datetime.fromtimestamp` (OverflowError / ValueError past year 9999) or
a 32-bit database column (an error on PostgreSQL): both 500s. Bounded here, pydantic answers 400 naming
the field."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field

from llmaas.protocol.openai import check_metadata

INT32_MAX = 2**31 - 1
# 9999-12-31T23:59:59Z: the last second Python's datetime (and so every timestamp we store) can hold.
MAX_UNIX_TIME = 253_402_300_799
MAX_DAYS = 36_500  # a century: longer than any expiry or retention anyone means

UnixTime = Annotated[int, Field(ge=0, le=MAX_UNIX_TIME, description="Unix seconds")]
Int32 = Annotated[int, Field(ge=1, le=INT32_MAX)]
# OpenAI's limits on `metadata` (16 pairs, keys up to 64 characters, values up to 512), for every object
# that takes metadata.
Metadata = Annotated[dict[str, str] | None, AfterValidator(check_metadata)]

__all__ = ["INT32_MAX", "MAX_DAYS", "MAX_UNIX_TIME", "Int32", "Metadata", "UnixTime", "check_metadata"]
