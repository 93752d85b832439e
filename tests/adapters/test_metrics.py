"""Prometheus metrics: the values each method leaves in the exposition, the HTTP endpoint over
real TCP, the `metrics:` config section, and that no phone number ever becomes a label."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mcdaemon.adapters.metrics import (
    AMI_STATES,
    OUTBOX_STATES,
    RECEIPT_STATUSES,
    SMPP_STATES,
    Metrics,
    MetricsError,
)
from mcdaemon.config.load import config_from_dict, load_config
from mcdaemon.config.model import MetricsConfig
from mcdaemon.config.reader import ConfigError
from mcdaemon.core.policy import REASONS
from mcdaemon.core.receipts import _RECEIPT_STATES
from mcdaemon.core.records import CallRecord, Decision, Outcome
from mcdaemon.store import TRANSITIONS, Store

ROOT = Path(__file__).resolve().parents[2]
CALLER = "+447700900123"
T0 = 1_736_157_600.0

Labels = frozenset[tuple[str, str]]


def values(metrics: Metrics) -> dict[tuple[str, Labels], float]:
    """Every sample of the exposition, parsed back: (name, labels) -> value."""
    text = metrics.exposition().decode()
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return values(metrics).get((name, frozenset(labels.items())))


def make_metrics(**config: object) -> Metrics:
    return Metrics(MetricsConfig(**config), pbxs=["lab", "branch"],  # type: ignore[arg-type]
                   groups=["sales", "support", "default"])


def call(*, pbx: str = "lab", outcome: Outcome = Outcome.QUEUE_ABANDON,
         caller: str = CALLER, group: str | None = "sales") -> CallRecord:
    return CallRecord(pbx=pbx, call_id="1736157600.1", caller=caller.lstrip("+"),
                      caller_name=caller, caller_e164=caller, did="442071230000", group=group,
                      outcome=outcome, stages=(f"queue:sales:abandon:{caller}",),
                      started=T0 - 30, ended=T0, wait_seconds=30.0)


def texted(group: str | None = "sales") -> Decision:
    return Decision(True, "text", group=group, body=f"Hi {CALLER}", destination=CALLER,
                    detail=f"to {CALLER}")


# --------------------------------------------------------------------------- values

def test_a_decided_call_counts_by_pbx_group_outcome_and_by_decision_and_reason() -> None:
    metrics = make_metrics()
    metrics.call_decided(call(), texted())
    metrics.call_decided(call(), texted())
    metrics.call_decided(call(outcome=Outcome.ANSWERED), Decision(False, "not_missed",
                                                                  group="sales"))
    metrics.call_decided(call(pbx="branch", group=None), Decision(False, "no_group"))
    assert value(metrics, "mcdaemon_calls_total", pbx="lab", group="sales",
                 outcome="queue_abandon") == 2
    assert value(metrics, "mcdaemon_calls_total", pbx="lab", group="sales",
                 outcome="answered") == 1
    assert value(metrics, "mcdaemon_calls_total", pbx="branch", group="(none)",
                 outcome="queue_abandon") == 1
    assert value(metrics, "mcdaemon_decisions_total", decision="text", reason="text") == 2
    assert value(metrics, "mcdaemon_decisions_total", decision="no_text",
                 reason="not_missed") == 1
    assert value(metrics, "mcdaemon_decisions_total", decision="no_text",
                 reason="no_group") == 1


def test_every_reason_code_exists_at_zero_from_the_start() -> None:
    metrics = make_metrics()
    for reason in REASONS:
        decision = "text" if reason in ("text", "deferred") else "no_text"
        assert value(metrics, "mcdaemon_decisions_total", decision=decision,
                     reason=reason) == 0, reason
    assert value(metrics, "mcdaemon_texts_total", state="expired") == 0
    assert value(metrics, "mcdaemon_delivery_receipts_total", status="DELIVRD") == 0


def test_fraud_shield_trips_are_counted_by_reason() -> None:
    metrics = make_metrics()
    for reason in ("cap_prefix_hour", "cap_prefix_hour", "cap_day", "cooldown"):
        metrics.call_decided(call(), Decision(False, reason, group="sales"))
    assert value(metrics, "mcdaemon_fraud_shield_trips_total", reason="cap_prefix_hour") == 2
    assert value(metrics, "mcdaemon_fraud_shield_trips_total", reason="cap_day") == 1
    assert value(metrics, "mcdaemon_fraud_shield_trips_total", reason="cap_hour") == 0
    assert ("mcdaemon_fraud_shield_trips_total", frozenset({("reason", "cooldown")})) \
        not in values(metrics)


def test_text_transitions_count_into_each_state() -> None:
    metrics = make_metrics()
    metrics.text_transition("queued", 3)
    metrics.text_transition("retry")
    metrics.text_transition("expired", 2)
    metrics.text_transition("expired", 0)  # `len(expire_due(now))` is often 0
    metrics.text_transition("delivered")
    metrics.text_transition("undeliverable")
    metrics.text_transition("failed")
    assert {state: value(metrics, "mcdaemon_texts_total", state=state) for state in (
        "queued", "submitted", "delivered", "undeliverable", "failed", "expired", "retry")} \
        == {"queued": 3, "submitted": 0, "delivered": 1, "undeliverable": 1, "failed": 1,
            "expired": 2, "retry": 1}
    with pytest.raises(ValueError, match="'sent' is not one of queued"):
        metrics.text_transition("sent")  # type: ignore[arg-type]


def test_submitted_texts_are_counted_and_timed_from_hangup() -> None:
    metrics = make_metrics()
    metrics.text_submitted(0.03)
    metrics.text_submitted(2.0)
    metrics.text_submitted(None)  # an opt-out confirmation: counted, not timed
    metrics.text_submitted(600.0)  # deferred by mistake: lands in +Inf only
    name = "mcdaemon_hangup_to_submit_seconds"
    assert value(metrics, "mcdaemon_texts_total", state="submitted") == 4
    assert value(metrics, f"{name}_bucket", le="0.01") == 0
    assert value(metrics, f"{name}_bucket", le="0.05") == 1
    assert value(metrics, f"{name}_bucket", le="2.5") == 2
    assert value(metrics, f"{name}_bucket", le="60.0") == 2
    assert value(metrics, f"{name}_bucket", le="+Inf") == 3
    assert value(metrics, f"{name}_count") == 3
    assert value(metrics, f"{name}_sum") == pytest.approx(602.03)


def test_delivery_receipts_are_counted_by_status_and_odd_words_are_bounded() -> None:
    metrics = make_metrics()
    for status in ("DELIVRD", "delivrd", "UNDELIV", "447700900123", "<script>"):
        metrics.delivery_receipt(status)
    assert value(metrics, "mcdaemon_delivery_receipts_total", status="DELIVRD") == 2
    assert value(metrics, "mcdaemon_delivery_receipts_total", status="UNDELIV") == 1
    assert value(metrics, "mcdaemon_delivery_receipts_total", status="(unknown)") == 2


def test_smpp_bind_state_has_one_current_state_and_the_window_is_shown() -> None:
    metrics = make_metrics()
    assert value(metrics, "mcdaemon_smpp_bind_state", state="down") == 1
    metrics.smpp_bind_state("binding")
    metrics.smpp_bind_state("bound")
    assert {state: value(metrics, "mcdaemon_smpp_bind_state", state=state)
            for state in (*SMPP_STATES, "other")} == {
        "down": 0, "binding": 0, "bound": 1, "auth_failed": 0, "other": 0}
    metrics.smpp_bind_state("something new")
    assert value(metrics, "mcdaemon_smpp_bind_state", state="other") == 1
    assert value(metrics, "mcdaemon_smpp_bind_state", state="bound") == 0
    metrics.smpp_window(7, 10)
    assert value(metrics, "mcdaemon_smpp_window_in_use") == 7
    assert value(metrics, "mcdaemon_smpp_window_size") == 10


def test_ami_connection_state_per_pbx() -> None:
    metrics = make_metrics()
    metrics.ami_connection_state("lab", "connecting")
    metrics.ami_connection_state("lab", "connected")
    metrics.ami_connection_state("branch", "auth_failed")
    assert value(metrics, "mcdaemon_ami_connection_state", pbx="lab", state="connected") == 1
    assert value(metrics, "mcdaemon_ami_connection_state", pbx="lab", state="connecting") == 0
    assert value(metrics, "mcdaemon_ami_connection_state", pbx="branch",
                 state="auth_failed") == 1
    assert value(metrics, "mcdaemon_ami_connection_state", pbx="branch",
                 state="connected") == 0
    metrics.ami_connection_state("lab", "disconnected")
    assert sum(value(metrics, "mcdaemon_ami_connection_state", pbx="lab", state=state) or 0
               for state in (*AMI_STATES, "other")) == 1


async def test_outbox_gauges_come_from_the_real_store_snapshot(tmp_path: Path) -> None:
    metrics = make_metrics()
    store = await Store.open(str(tmp_path / "mcdaemon.db"))
    try:
        metrics.observe_outbox(await store.outbox_stats(T0))
        assert value(metrics, "mcdaemon_outbox_oldest_queued_age_seconds") == 0
        for seq in range(3):
            await store.enqueue_message(pbx="lab", call_id="c1", kind="optout_confirm",
                                        seq=seq, destination=CALLER, body="bye", now=T0,
                                        not_before=None, expires_at=None)
        await store.enqueue_message(pbx="lab", call_id="c2", kind="optout_confirm", seq=0,
                                    destination=CALLER, body="later", now=T0,
                                    not_before=T0 + 3600, expires_at=None)
        (claimed,) = await store.claim_due(T0 + 60, 1)
        await store.mark_submitted(claimed.id, ["abc"], T0 + 61)
        metrics.observe_outbox(await store.outbox_stats(T0 + 90))
    finally:
        await store.close()
    assert {state: value(metrics, "mcdaemon_outbox_messages", state=state)
            for state in OUTBOX_STATES} == {
        "queued": 3, "sending": 0, "submitted": 1, "delivered": 0, "undeliverable": 0,
        "unknown": 0, "failed": 0, "expired": 0}
    assert value(metrics, "mcdaemon_outbox_oldest_queued_age_seconds") == 90
    assert value(metrics, "mcdaemon_outbox_deferred_messages") == 1
    assert value(metrics, "mcdaemon_outbox_duplicate_risk_messages") == 0


def test_the_state_lists_match_the_code_that_produces_the_states() -> None:
    source = {name: (ROOT / "mcdaemon" / "adapters" / f"{name}.py").read_text(encoding="utf-8")
              for name in ("smpp", "ami")}
    assert set(re.findall(r'_set_state\("(\w+)"', source["smpp"])) == set(SMPP_STATES)
    assert set(re.findall(r'_set_state\("(\w+)"', source["ami"])) == set(AMI_STATES)
    assert tuple(TRANSITIONS) == OUTBOX_STATES
    assert set(RECEIPT_STATUSES) == set(_RECEIPT_STATES.values())


def test_from_config_takes_the_pbx_and_group_names_and_the_window() -> None:
    config = load_config(ROOT / "config.example.yaml")
    metrics = Metrics.from_config(config)
    assert metrics.config == config.metrics
    assert value(metrics, "mcdaemon_smpp_window_size") == config.smpp.window
    assert value(metrics, "mcdaemon_ami_connection_state", pbx="lab", state="connected") == 0
    metrics.call_decided(call(), texted(group="support"))
    metrics.call_decided(call(), texted(group="marketing"))  # not (yet) a configured group
    assert value(metrics, "mcdaemon_calls_total", pbx="lab", group="support",
                 outcome="queue_abandon") == 1
    assert value(metrics, "mcdaemon_calls_total", pbx="lab", group="(unknown)",
                 outcome="queue_abandon") == 1
    raw = {**config.raw, "groups": {**config.raw["groups"], "marketing": {
        "templates": {"default": "Sorry we missed your call."}}}}
    metrics.update_names(config_from_dict(raw))  # SIGHUP with a new group
    metrics.call_decided(call(), texted(group="marketing"))
    assert value(metrics, "mcdaemon_calls_total", pbx="lab", group="marketing",
                 outcome="queue_abandon") == 1


def test_the_registry_is_per_instance() -> None:
    first, second = make_metrics(), make_metrics()
    first.call_decided(call(), texted())
    assert value(second, "mcdaemon_decisions_total", decision="text", reason="text") == 0
    assert first.registry is not second.registry


def test_no_phone_number_ever_appears_in_the_exposition() -> None:
    """Every value the network controls, in every argument that could take it."""
    metrics = make_metrics()
    number = CALLER.lstrip("+")
    for where in (number, CALLER, "07700900123"):
        metrics.call_decided(call(pbx=where, caller=where, group=where),
                             Decision(True, "text", group=where, body=where,
                                      destination=where, detail=where, variant=where,
                                      template=where))
        metrics.call_decided(call(caller=where), Decision(False, where, group="sales",
                                                          detail=where))
        metrics.delivery_receipt(where)
        metrics.smpp_bind_state(where)
        metrics.ami_connection_state(where, where)
        metrics.observe_outbox({"by_state": {where: 1, "queued": 1}, "oldest_queued_age": 1.0,
                                "deferred": 0, "duplicate_risk": 0})
    text = metrics.exposition().decode()
    for fragment in ("7700900123", "900123", "07700"):
        assert fragment not in text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for label in sample.labels.values():
                assert not re.search(r"\d{4,}", label), (sample.name, label)


def test_exposition_has_no_created_series() -> None:
    metrics = make_metrics()
    metrics.call_decided(call(), texted())
    assert "_created" not in metrics.exposition().decode()


# --------------------------------------------------------------------------- HTTP

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def http(port: int, request: bytes) -> tuple[str, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    return status, headers, body


async def test_the_endpoint_serves_the_metrics_over_tcp() -> None:
    metrics = make_metrics(enabled=True, host="127.0.0.1", port=free_port())
    metrics.call_decided(call(), texted())
    await metrics.start()
    try:
        assert metrics.address == ("127.0.0.1", metrics.config.port)
        url = f"http://127.0.0.1:{metrics.config.port}/metrics"
        with await asyncio.to_thread(urllib.request.urlopen, url, timeout=5) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            body = response.read().decode()
        samples = {(sample.name, frozenset(sample.labels.items())): sample.value
                   for family in text_string_to_metric_families(body)
                   for sample in family.samples}
        assert samples[("mcdaemon_decisions_total",
                        frozenset({("decision", "text"), ("reason", "text")}))] == 1
        metrics.call_decided(call(), texted())  # a scrape reads the numbers of the moment
        status, headers, body = await http(
            metrics.config.port, b"GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == "HTTP/1.1 200 OK"
        assert int(headers["Content-Length"]) == len(body)
        assert b'mcdaemon_decisions_total{decision="text",reason="text"} 2.0' in body
        status, headers, body = await http(metrics.config.port,
                                           b"HEAD /metrics HTTP/1.1\r\n\r\n")
        assert status == "HTTP/1.1 200 OK" and body == b"" and int(headers["Content-Length"])
        status, _, _ = await http(metrics.config.port, b"GET / HTTP/1.1\r\n\r\n")
        assert status == "HTTP/1.1 404 Not Found"
        status, headers, _ = await http(metrics.config.port,
                                        b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        assert status == "HTTP/1.1 405 Method Not Allowed" and headers["Allow"] == "GET, HEAD"
        status, _, _ = await http(metrics.config.port, b"nonsense\r\n\r\n")
        assert status == "HTTP/1.1 400 Bad Request"
    finally:
        await metrics.stop()
    assert metrics.address is None
    with pytest.raises(urllib.error.URLError):
        await asyncio.to_thread(urllib.request.urlopen, url, timeout=5)


async def test_port_zero_listens_on_a_free_port_of_the_configured_address_only() -> None:
    metrics = make_metrics(enabled=True, host="127.0.0.1", port=0)
    await metrics.start()
    try:
        assert metrics.address is not None
        host, port = metrics.address
        assert host == "127.0.0.1" and port > 0
        status, _, _ = await http(port, b"GET /metrics HTTP/1.0\r\n\r\n")
        assert status == "HTTP/1.1 200 OK"
    finally:
        await metrics.stop()


async def test_a_taken_port_is_a_clear_error() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        metrics = make_metrics(enabled=True, host="127.0.0.1", port=port)
        with pytest.raises(MetricsError) as caught:
            await metrics.start()
    assert str(caught.value) == (f"metrics.listen 127.0.0.1:{port}: address already in use; "
                                 "change metrics.listen or disable metrics")
    assert metrics.address is None
    await metrics.stop()  # nothing to stop: fine


async def test_an_address_not_on_this_host_is_a_clear_error() -> None:
    metrics = make_metrics(enabled=True, host="192.0.2.1", port=9464)  # TEST-NET-1
    with pytest.raises(MetricsError, match=r"^metrics.listen 192.0.2.1:9464: no such address"):
        await metrics.start()


async def test_disabled_metrics_open_no_port() -> None:
    port = free_port()
    metrics = make_metrics(enabled=False, host="127.0.0.1", port=port)
    await metrics.start()
    assert metrics.address is None
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
    await metrics.stop()


async def test_stop_closes_idle_and_slow_clients_at_once() -> None:
    metrics = make_metrics(enabled=True, host="127.0.0.1", port=0)
    await metrics.start()
    assert metrics.address is not None
    reader, writer = await asyncio.open_connection(*metrics.address)
    writer.write(b"GET /metr")  # and never the rest
    await writer.drain()
    await asyncio.sleep(0.05)
    await asyncio.wait_for(metrics.stop(), 2)
    assert await asyncio.wait_for(reader.read(), 2) == b""
    writer.close()
    await metrics.stop()  # twice: fine


# --------------------------------------------------------------------------- config

def test_metrics_are_off_by_default_on_loopback() -> None:
    config = config_from_dict({})
    assert config.metrics == MetricsConfig(enabled=False, host="127.0.0.1", port=9464)
    assert config.metrics.listen == "127.0.0.1:9464"


@pytest.mark.parametrize(("listen", "host", "port"), [
    ("127.0.0.1:9100", "127.0.0.1", 9100),
    ("localhost:9464", "localhost", 9464),
    ("[::1]:9464", "::1", 9464),
    ("metrics.lan:80", "metrics.lan", 80),
])
def test_listen_forms(listen: str, host: str, port: int) -> None:
    config = config_from_dict({"metrics": {"enabled": True, "listen": listen}})
    assert (config.metrics.host, config.metrics.port) == (host, port)
    assert config.metrics.listen == listen


@pytest.mark.parametrize(("listen", "message"), [
    ("9464", "'9464' is not host:port (e.g. 127.0.0.1:9464)"),
    ("127.0.0.1", "'127.0.0.1' is not host:port (e.g. 127.0.0.1:9464)"),
    (":9464", "':9464' has no host; give one, e.g. 127.0.0.1:9464 (an empty host would "
              "listen on every address)"),
    ("::1:9464", "'::1:9464': write an IPv6 address in brackets, e.g. [::1]:9464"),
    ("[::g]:9464", "'[::g]:9464' is not host:port (e.g. 127.0.0.1:9464)"),
    ("[1::2::3]:9464", "'[1::2::3]:9464': 1::2::3 is not an IPv6 address"),
    ("127.0.0.256:9464", "'127.0.0.256:9464': 127.0.0.256 is not an IPv4 address"),
    ("127.0.0.1:0", "'127.0.0.1:0': port 0 is not between 1 and 65535"),
    ("127.0.0.1:70000", "'127.0.0.1:70000': port 70000 is not between 1 and 65535"),
    ("_bad_:9464", "'_bad_:9464': '_bad_' is neither an IP address nor a host name"),
])
def test_a_bad_listen_is_an_error_with_its_path(listen: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"metrics": {"listen": listen}}, source="c.yaml")
    assert caught.value.problems == [f"c.yaml: metrics.listen: {message}"]


def test_metrics_section_errors_all_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"metrics": {"enabled": "yes", "listen": 9464, "port": 9464}},
                         source="c.yaml")
    assert caught.value.problems == [
        "c.yaml: metrics.enabled: must be true or false; got 'yes'",
        "c.yaml: metrics.port: unknown key (a typo? see config.example.yaml)",
        "c.yaml: metrics.listen: '9464' is not host:port (e.g. 127.0.0.1:9464)",
    ]
    with pytest.raises(ConfigError, match="metrics: must be a mapping"):
        config_from_dict({"metrics": True}, source="c.yaml")


@pytest.mark.parametrize(("listen", "warned"), [
    ("127.0.0.1:9464", False), ("127.0.0.2:9464", False), ("localhost:9464", False),
    ("[::1]:9464", False), ("0.0.0.0:9464", True), ("[::]:9464", True),
    ("192.168.1.10:9464", True), ("metrics.lan:9464", True),
])
def test_a_listen_address_off_loopback_gets_a_warning(listen: str, warned: bool) -> None:
    config = config_from_dict({"metrics": {"enabled": True, "listen": listen}}, source="c.yaml")
    expected = (f"c.yaml: metrics.listen: {listen} is not a loopback address: anyone who "
                "can reach it reads the metrics (there is no authentication); prefer "
                "127.0.0.1 with the scraper on this host, or firewall the port")
    assert config.warnings == ((expected,) if warned else ())
    disabled = config_from_dict({"metrics": {"enabled": False, "listen": listen}})
    assert disabled.warnings == ()


def test_check_config_shows_the_warning_and_still_accepts_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("metrics:\n  enabled: true\n  listen: 0.0.0.0:9464\n"
                    "ami: [{name: lab, username: mcd, secret: s}]\n"
                    "smpp: {host: 127.0.0.1, system_id: x, password: p, source_addr: Acme}\n"
                    f"store: {{path: {tmp_path / 'm.db'}}}\n", encoding="utf-8")
    path.chmod(0o600)
    result = subprocess.run([sys.executable, "-m", "mcdaemon", "check-config", "-c",
                             str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "config warning" in result.stderr  # a log line, naming the setting
    assert "metrics.listen: 0.0.0.0:9464 is not a loopback address" in result.stderr


def test_the_readme_lists_every_metric() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    metrics = make_metrics()
    metrics.call_decided(call(), texted())
    suffix = {"counter": "_total", "info": "_info"}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        name = family.name + suffix.get(family.type, "")
        assert f"`{name}`" in section, f"README.md's Metrics section lacks `{name}`"
