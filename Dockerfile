# HeliosProxy image: `docker compose up` builds it (see docker-compose.yml).
# Build stage: a C compiler, so that `pip wheel .` compiles the hot modules with mypyc (setup.py).
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md LICENSE ./
COPY heliosproxy ./heliosproxy
RUN pip wheel --no-deps -w /wheels .

# Runtime stage: the compiled wheel, no compiler.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY --from=build /wheels /wheels
RUN pip install /wheels/heliosproxy-*.whl && rm -rf /wheels

# The default config; docker-compose.yml mounts config/docker.yaml over it.
COPY config/docker.yaml /etc/heliosproxy/heliosproxy.yaml

RUN useradd --system --no-create-home --shell /usr/sbin/nologin heliosproxy
USER heliosproxy
WORKDIR /

EXPOSE 6432 9187
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9187/live', timeout=2)"]

ENTRYPOINT ["heliosproxy"]
CMD ["run", "--config", "/etc/heliosproxy/heliosproxy.yaml"]
