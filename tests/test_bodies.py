"""Request bodies and requests from clients that are slow, careless or hostile, on a real server: a
deadline on headers and bodies, the gateway's own decoding, and malformed requests answered 400 without
a traceback in the log."""
import asyncio
import gzip
import json
import logging
import random
import time
import zlib

import pytest

from riceball_proxy import appkeys

MESSAGES = [{"role": "user", "content": "hello"}]


async def exchange(port: int, head: bytes, body_pieces=(), pause: float = 0.0, read_timeout: float = 10.0):
    """Send ``head`` then each of ``body_pieces`` ``pause`` seconds apart on a raw connection; the bytes
    answered, and when the answer (or the close) came, in seconds from the start."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()

    async def send():
        try:
            writer.write(head)
            for piece in body_pieces:
                await writer.drain()
                await asyncio.sleep(pause)
                writer.write(piece)
            await writer.drain()
        except ConnectionError:
            pass

    sender = asyncio.create_task(send())
    try:
        answer = await asyncio.wait_for(reader.read(), read_timeout)
    finally:
        sender.cancel()
        writer.close()
    return answer, time.monotonic() - started


def status_and_body(answer: bytes) -> tuple[int, bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


@pytest.fixture
async def exposed(start_gateway, settings, fake_openai):
    """A gateway with a 1-second client read deadline, an assistant and a key."""
    gateway = await start_gateway(settings.replace(client_read_timeout=1.0))
    assistant = await gateway.assistant(await gateway.provider(fake_openai.base_url))
    key = await gateway.key()
    path = f"/api/v1/assistants/{assistant.id}/v1/chat/completions"

    def head(length: int, *extra: str) -> bytes:
        lines = [f"POST {path} HTTP/1.1", "Host: gateway", f"Authorization: Bearer {key}",
                 "Content-Type: application/json", f"Content-Length: {length}", *extra]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    gateway.head, gateway.port = head, gateway.server.port
    return gateway


async def test_a_body_that_trickles_in_is_answered_408_and_its_address_logged_once(exposed, caplog):
    body = json.dumps({"messages": MESSAGES}).encode()
    for _ in range(2):
        answer, took = await exchange(exposed.port, exposed.head(len(body)), [bytes([b]) for b in body], pause=0.3)
        status, payload = status_and_body(answer)
        assert status == 408 and json.loads(payload)["error"]["code"] == "request_timeout"
        assert 0.9 < took < 5
    said = [r for r in caplog.records if "did not send its request body within 1 s" in r.getMessage()]
    assert len(said) == 1  # the second from the same address is counted, not logged
    assert exposed.app[appkeys.METRICS].registry.get_sample_value("riceball_slow_requests_total") == 2


async def test_headers_that_trickle_in_are_cut_off_at_the_deadline_and_their_address_logged_once(exposed, caplog):
    head = exposed.head(10)
    for _ in range(2):
        answer, took = await exchange(exposed.port, head[:20], [bytes([b]) for b in head[20:]], pause=0.3)
        assert answer == b"" and 0.9 < took < 5  # closed, nothing answered: no request was ever whole
    said = [r.getMessage() for r in caplog.records if "did not send its request headers" in r.getMessage()]
    assert said == ["client 127.0.0.1 did not send its request headers within 1 s: closed without an answer "
                    "(later ones from this address are counted in riceball_slow_requests_total, not logged)"]
    assert exposed.app[appkeys.METRICS].registry.get_sample_value("riceball_slow_requests_total") == 2


async def test_an_idle_connection_is_closed_at_the_deadline_without_being_called_slow(exposed, caplog):
    body = json.dumps({"messages": MESSAGES}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", exposed.port)
    writer.write(exposed.head(len(body)) + body)  # one whole request, answered; then nothing
    started = time.monotonic()
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    await reader.readexactly(int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]))
    assert await asyncio.wait_for(reader.read(), 5) == b"" and time.monotonic() - started > 0.9
    writer.close()
    assert not [r for r in caplog.records if "did not send" in r.getMessage()]
    assert exposed.app[appkeys.METRICS].registry.get_sample_value("riceball_slow_requests_total") == 0


async def test_the_admin_login_form_has_the_same_deadline(exposed, caplog):
    head = (b"POST /admin/login HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 40\r\n\r\n")
    answer, took = await exchange(exposed.port, head, [b"u"] * 40, pause=0.3)
    status, page = status_and_body(answer)
    assert status == 408 and b"did not arrive within 1 seconds" in page and 0.9 < took < 5
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("encoding, body, status, code", [
    ("gzip", b"this is not gzip", 400, "invalid_content_encoding"),
    ("deflate", b"nor is this deflate", 400, "invalid_content_encoding"),
    ("gzip", gzip.compress(json.dumps({"messages": MESSAGES}).encode())[:-9], 400, "invalid_content_encoding"),
    ("br", b"\x1b\x03\x00", 400, "unsupported_content_encoding"),
    ("zstd", b"(\xb5/\xfd", 400, "unsupported_content_encoding"),
    ("gzip", gzip.compress(b" " * (25 * 2**20)), 413, "request_too_large"),  # 25 KB that would be 25 MiB
])
async def test_a_body_not_in_its_declared_encoding_is_a_400_in_openais_shape(exposed, caplog, encoding, body, status,
                                                                             code):
    answer, _ = await exchange(exposed.port, exposed.head(len(body), f"Content-Encoding: {encoding}",
                                                          "Connection: close") + body)
    got, payload = status_and_body(answer)
    assert got == status and json.loads(payload)["error"]["code"] == code
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("encoding, compress", [("gzip", gzip.compress), ("deflate", zlib.compress)])
async def test_a_compressed_body_is_served(exposed, fake_openai, encoding, compress):
    body = compress(json.dumps({"messages": [{"role": "user", "content": "squeezed"}]}).encode())
    answer, _ = await exchange(exposed.port, exposed.head(len(body), f"Content-Encoding: {encoding}",
                                                          "Connection: close") + body)
    status, payload = status_and_body(answer)
    assert status == 200 and fake_openai.last["messages"][-1]["content"] == "squeezed"


async def test_the_admin_login_refuses_a_bad_encoding_with_its_own_page(exposed):
    body = b"username=a&password=b"
    head = (b"POST /admin/login HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Encoding: gzip\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body))
    answer, _ = await exchange(exposed.port, head + body)
    status, page = status_and_body(answer)
    assert status == 400 and b"<html" in page and b"without a Content-Encoding" in page


def fuzzed_requests(count: int) -> list[bytes]:
    """Requests broken the ways scanners and broken clients break them."""
    draw = random.Random(7)
    shapes = [
        lambda: b"GET /\x00%d HTTP/1.1\r\nHost: x\r\n\r\n" % draw.randrange(10**6),
        lambda: b"G\xe9T / HTTP/1.1\r\n\r\n",
        lambda: b"POST /api/v1/x HTTP/9.9\r\nHost: x\r\n\r\n",
        lambda: b"GET / HTTP/1.1\r\nHost x\r\n\r\n",
        lambda: b"GET / HTTP/1.1\r\nBad Header: y\r\n\r\n",
        lambda: b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -%d\r\n\r\n" % draw.randrange(100),
        lambda: b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        lambda: b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        lambda: bytes(draw.randrange(1, 256) for _ in range(draw.randrange(5, 80))) + b"\r\n\r\n",
    ]
    return [draw.choice(shapes)() for _ in range(count)]


async def test_malformed_requests_are_400s_in_openais_shape_with_one_info_line_each_and_no_traceback(exposed, caplog):
    caplog.set_level(logging.INFO, logger="riceball_proxy.connections")
    requests = fuzzed_requests(300)
    answers = await asyncio.gather(*(exchange(exposed.port, request) for request in requests))
    statuses = {int(answer.split(b" ")[1]) for answer, _ in answers if answer.startswith(b"HTTP/")}
    assert statuses <= {400, 404, 405, 413, 414, 431} and 400 in statuses
    refused = [body for status, body in (status_and_body(answer) for answer, _ in answers if answer) if status == 400]
    errors = [json.loads(body)["error"] for body in refused]
    assert {error["code"] for error in errors} == {"malformed_request"}
    assert all(error["type"] == "invalid_request_error" and error["message"].startswith("Malformed request: ")
               for error in errors)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [r for r in caplog.records if r.exc_info]
    lines = [r for r in caplog.records if r.getMessage().startswith("malformed request from 127.0.0.1")]
    assert 0 < len(lines) <= len(requests)


# --- bodies in flight -----------------------------------------------------------------------------------


async def holding(port: int, head: bytes):
    """A connection that sends ``head`` (a declared body) and nothing more, left open."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    await writer.drain()
    return reader, writer


