# mcdaemon in a container: config in /etc/mcdaemon (read-only volume), state in /var/lib/mcdaemon.
#   docker build -t mcdaemon .
#   docker run -d --name mcdaemon --network host \
#     -v /etc/mcdaemon:/etc/mcdaemon:ro -v mcdaemon-state:/var/lib/mcdaemon mcdaemon

# The wheel is built apart, with a C compiler, so that mypyc compiles the hot path (setup.py);
# the image itself carries no compiler.
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
COPY setup.py setup.cfg pyproject.toml README.md /src/
COPY mcdaemon /src/mcdaemon
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels /src

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN useradd --system --home-dir /var/lib/mcdaemon --shell /usr/sbin/nologin mcdaemon \
    && mkdir -p /etc/mcdaemon /var/lib/mcdaemon \
    && chown mcdaemon:mcdaemon /var/lib/mcdaemon

COPY --from=build /wheels /wheels
RUN pip install /wheels/*.whl && rm -rf /wheels && mcdaemon --version

USER mcdaemon
WORKDIR /var/lib/mcdaemon
VOLUME ["/etc/mcdaemon", "/var/lib/mcdaemon"]
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
    CMD ["mcdaemon", "status", "-c", "/etc/mcdaemon/config.yaml", "--health"]
ENTRYPOINT ["mcdaemon"]
# --log-format is an option of `mcdaemon` itself: it goes before the command
CMD ["--log-format", "json", "run", "-c", "/etc/mcdaemon/config.yaml"]
