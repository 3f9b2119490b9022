"""The retry schedule: exponential from the base, capped, with jitter in [0.5, 1.5) of the step."""

import random

from app.config import Settings
from app.webhooks.delivery import retry_delay


def test_delays_double_are_capped_and_jittered() -> None:
    settings = Settings(webhook_retry_base_seconds=5, webhook_retry_max_seconds=3600)
    rng = random.Random(0)
    for attempt in range(1, 20):
        step = min(3600, 5 * 2 ** (attempt - 1))
        delays = [retry_delay(attempt, settings=settings, rng=rng) for _ in range(200)]
        assert all(0.5 * step <= d < 1.5 * step for d in delays), attempt
        assert max(delays) - min(delays) > 0.5 * step  # the jitter spreads receivers' retries