async def answer_of(reader, timeout: float = 5.0) -> tuple[int, dict]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    return int(head.split(b" ")[1]), json.loads(await asyncio.wait_for(reader.readexactly(length), timeout))


async def test_a_key_over_max_parallel_is_refused_before_its_body_is_read(start_gateway, settings, fake_openai):
    gateway = await start_gateway(settings.replace(client_read_timeout=5.0))
    assistant = await gateway.assistant(await gateway.provider(fake_openai.base_url))
    key = await gateway.key(max_parallel=1)
    fake_openai.hold = asyncio.Event()
    async with gateway.client(assistant.id, key) as client:
        first = asyncio.create_task(client.chat.completions.create(model="x", messages=MESSAGES))
        while not fake_openai.requests:
            await asyncio.sleep(0.01)
        path = f"/api/v1/assistants/{assistant.id}/v1/chat/completions"
        head = (f"POST {path} HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {key}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {10 * 2**20}\r\n\r\n").encode()
        reader, writer = await holding(gateway.server.port, head)  # 10 MiB declared, not a byte sent
        status, error = await answer_of(reader)  # so the body was never waited for (that would be a 408)
        assert status == 429 and error["error"]["code"] == "rate_limit_exceeded"
        writer.close()
        fake_openai.hold.set()
        await first


