"""The `webhooks:` section of the config: endpoints that receive the daemon's events.

Kept apart from `config.load` (which calls `read_webhooks`) so the webhook code owns its
settings; it imports nothing of the loader (`Reader` is passed in).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from mcdaemon.core.listen import is_loopback

if TYPE_CHECKING:
    from mcdaemon.config.reader import Reader

#: every event name of the schema, in the order of a call's life
EVENTS = ("missed_call", "text_sent", "text_delivered", "text_failed", "reply", "opt_out",
          "callback_attempt", "callback_result")
FORMATS = ("json", "slack")


@dataclass(frozen=True, slots=True)
class WebhookEndpoint:
    """One receiver of events (a CRM, a team channel)."""

    name: str
    url: str = field(repr=False)  # may hold a token (Slack's URLs do): never logged whole
    secret: str = field(default="", repr=False)
    events: frozenset[str] = frozenset(EVENTS)
    format: str = "json"  # json: the event envelope | slack: {"text": "..."}
    timeout: float = 10.0  # one HTTP request, connection included
    groups: tuple[str, ...] = ()  # only events of these groups (empty: every event)
    max_attempts: int = 20
    max_age: float = 24 * 3600.0  # a delivery still failing this long after the event: dead
    retry_min: float = 5.0
    retry_max: float = 3600.0

    @property
    def where(self) -> str:
        """The URL without path, query or credentials: what logs may show."""
        parts = urlsplit(self.url)
        host = parts.hostname or "?"
        if ":" in host:
            host = f"[{host}]"
        return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")

    def wants(self, event: str, group: str | None) -> bool:
        return event in self.events and (not self.groups or group in self.groups)


def read_webhooks(reader: Reader, value: Any, group_names: set[str]
                  ) -> tuple[tuple[WebhookEndpoint, ...], list[str]]:
    """The endpoints that are on (`enabled`, the default), and warnings (e.g. personal data
    over plain HTTP). Endpoints with `enabled: false` are checked all the same."""
    warnings: list[str] = []
    if value is None:
        return (), warnings
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        reader.error("webhooks", "must be a list of endpoints (each with name, url, secret)")
        return (), warnings
    endpoints: list[WebhookEndpoint] = []
    names: set[str] = set()
    for index, item in enumerate(value):
        section = reader.mapping(item, f"webhooks[{index}]", "webhooks[]")
        # checked like the others, so turning it on later cannot reveal a typo
        enabled = section.bool("enabled", True)
        name = section.str("name", f"webhook{index + 1}")
        if name in names:
            section.error("name", f"{name!r} is used by two endpoints; names must be unique")
        names.add(name)
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,40}", name):
            section.error("name", "use 1-40 letters, digits, '_', '.' or '-'")
        url = section.str("url", required=True)
        if url:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                section.error("url", "must be an http:// or https:// URL with a host")
            elif parts.scheme == "http" and not is_loopback(parts.hostname):
                warnings.append(f"{reader.source}: webhooks[{index}].url: plain http to "
                                f"{parts.hostname}: callers' numbers travel unencrypted; "
                                "use https")
        fmt = section.choice("format", "json", FORMATS)
        secret = section.secret("secret")
        if fmt == "json" and not secret and url:
            section.error("secret", "is required for format json (receivers check the "
                                    "signature; inline, secret_env: VARIABLE or secret_file)")
        events = section.str_list("events", EVENTS)
        for event in events:
            if event not in EVENTS:
                section.error("events", f"{event!r} is not one of {', '.join(EVENTS)}")
        groups = section.str_list("groups")
        for group in groups:
            if group not in group_names:
                section.error("groups", f"{group!r} is not a group of this config "
                                        f"({', '.join(sorted(group_names))})")
        retry_min = section.duration("retry_min", 5.0, minimum=0.01)
        endpoint = WebhookEndpoint(
            name=name, url=url, secret=secret,
            events=frozenset(event for event in events if event in EVENTS),
            format=fmt,
            timeout=section.duration("timeout", 10.0, minimum=0.1),
            groups=groups,
            max_attempts=section.int("max_attempts", 20, minimum=1, maximum=1000),
            max_age=section.duration("max_age", 24 * 3600.0, minimum=1.0),
            retry_min=retry_min,
            retry_max=max(retry_min, section.duration("retry_max", 3600.0, minimum=0.01)),
        )
        section.done()
        if enabled:
            endpoints.append(endpoint)
    return tuple(endpoints), warnings
