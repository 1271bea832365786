"""Fallback targets' circuits shared through Redis (``RICEBALL_REDIS_URL``), so that every process and
instance rests a failing target as soon as one of them has opened its circuit.

A process that opens or closes a circuit (or rests a target on a ``Retry-After``) writes the target's
state into the hash ``riceball:circuits`` and publishes its key on the channel of the same name; every
process listens and copies the state it is told of. Calls never wait for Redis: writes go in a task of
their own, and while Redis is away each process keeps judging by its own failures.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from riceball_proxy.api.routing import Circuits

logger = logging.getLogger(__name__)

KEY = "riceball:circuits"
#: Seconds between attempts to listen again after Redis went away.
RECONNECT_DELAY = 1.0


def field(key: tuple[int, str]) -> str:
    return f"{key[0]}:{key[1]}"


def parse_field(text: str) -> tuple[int, str]:
    provider_id, _, model = text.partition(":")
    return int(provider_id), model


async def read_all(redis: aioredis.Redis) -> dict[tuple[int, str], list]:
    """Every shared circuit state: (provider id, model) -> [failures, resting until, cooldown, error, when]."""
    return {parse_field(name.decode() if isinstance(name, bytes) else name): orjson.loads(value)
            for name, value in (await redis.hgetall(KEY)).items()}


class SharedCircuits:
    """Keeps ``circuits`` in step with every other process's, through Redis."""

    def __init__(self, circuits: Circuits, url: str):
        self.circuits = circuits
        self.redis = aioredis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._tasks: set[asyncio.Task] = set()
        self._listener: asyncio.Task | None = None
        circuits.on_change = self.changed

    async def start(self) -> None:
        self._listener = asyncio.get_running_loop().create_task(self._listen(), name="riceball-circuits")

    def changed(self, key: tuple[int, str]) -> None:
        """Tell the others, off the request path."""
        task = asyncio.get_running_loop().create_task(self._publish(key, self.circuits.state.get(key)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish(self, key: tuple[int, str], state: list | None) -> None:
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                if state is None:
                    pipe.hdel(KEY, field(key))
                else:
                    pipe.hset(KEY, field(key), orjson.dumps(state))
                pipe.publish(KEY, field(key))
                await pipe.execute()
        except (RedisError, OSError) as exc:
            logger.warning("could not share the circuit of %s through Redis: %s", field(key), exc)

    async def _listen(self) -> None:
        while True:
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.subscribe(KEY)
                    for key, state in (await read_all(self.redis)).items():  # what was decided meanwhile
                        self.circuits.state[key] = state
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            await self._copy(message["data"].decode())
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                logger.warning("not listening to shared circuits (%s); trying again", exc)
                await asyncio.sleep(RECONNECT_DELAY)

    async def _copy(self, name: str) -> None:
        value = await self.redis.hget(KEY, name)
        key = parse_field(name)
        if value is None:
            self.circuits.state.pop(key, None)
        else:
            self.circuits.state[key] = orjson.loads(value)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, RedisError, OSError):
                await self._listener
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)
        self.circuits.on_change = None
        await self.redis.aclose()
