"""Failed password attempts: counted per user name (in storage, so every instance sees them) and
per client address (in this instance's memory), and refused for a while past a limit.

A name that failed `limit` times within the window is refused, right password or not, until the
window ends; so is an address that failed ADDRESS_FACTOR times as often (many users may share
one address behind a NAT). Refresh tokens already issued keep working: a lockout (which anyone
who knows a name can cause) pauses password logins, not running pipelines.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from datetime import UTC, datetime, timedelta

from registry.storage.access_store import AccessStore

MAX_ADDRESSES = 10_000  # addresses remembered per instance (the oldest are forgotten first)
ADDRESS_FACTOR = 10


class TooManyFailures(Exception):
    def __init__(self, retry_after: int):
        super().__init__(f"too many failed attempts; retry in {retry_after} s")
        self.retry_after = retry_after


class FailureLimiter:
    def __init__(self, access: AccessStore, limit: int, window_seconds: int):
        self._access = access
        self._limit = limit
        self._window = window_seconds
        self._by_address: OrderedDict[str, deque[float]] = OrderedDict()

    async def check(self, name: str | None, address: str) -> None:
        """Raise TooManyFailures while `name` (None: not counted by name) or `address` is locked out."""
        now = time.monotonic()
        recent = self._recent(address, now)
        if len(recent) >= self._limit * ADDRESS_FACTOR:
            raise TooManyFailures(max(1, int(recent[0] + self._window - now)))
        if name is not None:
            count, since = await self._access.failures(name, self._window)
            if count >= self._limit and since is not None:
                ends = since + timedelta(seconds=self._window)
                raise TooManyFailures(max(1, int((ends - datetime.now(UTC)).total_seconds())))

    async def failed(self, name: str | None, address: str) -> None:
        self._recent(address, time.monotonic()).append(time.monotonic())
        if name is not None:
            await self._access.record_failure(name, self._window)

    def _recent(self, address: str, now: float) -> deque[float]:
        attempts = self._by_address.get(address)
        if attempts is None:
            attempts = self._by_address[address] = deque()
            while len(self._by_address) > MAX_ADDRESSES:
                self._by_address.popitem(last=False)
        while attempts and attempts[0] + self._window < now:
            attempts.popleft()
        return attempts
