# RiceBall's container image: the gateway and its first-party plugins in a virtual environment, run by a
# user of its own. BASE is any Debian-like image with python3 (3.11 or newer) and its venv module; the
# official Python image by default. Build it with `make image` (docs/deployment.md#container-image).
ARG BASE=python:3.12-slim

FROM ${BASE} AS build
WORKDIR /src
COPY setup.py setup.cfg pyproject.toml README.md ./
COPY riceball_proxy riceball_proxy
COPY templates templates
COPY plugins plugins
# A CA bundle passed as a build secret (--secret id=ca,src=...) is trusted by pip: for an index reached
# through a proxy that re-signs TLS. Without it, pip trusts its own bundle.
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \
    python3 -m venv /opt/riceball \
    && /opt/riceball/bin/pip install --no-cache-dir --disable-pip-version-check --quiet \
        . ./plugins/anthropic ./plugins/gemini ./plugins/echo

FROM ${BASE}
RUN (command -v useradd >/dev/null || (apt-get update && apt-get install -y --no-install-recommends passwd)) \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/riceball --create-home riceball
COPY --from=build /opt/riceball /opt/riceball
ENV PATH=/opt/riceball/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    RICEBALL_HOST=0.0.0.0 \
    RICEBALL_PORT=8000 \
    RICEBALL_DATA_DIR=/var/lib/riceball
VOLUME /var/lib/riceball
WORKDIR /var/lib/riceball
USER riceball
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('RICEBALL_PORT', '8000')}/readyz\", timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["riceball"]
CMD ["serve", "--host", "0.0.0.0"]