async def test_bodies_in_flight_are_bounded_per_key_and_for_the_process(start_gateway, settings, fake_openai):
    gateway = await start_gateway(settings.replace(
        client_read_timeout=5.0, max_body_bytes=100_000, max_key_body_bytes_in_flight=250_000,
        max_body_bytes_in_flight=450_000))
    assistant = await gateway.assistant(await gateway.provider(fake_openai.base_url))
    keys = [await gateway.key() for _ in range(3)]
    path = f"/api/v1/assistants/{assistant.id}/v1/chat/completions"

    def head(key: str) -> bytes:
        return (f"POST {path} HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {key}\r\n"
                f"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n").encode()

    held = [await holding(gateway.server.port, head(keys[0])) for _ in range(2)]  # 200,000 of its 250,000
    await asyncio.sleep(0.2)
    reader, writer = await holding(gateway.server.port, head(keys[0]))
    status, error = await answer_of(reader)
    assert status == 429 and error["error"]["code"] == "too_many_request_bytes"
    writer.close()
    held += [await holding(gateway.server.port, head(keys[1])) for _ in range(2)]  # 400,000 of 450,000
    await asyncio.sleep(0.2)
    reader, writer = await holding(gateway.server.port, head(keys[2]))
    status, error = await answer_of(reader)
    assert status == 503 and error["error"]["code"] == "server_busy"
    writer.close()
    for _, held_writer in held:  # their clients give up: the bytes they held are free again
        held_writer.close()
    budget = gateway.app[appkeys.BODY_BUDGET]
    for _ in range(100):
        if budget.held == 0:
            break
        await asyncio.sleep(0.05)
    assert budget.held == 0
    async with gateway.client(assistant.id, keys[2]) as client:
        await client.chat.completions.create(model="x", messages=MESSAGES)


async def test_a_compressed_body_is_counted_at_the_size_it_may_grow_to(start_gateway, settings, fake_openai):
    gateway = await start_gateway(settings.replace(client_read_timeout=5.0, max_body_bytes=100_000))
    assistant = await gateway.assistant(await gateway.provider(fake_openai.base_url))
    key = await gateway.key()
    head = (f"POST /api/v1/assistants/{assistant.id}/v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n"
            f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
            f"Content-Length: 50\r\n\r\n").encode()
    reader, writer = await holding(gateway.server.port, head)  # 50 bytes of gzip may be 100,000 of JSON
    budget = gateway.app[appkeys.BODY_BUDGET]
    for _ in range(100):
        if budget.held:
            break
        await asyncio.sleep(0.02)
    assert budget.held == 100_000
    writer.close()
