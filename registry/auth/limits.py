"""Failed password attempts: counted per user name (in storage, so every instance sees them) and
per client address (in this instance's memory), and refused for a while past a limit.

A name that failed `limit` times within the window is refused, right password or not, until the
window has moved past those failures; so is an address that failed ADDRESS_FACTOR times as often
(many users may share one address behind a NAT). Parallel guesses cannot outrun the count: an
attempt counts against its address from the moment it arrives until it succeeds, and attempts
for one name take turns on each instance, each reading the stored count first and recording its
failure before the next one starts (so, across N instances, at most N more can slip through).
Logins with a refresh token or an Entra token are not limited: those cannot be guessed.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from registry.storage.access_store import AccessStore

MAX_REMEMBERED = 10_000  # addresses and names remembered per instance (the oldest go first)
ADDRESS_FACTOR = 10


class TooManyFailures(Exception):
    def __init__(self, retry_after: int):
        super().__init__(f"too many failed attempts; retry in {retry_after} s")
        self.retry_after = retry_after


@dataclass
class Attempt:
    failed: bool = False  # the caller sets it when the credentials were wrong


class FailureLimiter:
    def __init__(self, access: AccessStore, limit: int, window_seconds: int):
        self._access = access
        self._limit = limit
        self._window = window_seconds
        self._by_address: OrderedDict[str, deque[float]] = OrderedDict()
        self._turns: OrderedDict[str, asyncio.Lock] = OrderedDict()

    @asynccontextmanager
    async def attempt(self, name: str, address: str) -> AsyncIterator[Attempt]:
        """One password attempt for `name` from `address`: TooManyFailures while either is
        locked out; otherwise the attempt runs in the `async with`, and a failure is recorded."""
        now = time.monotonic()
        recent = self._recent(address, now)
        if len(recent) >= self._limit * ADDRESS_FACTOR:
            raise TooManyFailures(max(1, int(recent[0] + self._window - now)))
        recent.append(now)  # before the first await: a burst is counted as it arrives
        outcome, succeeded = Attempt(), False
        try:
            async with self._turn(name):
                window_start = datetime.now(UTC) - timedelta(seconds=self._window)
                failures = await self._access.failures_since(name, window_start, self._limit)
                if len(failures) >= self._limit:
                    ends = failures[0] + timedelta(seconds=self._window)
                    raise TooManyFailures(max(1, int((ends - datetime.now(UTC)).total_seconds()) + 1))
                try:
                    yield outcome
                    succeeded = not outcome.failed
                finally:
                    if outcome.failed:
                        await self._access.record_failure(name)
        finally:
            if succeeded:  # anything else (a refusal, a lockout) keeps counting against the address
                _discard(recent, now)

    def _turn(self, name: str) -> asyncio.Lock:
        lock = self._turns.get(name)
        if lock is None:
            lock = self._turns[name] = asyncio.Lock()
            while len(self._turns) > MAX_REMEMBERED:
                oldest, held = next(iter(self._turns.items()))
                if held.locked():
                    break
                del self._turns[oldest]
        return lock

    def _recent(self, address: str, now: float) -> deque[float]:
        attempts = self._by_address.get(address)
        if attempts is None:
            attempts = self._by_address[address] = deque()
            while len(self._by_address) > MAX_REMEMBERED:
                self._by_address.popitem(last=False)
        while attempts and attempts[0] + self._window < now:
            attempts.popleft()
        return attempts


def _discard(attempts: deque[float], stamp: float) -> None:
    try:
        attempts.remove(stamp)
    except ValueError:
        pass  # already aged out
