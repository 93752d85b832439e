"""`host:port` addresses that mcdaemon listens on (metrics, FastAGI): one reading of them."""

from __future__ import annotations

import asyncio
import ipaddress
import re


def parse_listen(value: str) -> tuple[str, int]:
    """(host, port) from `127.0.0.1:9464`, `localhost:9464` or `[::1]:9464`; ValueError else."""
    text = value.strip()
    match = re.fullmatch(r"\[(?P<v6>[0-9A-Fa-f:.]+)\]:(?P<port>\d{1,5})|"
                         r"(?P<host>[^\s:\[\]]*):(?P<port4>\d{1,5})", text)
    if match is None:
        if text.count(":") > 1 and not text.startswith("["):
            raise ValueError(f"{value!r}: write an IPv6 address in brackets, e.g. [::1]:9464")
        raise ValueError(f"{value!r} is not host:port (e.g. 127.0.0.1:9464)")
    host = match["v6"] or match["host"]
    port = int(match["port"] or match["port4"])
    if not host:
        raise ValueError(f"{value!r} has no host; give one, e.g. 127.0.0.1:9464 (an empty "
                         "host would listen on every address)")
    if match["v6"]:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{value!r}: {host} is not an IPv6 address") from None
    elif re.fullmatch(r"[\d.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"{value!r}: {host} is not an IPv4 address") from None
    elif not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}", host):
        raise ValueError(f"{value!r}: {host!r} is neither an IP address nor a host name")
    if not 1 <= port <= 65535:
        raise ValueError(f"{value!r}: port {port} is not between 1 and 65535")
    return host, port


def listen_text(host: str, port: int) -> str:
    """`host:port` as written in a config (IPv6 addresses in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    """True for a loopback address (127.0.0.0/8, ::1) or `localhost`: reachable from this host
    only, which is what an unauthenticated endpoint needs."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_address(server: asyncio.Server | None) -> tuple[str, int] | None:
    """(host, port) a server listens on (the real port when it asked for 0), or None."""
    if server is None or not server.sockets:
        return None
    host, port = server.sockets[0].getsockname()[:2]
    return str(host), int(port)
