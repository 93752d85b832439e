"""The metrics endpoint of a running daemon counts what really happened on AMI and SMPP."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from mcdaemon.config.load import load_config
from mcdaemon.core.transcript import read_transcript
from mcdaemon.service import Service
from mcdaemon.sim.amiserver import AmiTestServer
from mcdaemon.sim.smsc import TestSmsc

from e2e.harness import AMI_SECRET, SMPP_PASSWORD, free_port, write_config
from recordings import recording_path


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    await writer.drain()
    response = await reader.read()
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def test_a_replayed_abandon_and_an_answered_call_show_up_in_the_metrics(
        tmp_path: Path) -> None:
    port = free_port()
    calls = [read_transcript(recording_path(name))
             for name in ("queue_abandon", "answered", "landline_abandon")]
    async with TestSmsc(password=SMPP_PASSWORD) as smsc, \
            AmiTestServer(calls, secret=AMI_SECRET, speed=0) as ami:
        config_path = write_config(tmp_path, ami_port=ami.port, smsc_port=smsc.port,
                                   metrics={"enabled": True, "listen": f"127.0.0.1:{port}"})
        service = Service(load_config(config_path), install_signal_handlers=False)
        task = asyncio.create_task(service.run())
        await asyncio.wait_for(ami.finished(), 10)
        await smsc.wait_for_submits(1, 10)
        await asyncio.sleep(0.5)  # the receipt comes back
        samples = await scrape(port)
        service.request_stop()
        assert await asyncio.wait_for(task, 10) == 0

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("mcdaemon_decisions_total", decision="text", reason="text") == 1
    assert value("mcdaemon_decisions_total", decision="no_text", reason="not_missed") == 1
    assert value("mcdaemon_decisions_total", decision="no_text", reason="not_mobile") == 1
    assert value("mcdaemon_texts_total", state="queued") == 1
    assert value("mcdaemon_texts_total", state="submitted") == 1
    assert value("mcdaemon_texts_total", state="delivered") == 1
    assert value("mcdaemon_delivery_receipts_total", status="DELIVRD") == 1
    assert value("mcdaemon_hangup_to_submit_seconds_count") == 1
    assert value("mcdaemon_smpp_bind_state", state="bound") == 1
    assert value("mcdaemon_ami_connection_state", pbx="lab", state="connected") == 1
    assert not any("447700900" in name + repr(labels) for name, labels in samples)


async def test_a_taken_metrics_port_stops_the_daemon_with_the_reason(tmp_path: Path) -> None:
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = blocker.sockets[0].getsockname()[1]
    try:
        config_path = write_config(tmp_path, ami_port=free_port(), smsc_port=free_port(),
                                   metrics={"enabled": True, "listen": f"127.0.0.1:{port}"})
        service = Service(load_config(config_path), install_signal_handlers=False)
        assert await asyncio.wait_for(service.run(), 10) == 1
    finally:
        blocker.close()
