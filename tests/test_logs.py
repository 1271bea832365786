"""Logs: one access line per request with its id (also sent upstream), JSON on request, no secrets."""
import io
import json
import logging
import shlex

import aiohttp
import openai
import pytest

from riceball_proxy.app import create_app
from riceball_proxy.logs import ACCESS_LOGGER, AccessLogger, configure_logging

SECRET_PROMPT = "my secret prompt 1234"


@pytest.fixture
async def logged_gateway(aiohttp_server, settings, fake_openai):
    """A gateway served with the access logger ``riceball serve`` uses, its lines captured as JSON."""
    from tests.support import Gateway, access_log_captured

    with access_log_captured() as (logger, stream):
        app = create_app(settings)
        server = await aiohttp_server(app, access_log_class=AccessLogger, access_log=logger)
        gateway = Gateway(app, server)
        await gateway.wait_until_listening()
        provider = await gateway.provider(fake_openai.base_url)
        assistant = await gateway.assistant(provider)
        key = await gateway.key()
        yield gateway, assistant, key, stream


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


async def test_one_access_line_per_request_with_the_request_id_also_sent_upstream(logged_gateway, fake_openai):
    gateway, assistant, key, stream = logged_gateway
    async with gateway.client(assistant.id, key) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="x", messages=[{"role": "user", "content": SECRET_PROMPT}])
        request_id = raw.headers["x-request-id"]
        async for _ in await client.chat.completions.create(model="x", stream=True, stream_options={"include_usage": True},
                                                            messages=[{"role": "user", "content": SECRET_PROMPT}]):
            pass
    await gateway.server.close()  # the access log is written once each response is done
    entries = [e for e in lines(stream) if e["logger"] == ACCESS_LOGGER]
    assert len(entries) == 2
    first, second = entries
    assert first["request_id"] == request_id == fake_openai.requests[0]["headers"]["X-Request-ID"]
    assert second["request_id"] == fake_openai.requests[1]["headers"]["X-Request-ID"] != request_id
    assert (first["method"], first["status"], first["assistant_id"]) == ("POST", 200, str(assistant.id))
    assert (first["prompt_tokens"], first["completion_tokens"], first["stream"]) == (4, 5, False)
    assert second["stream"] is True and second["ttft_ms"] > 0 and second["completion_tokens"] == 5
    assert first["key_id"] and first["duration_ms"] > 0
    text = stream.getvalue()
    assert SECRET_PROMPT not in text and key not in text and "sk-upstream-secret" not in text


async def test_refused_and_admin_requests_are_logged_too(logged_gateway):
    gateway, assistant, key, stream = logged_gateway
    async with gateway.client(assistant.id, "sk-not-a-real-key") as client:
        with pytest.raises(openai.AuthenticationError):
            await client.chat.completions.create(model="x", messages=[{"role": "user", "content": "x"}])
    async with aiohttp.ClientSession() as session:
        await session.get(gateway.url("/healthz"))
    await gateway.server.close()
    entries = [e for e in lines(stream) if e["logger"] == ACCESS_LOGGER]
    assert [e["status"] for e in entries] == [401, 200]
    assert "sk-not-a-real-key" not in stream.getvalue()


def test_configure_logging_writes_json_lines(capsys):
    configure_logging("INFO", "json")
    try:
        logging.getLogger("riceball.test").info("hello %s", "world", extra={"fields": {"request_id": "req_1"}})
        line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
        assert line["message"] == "hello world" and line["request_id"] == "req_1" and line["level"] == "INFO"
    finally:
        logging.getLogger().handlers.clear()
        logging.getLogger().setLevel(logging.WARNING)


@pytest.mark.parametrize("request_id", ["abc status=200 key_id=forged", 'quote"d', "tab\there", "é-accent", "x" * 129])
async def test_a_request_id_that_could_forge_log_fields_is_replaced_and_logged_quoted(aiohttp_server, settings,
                                                                                      request_id):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))  # the text format's message
    logger = logging.getLogger(ACCESS_LOGGER)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        server = await aiohttp_server(create_app(settings), access_log_class=AccessLogger, access_log=logger)
        async with aiohttp.ClientSession() as session:
            async with session.get(server.make_url("/healthz%20status=500"),
                                   headers={"X-Request-ID": request_id}) as response:
                assert response.headers["X-Request-ID"].startswith("req_")
        await server.close()
    finally:
        logger.removeHandler(handler)
    line = stream.getvalue().strip()
    assert f"request_id={response.headers['X-Request-ID']} " in line
    fields = dict(token.split("=", 1) for token in shlex.split(line))  # quoted values stay whole
    assert set(fields) == {"request_id", "remote", "method", "path", "status", "bytes", "duration_ms",
                           "client_request_id"}
    assert (fields["status"], fields["path"]) == ("404", "/healthz%20status=500")
    assert fields["client_request_id"] in (request_id, json.dumps(request_id)[1:-1])  # a tab stays escaped


async def test_a_safe_request_id_is_kept(aiohttp_client, settings):
    client = await aiohttp_client(create_app(settings))
    for request_id in ("trace-42", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "span:a/b+c@d"):
        assert (await client.get("/healthz", headers={"X-Request-ID": request_id})).headers["X-Request-ID"] == request_id
