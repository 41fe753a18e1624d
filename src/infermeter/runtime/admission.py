"""Admission control: at most ``max_active`` requests in the worker, a bounded FIFO queue in
front of it, and a refusal with a retry hint past that.

A request waiting here costs an event-loop future and nothing else: the worker's scheduler
only ever holds the admitted ones, so its per-step work and the pipeline's queues stay the
size of a full batch plus a margin however many clients connect, and time to first token
grows with the queue instead of every stream slowing down at once.

    await admission.enter()      # waits its turn; raises Overloaded past the queue bound
    ...submit the request...     # on an error before it is submitted: admission.leave()
    admission.leave()            # once, when the request has finished (any thread)

(Not a context manager: a stream's slot outlives the handler that took it.)

``leave`` may be called from any thread (the ledger writer's, for a finished request); a
waiter is woken on its own event loop. No clocks and no service objects: tests drive it
with plain asyncio.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from infermeter.core.errors import Unavailable

T = TypeVar("T")


class Overloaded(Unavailable):
    """Every slot is busy and the waiting queue is full: retry after ``retry_after_s``."""

    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    max_active: int  # requests handed to the worker at once (running or in its batch queue)
    max_queued: int  # requests waiting here for a slot; past this they are refused
    retry_after_s: int = 1  # the Retry-After a refused client is given

    def __post_init__(self) -> None:
        if self.max_active < 1 or self.max_queued < 0 or self.retry_after_s < 1:
            raise ValueError(
                f"admission limits need max_active >= 1, max_queued >= 0, retry_after_s >= 1; got {self}"
            )


@dataclass(slots=True)
class _Waiter:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]
    granted: bool = False


class Admission:
    """Counts active requests; queues the rest in arrival order up to a bound."""

    def __init__(self, limits: AdmissionLimits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._active = 0
        self._waiting: deque[_Waiter] = deque()

    @property
    def active(self) -> int:
        return self._active

    @property
    def queued(self) -> int:
        return len(self._waiting)

    async def enter(self) -> None:
        """Take a slot, waiting in line for one; raise ``Overloaded`` if the line is full."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._active < self.limits.max_active and not self._waiting:
                self._active += 1
                return
            if len(self._waiting) >= self.limits.max_queued:
                raise Overloaded(
                    f"the server is at its limit: {self._active} requests running and "
                    f"{len(self._waiting)} waiting (max_active={self.limits.max_active}, "
                    f"max_queued={self.limits.max_queued}); retry after "
                    f"{self.limits.retry_after_s} s or send fewer requests at once",
                    retry_after_s=self.limits.retry_after_s,
                )
            waiter = _Waiter(loop, loop.create_future())
            self._waiting.append(waiter)
        try:
            await waiter.future
        except asyncio.CancelledError:
            with self._lock:
                granted = waiter.granted
                if not granted:
                    self._waiting.remove(waiter)
            if granted:  # the slot was handed over as the client left: pass it on
                self.leave()
            raise

    async def admit(self, submit: Callable[[], Awaitable[T]]) -> T:
        """``enter``, then ``submit()`` (validation, budget, hand-off to the worker); the slot is
        given back if ``submit`` raises, else it is the request's until ``leave``."""
        await self.enter()
        try:
            return await submit()
        except BaseException:
            self.leave()
            raise

    def leave(self) -> None:
        """Give a slot back (any thread): to the oldest waiter, else to the pool."""
        with self._lock:
            if not self._waiting:
                self._active = max(0, self._active - 1)
                return
            waiter = self._waiting.popleft()
            waiter.granted = True  # the slot passes over; the active count is unchanged
        waiter.loop.call_soon_threadsafe(_wake, waiter.future)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
