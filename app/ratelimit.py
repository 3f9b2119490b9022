"""Per-API-key rate limiting with the `limits` library (memory for one process, Redis for several)."""

import time
from functools import lru_cache

from limits import RateLimitItem, parse
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from app.config import Settings
from app.errors import AppError


class RateLimited(AppError):
    status, code, title = 429, "rate_limited", "Too many requests"


@lru_cache(maxsize=4)
def _item(rate_limit: str) -> RateLimitItem:
    return parse(rate_limit)  # a regex parse; the setting does not change between requests


@lru_cache(maxsize=4)
def _limiter(storage_url: str) -> MovingWindowRateLimiter:
    return MovingWindowRateLimiter(storage_from_string(storage_url))


def check_rate_limit(*, settings: Settings, key_sha256: str) -> None:
    """Count one request for this key; raise RateLimited (with Retry-After) past the limit."""
    if not settings.rate_limit:
        return
    item = _item(settings.rate_limit)
    limiter = _limiter(settings.rate_limit_storage_url)
    if not limiter.hit(item, "key", key_sha256):  # one storage call (one round trip with Redis) when allowed
        reset_at, _remaining = limiter.get_window_stats(item, "key", key_sha256)
        retry = max(1, int(reset_at - time.time()))
        raise RateLimited(f"rate limit of {settings.rate_limit} per API key exceeded; retry in {retry}s",
                          headers={"Retry-After": str(retry)})
