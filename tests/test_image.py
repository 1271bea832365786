"""The container image, compose.yaml and the Kubernetes example, as docs/deployment.md describes them: the
image built with podman on a base made from Debian's mirror (no registry), run against the machine's
PostgreSQL, configured with ``riceball`` inside it, a streamed call through it, and a clean stop; compose
with PostgreSQL and Redis images built the same way; the manifests checked against Kubernetes' schemas."""
import asyncio
import json
import os
import shutil
import subprocess
import time
import urllib.request
import uuid

import kubernetes_validate
import pytest
import yaml

from tests.support import ROOT, free_port
from tests.test_deployment import documented_block

IMAGE = "localhost/riceball:test"
BASE = "localhost/riceball-base:bookworm"
MESSAGES = [{"role": "user", "content": "hello"}]


def test_the_kubernetes_example_is_valid_against_kubernetes_schemas():
    manifests = [doc for doc in yaml.safe_load_all(documented_block("yaml", "## Kubernetes")) if doc]
    assert [doc["kind"] for doc in manifests] == ["Secret", "Deployment", "Service", "HorizontalPodAutoscaler"]
    for manifest in manifests:
        kubernetes_validate.validate(manifest, "1.33", strict=True)  # raises ValidationError naming the field
    deployment = manifests[1]["spec"]["template"]["spec"]
    (container,) = deployment["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert deployment["securityContext"]["runAsUser"] == 10001  # the image's user
    assert deployment["terminationGracePeriodSeconds"] > int(
        next(env["value"] for env in container["env"] if env["name"] == "RICEBALL_SHUTDOWN_TIMEOUT"))


def test_the_kubernetes_validator_refuses_a_broken_manifest():
    manifest = next(doc for doc in yaml.safe_load_all(documented_block("yaml", "## Kubernetes"))
                    if doc and doc["kind"] == "Deployment")
    manifest["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "eight thousand"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(manifest, "1.33", strict=True)


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        assert not os.environ.get("CI"), f"{name} is not installed (.ci/run installs it)"
        pytest.skip(f"{name} is not installed")
    return found


def run(*argv: str, input: str | None = None, timeout: float = 600, check: bool = True) -> str:
    result = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, (argv, result.stdout[-3000:], result.stderr[-3000:])
    return result.stdout


@pytest.fixture(scope="module")
def image():
    """The image, built as documented: a base from Debian's mirror, then ``make image``."""
    tool("podman")
    tool("debootstrap")
    run("bash", str(ROOT / "scripts" / "base-image"), BASE, timeout=900)
    run("make", "-C", str(ROOT), "image", f"BASE={BASE}", f"IMAGE={IMAGE}", timeout=1200)
    return IMAGE


def wait_ready(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"{url} never answered"
        time.sleep(0.5)


@pytest.mark.image
async def test_the_image_serves_a_streamed_call_and_stops_cleanly(image, clean_database, secret_key, fake_openai):
    import openai

    if not clean_database.startswith("postgresql://") or "@127.0.0.1" not in clean_database:
        assert not os.environ.get("CI"), clean_database
        pytest.skip("the image test needs the machine's PostgreSQL on 127.0.0.1")
    port, name = free_port(), f"riceball-test-{uuid.uuid4().hex[:8]}"
    run("podman", "run", "-d", "--name", name, "--network", "host", "-e", f"RICEBALL_DATABASE_URL={clean_database}",
        "-e", f"RICEBALL_SECRET_KEY={secret_key}", "-e", f"RICEBALL_PORT={port}", image)
    try:
        await asyncio.to_thread(wait_ready, f"http://127.0.0.1:{port}/readyz")
        assert run("podman", "exec", name, "id", "-u").strip() == "10001"  # not root

        def riceball(*argv: str, input: str | None = None) -> dict:
            return json.loads(run("podman", "exec", "-i", name, "riceball", "--json", *argv, input=input))

        await asyncio.to_thread(riceball, "provider", "add", "--name", "up", "--type", "openai", "--base-url",
                                fake_openai.base_url, "--api-key-stdin", input="sk-upstream\n")
        assistant = await asyncio.to_thread(riceball, "assistant", "add", "--name", "boxed", "--provider", "up",
                                            "--model", "gpt-4o")
        key = (await asyncio.to_thread(riceball, "key", "create", "--name", "boxed"))["key"]
        async with openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/api/v1/assistants/{assistant['id']}/v1",
                                      api_key=key, max_retries=0) as client:
            chunks = [chunk async for chunk in await client.chat.completions.create(
                model="x", messages=MESSAGES, stream=True)]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == fake_openai.reply
        assert fake_openai.requests[-1]["headers"]["Authorization"] == "Bearer sk-upstream"

        # A call in flight when the container is stopped is answered whole (SIGTERM drains), then it exits 0.
        fake_openai.delay = 1.5
        async with openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/api/v1/assistants/{assistant['id']}/v1",
                                      api_key=key, max_retries=0) as client:
            call = asyncio.ensure_future(client.chat.completions.create(model="x", messages=MESSAGES))
            await asyncio.sleep(0.5)
            stopping = asyncio.ensure_future(asyncio.to_thread(run, "podman", "stop", "-t", "30", name))
            answer = await call
            await stopping
        assert answer.choices[0].message.content == fake_openai.reply
        assert run("podman", "inspect", name, "--format", "{{.State.ExitCode}}").strip() == "0"
        logs = subprocess.run(["podman", "logs", name], capture_output=True, text=True).stderr
        assert "drained" in logs or "stopped" in logs, logs[-2000:]
    finally:
        subprocess.run(["podman", "rm", "-f", name], capture_output=True)


@pytest.mark.image
def test_compose_starts_the_gateway_with_postgresql_and_redis(image, tmp_path):
    compose = tool("podman-compose")
    images = {}
    for service in ("postgres", "redis"):
        images[service] = f"localhost/riceball-test-{service}:latest"
        run("podman", "build", "--build-arg", f"BASE={BASE}", "-t", images[service],
            str(ROOT / "tests" / "images" / service), timeout=900)
    port, project = free_port(), f"riceballtest{uuid.uuid4().hex[:6]}"
    env = dict(os.environ, RICEBALL_IMAGE=image, RICEBALL_POSTGRES_IMAGE=images["postgres"],
               RICEBALL_REDIS_IMAGE=images["redis"], RICEBALL_PUBLISH=str(port), POSTGRES_PASSWORD="compose-secret")
    up = [compose, "-p", project, "-f", str(ROOT / "compose.yaml")]
    try:
        result = subprocess.run([*up, "up", "-d"], env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        wait_ready(f"http://127.0.0.1:{port}/readyz", timeout=180)
        gateway = f"{project}_gateway_1"

        def riceball(*argv: str) -> dict:
            return json.loads(run("podman", "exec", gateway, "riceball", "--json", *argv))

        riceball("provider", "add", "--name", "demo", "--type", "echo", "--base-url", "http://echo.invalid")
        assistant = riceball("assistant", "add", "--name", "team", "--provider", "demo", "--model", "echo-1")
        key = riceball("key", "create", "--name", "team", "--rpm", "100")["key"]
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/v1/assistants/{assistant['id']}/v1/chat/completions",
            data=json.dumps({"model": "x", "messages": MESSAGES}).encode(),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            assert json.load(answer)["choices"][0]["message"]["content"]
        # The key's rate window is counted in the compose file's Redis.
        counters = run("podman", "exec", f"{project}_redis_1", "redis-cli", "--scan")
        assert counters.strip(), "no limit counter in Redis"
    finally:
        subprocess.run([*up, "down", "-v"], env=env, capture_output=True, timeout=300)
