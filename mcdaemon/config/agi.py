"""The `agi:` section of the config: the FastAGI hooks server (`mcdaemon.adapters.agi`).

Kept apart from `config.load` (which calls `read_agi`) so the hooks own their settings; it
imports nothing of the loader (the `Section` is passed in).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from mcdaemon.core.listen import is_loopback, listen_text, parse_listen

if TYPE_CHECKING:
    from mcdaemon.config.reader import Section

DEFAULT_PORT = 4573  # Asterisk's default for agi:// URLs


@dataclass(frozen=True, slots=True)
class AgiConfig:
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT  # 0 (tests only, not accepted in a config file): any free port
    timeout: float = 5.0  # a dialplan waits on the hook: answer within this or hang up

    @property
    def listen(self) -> str:
        return listen_text(self.host, self.port)

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)


def read_agi(section: Section) -> tuple[AgiConfig, list[str]]:
    """`agi:` and its warnings; every key is read (and so known) whether it is there or not."""
    enabled = section.bool("enabled", False)
    listen = section.str("listen", AgiConfig().listen)
    timeout = section.duration("timeout", 5.0, minimum=0.1)
    section.done()
    try:
        host, port = parse_listen(listen)
    except ValueError as exc:
        section.error("listen", str(exc))
        return AgiConfig(enabled=enabled, timeout=timeout), []
    agi = AgiConfig(enabled=enabled, host=host, port=port, timeout=timeout)
    warnings = []
    if agi.enabled and not agi.loopback:
        warnings.append(f"agi.listen: {agi.listen} is not a loopback address: FastAGI has no "
                        "authentication, anyone who reaches the port can mark calls; run the "
                        "daemon on the PBX host and listen on 127.0.0.1")
    return agi, warnings
