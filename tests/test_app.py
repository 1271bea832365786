import asyncpg
import pytest
from aiohttp import web

from riceball_proxy import appkeys
from riceball_proxy.app import create_app
from riceball_proxy.settings import Settings


async def test_healthz_and_readyz(aiohttp_client, settings):
    client = await aiohttp_client(create_app(settings))
    response = await client.get("/healthz")
    assert response.status == 200
    assert await response.json() == {"status": "ok"}
    response = await client.get("/readyz")
    assert response.status == 200
    assert await response.json() == {"status": "ready"}


async def test_every_response_carries_a_request_id(aiohttp_client, settings):
    client = await aiohttp_client(create_app(settings))
    generated = (await client.get("/healthz")).headers["X-Request-ID"]
    assert generated.startswith("req_") and len(generated) == 36
    assert (await client.get("/healthz", headers={"X-Request-ID": "trace-42"})).headers["X-Request-ID"] == "trace-42"
    missing = await client.get("/no/such/page")
    assert missing.status == 404 and missing.headers["X-Request-ID"].startswith("req_")
    hostile = await client.get("/healthz", headers={"X-Request-ID": "x" * 500})
    assert hostile.headers["X-Request-ID"].startswith("req_")


def test_request_ids_are_new_in_every_forked_worker():
    import os

    from riceball_proxy.app import new_request_id

    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # a worker forked from this process: its first ids must not be the parent's next ones
        os.write(write, " ".join(new_request_id() for _ in range(3)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    in_child = set(os.read(read, 4096).decode().split())
    os.close(read)
    in_parent = {new_request_id() for _ in range(3)}
    assert len(in_child) == 3 and len(in_parent) == 3 and not in_child & in_parent
    assert all(len(id_) == 36 and int(id_[4:], 16) >= 0 for id_ in in_child | in_parent)


async def test_landing_page_is_rendered_from_the_packaged_templates(aiohttp_client, settings):
    client = await aiohttp_client(create_app(settings))
    response = await client.get("/")
    assert response.status == 200
    text = await response.text()
    assert "RiceBall gateway" in text and "/api/v1/assistants/&lt;assistant id&gt;/v1" in text


async def test_readyz_is_503_while_the_database_refuses_connections(aiohttp_client, make_database, postgres_server, tmp_path, secret_key):
    url = make_database()
    name = url.rsplit("/", 1)[1].split("?")[0]
    client = await aiohttp_client(create_app(Settings(database_url=url, data_dir=tmp_path, secret_key=secret_key)))
    assert (await client.get("/readyz")).status == 200

    admin = await asyncpg.connect(postgres_server)
    try:
        await admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)
        response = await client.get("/readyz")
        assert response.status == 503
        assert await response.json() == {"status": "unavailable", "reason": "database unreachable"}
        await admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
        assert (await client.get("/readyz")).status == 200
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
        await admin.close()


async def test_a_failing_startup_hook_stops_the_start(aiohttp_client, settings):
    from riceball_proxy import hookimpl
    from riceball_proxy.plugins import make_plugin_manager

    class Broken:
        @hookimpl
        def riceball_startup(self, app):
            raise RuntimeError("plugin cannot start")

    pm = make_plugin_manager(settings, entry_points=False)
    pm.register(Broken(), name="broken")
    app = create_app(settings, plugin_manager=pm)
    runner = web.AppRunner(app)
    with pytest.raises(RuntimeError, match="plugin cannot start"):
        await runner.setup()
    await app.cleanup()  # what run_app does after a failed start: close what was opened
    assert app[appkeys.HTTP_SESSION].closed


API_PATH = "/api/v1/assistants/00000000-0000-0000-0000-000000000000/v1/chat/completions"


@pytest.mark.parametrize("case, status", [("long_header", 431), ("many_headers", 431), ("long_url", 414)])
async def test_oversized_requests_are_answered_in_the_apis_error_shape(aiohttp_client, settings, case, status):
    client = await aiohttp_client(create_app(settings))
    path, headers = API_PATH, {"Authorization": "Bearer sk-x"}
    if case == "long_header":
        headers["X-Big"] = "x" * 9000
    elif case == "many_headers":
        headers |= {f"X-H{n}": "1" for n in range(140)}
    else:
        path += "?q=" + "x" * 8200
    response = await client.post(path, json={"messages": []}, headers=headers)
    assert response.status == status and response.content_type == "application/json"
    error = (await response.json())["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    elsewhere = await client.get("/healthz" + path[len(API_PATH):], headers=headers)
    assert elsewhere.status == status and elsewhere.content_type == "text/plain"


async def test_headers_within_the_limits_are_served(aiohttp_client, settings):
    client = await aiohttp_client(create_app(settings))
    headers = {f"X-H{n}": "1" for n in range(100)} | {"X-Big": "x" * 8000}
    assert (await client.get("/healthz", headers=headers)).status == 200
