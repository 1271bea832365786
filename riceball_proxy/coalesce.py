"""Writing a stream's events so that those already at hand leave in one write.

An upstream often sends several chunks in one TCP segment (and a fast one sends a whole answer at
once); the gateway would then make one write, one system call, per chunk. :func:`write_coalesced`
asks the event iterator for its next event by stepping its awaitable by hand: when the event is ready
without waiting, it is kept; as soon as the next one would wait for the network, what was kept is
written, in one write, and only then does it wait. No event is ever held back while the gateway waits
for more, so nothing is delayed: chunks that arrive one by one still leave one by one.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from typing import Any


async def write_coalesced(write: Callable[[bytes], Awaitable[None]], events: AsyncIterator[bytes]) -> None:
    """``write`` every event of ``events``, joining those that are ready together into one write.

    An exception from ``events`` is raised after the events before it are written; a cancellation is
    raised at once (its waiting step is closed).
    """
    pending: list[bytes] = []
    try:
        while True:
            step: Any = events.__anext__()  # a coroutine, stepped by hand
            try:
                signal = step.send(None)
            except StopIteration as ready:  # the next event was at hand: keep it with the others
                pending.append(ready.value)
                continue
            if pending:  # the next event has to wait: what is at hand goes now
                data = b"".join(pending)
                pending.clear()
                try:
                    await write(data)
                except BaseException:
                    step.close()
                    raise
            pending.append(await _finish(step, signal))
    except StopAsyncIteration:
        pass
    except Exception:
        if pending:
            await write(b"".join(pending))
        raise
    if pending:
        await write(b"".join(pending))


async def _finish(step: Generator[Any, None, bytes], signal: Any) -> bytes:
    """Go on with a step that stopped to wait on ``signal`` (a future, or None to let the loop run once),
    as the task running it would, and return what it returns."""
    while True:
        try:
            if signal is None:
                await asyncio.sleep(0)
            else:
                # What a task does with a future its coroutine yields (the future protocol): the flag that
                # says "awaited by a coroutine" is taken back, so that this await may set it again.
                signal._asyncio_future_blocking = False
                await signal
        except BaseException as exc:  # the wait failed or this task was cancelled: the step hears it
            try:
                signal = step.throw(exc)
            except StopIteration as done:
                return done.value
            continue
        try:
            signal = step.send(None)
        except StopIteration as done:
            return done.value
