"""Failures that are no fault of the request or job: a service it needs does not answer, or the disk is full.
One classification for the API (which answers them 503 / 507 with Retry-After) and the workers (which hand the
job back to resume later), instead of a list of exception types in each."""

from __future__ import annotations

import errno

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

DATABASE, RATE_LIMITER, STORAGE = "database_unavailable", "rate_limiter_unavailable", "insufficient_storage"
# The exception types that may be one (handlers are registered for each; `outage_code` decides).
KINDS: tuple[type[BaseException], ...] = (OperationalError, InterfaceError, DBAPIError, PoolTimeoutError,
                                          RedisConnectionError, RedisTimeoutError, OSError)


def outage_code(exc: BaseException) -> str | None:
    """DATABASE (refused, reset, timed out, pool exhausted: the failed transaction was rolled back), RATE_LIMITER
    (Redis does not answer), STORAGE (the disk is full), or None for anything else."""
    if isinstance(exc, OperationalError | InterfaceError | PoolTimeoutError) or (
            isinstance(exc, DBAPIError) and exc.connection_invalidated):
        return DATABASE
    if isinstance(exc, RedisConnectionError | RedisTimeoutError):
        return RATE_LIMITER
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return STORAGE
    return None
