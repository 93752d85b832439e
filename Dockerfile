# mcdaemon in a container: config in /etc/mcdaemon (read-only volume), state in /var/lib/mcdaemon.
#   docker build -t mcdaemon .
#   docker run -d --name mcdaemon --network host \
#     -v /etc/mcdaemon:/etc/mcdaemon:ro -v mcdaemon-state:/var/lib/mcdaemon mcdaemon

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN useradd --system --home-dir /var/lib/mcdaemon --shell /usr/sbin/nologin mcdaemon \
    && mkdir -p /etc/mcdaemon /var/lib/mcdaemon \
    && chown mcdaemon:mcdaemon /var/lib/mcdaemon

COPY setup.py setup.cfg pyproject.toml README.md /src/
COPY mcdaemon /src/mcdaemon
RUN pip install /src && rm -rf /src && mcdaemon --version

USER mcdaemon
WORKDIR /var/lib/mcdaemon
VOLUME ["/etc/mcdaemon", "/var/lib/mcdaemon"]
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
    CMD ["mcdaemon", "status", "-c", "/etc/mcdaemon/config.yaml", "--health"]
ENTRYPOINT ["mcdaemon"]
# --log-format is an option of `mcdaemon` itself: it goes before the command
CMD ["--log-format", "json", "run", "-c", "/etc/mcdaemon/config.yaml"]
