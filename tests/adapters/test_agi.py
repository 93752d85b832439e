"""FastAGI hooks: what a dialplan's AGI() call sets on its channel, over real TCP.

The client here speaks the FastAGI protocol as Asterisk does: the agi_* headers, a blank line,
then one `200 result=1` line per command the server sends.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mcdaemon.adapters.agi import AgiError, AgiHooks, tag_marks
from mcdaemon.config.agi import AgiConfig
from mcdaemon.config.load import config_from_dict
from mcdaemon.config.reader import ConfigError

GROUPS = ("sales", "support")
OPTED_OUT = {"+447700900123"}


async def is_opted_out(number: str) -> bool:
    return number in OPTED_OUT


def hooks(**config: object) -> AgiHooks:
    return AgiHooks(AgiConfig(enabled=True, port=0, **config),  # type: ignore[arg-type]
                    groups=lambda: GROUPS, region=lambda: "GB", opted_out=is_opted_out)


async def call_hook(server: AgiHooks, script: str, callerid: str = "07700900123",
                    answer: bytes = b"200 result=1\n") -> list[str]:
    """Run one AGI request like Asterisk; the commands the server sent."""
    address = server.address
    assert address is not None
    reader, writer = await asyncio.open_connection(*address)
    writer.write(f"agi_network: yes\nagi_network_script: {script}\nagi_request: "
                 f"agi://127.0.0.1/{script}\nagi_channel: PJSIP/carrier-00000001\n"
                 f"agi_uniqueid: 1795369867.0\nagi_callerid: {callerid}\n"
                 "agi_calleridname: Alice\nagi_context: from-carrier\n\n".encode())
    await writer.drain()
    commands = []
    while line := await asyncio.wait_for(reader.readline(), 5):
        commands.append(line.decode().rstrip("\n"))
        writer.write(answer)
        await writer.drain()
    writer.close()
    return commands


async def test_tag_sets_the_group_and_the_after_hours_mark_on_the_channel() -> None:
    server = hooks()
    await server.start()
    try:
        commands = await call_hook(server, "tag?group=sales&after_hours=1")
    finally:
        await server.stop()
    assert commands == ['SET VARIABLE MCD_GROUP "sales"', 'SET VARIABLE MCD_AFTER_HOURS "1"']


async def test_a_call_back_request_marks_the_call_under_either_name() -> None:
    server = hooks()
    await server.start()
    try:
        assert await call_hook(server, "callback-request") == [
            'SET VARIABLE MCD_CALLBACK "1"']
        # the lab dialplan's IVR key 9: AGI(agi://127.0.0.1:4573/callback,${CALLERID(num)},…)
        assert await call_hook(server, "callback") == ['SET VARIABLE MCD_CALLBACK "1"']
    finally:
        await server.stop()


async def test_optout_check_answers_for_the_callers_number_in_any_form() -> None:
    server = hooks()
    await server.start()
    try:
        assert await call_hook(server, "optout-check", callerid="07700900123") == [
            'SET VARIABLE MCD_OPTED_OUT "1"']
        assert await call_hook(server, "optout-check", callerid="+447700900999") == [
            'SET VARIABLE MCD_OPTED_OUT "0"']
        assert await call_hook(server, "optout-check", callerid="anonymous") == [
            'SET VARIABLE MCD_OPTED_OUT "0"']
    finally:
        await server.stop()


async def test_an_unknown_hook_or_group_sets_nothing_and_the_server_goes_on() -> None:
    server = hooks()
    await server.start()
    try:
        assert await call_hook(server, "nonsense") == []
        assert await call_hook(server, "tag?group=marketing") == []
        assert await call_hook(server, "tag?group=support") == [
            'SET VARIABLE MCD_GROUP "support"']
    finally:
        await server.stop()


async def test_a_refused_command_stops_the_hook_without_an_error() -> None:
    server = hooks()
    await server.start()
    try:
        commands = await call_hook(server, "tag?group=sales&ignore=1",
                                   answer=b"510 Invalid or unknown command\n")
    finally:
        await server.stop()
    assert commands == ['SET VARIABLE MCD_GROUP "sales"']


async def test_a_client_that_hangs_up_early_or_says_nothing_is_let_go() -> None:
    server = hooks(timeout=0.3)
    await server.start()
    try:
        address = server.address
        assert address is not None
        _, writer = await asyncio.open_connection(*address)
        writer.write(b"agi_network: yes\nagi_netw")
        writer.close()  # gone before the headers ended
        reader, silent = await asyncio.open_connection(*address)
        assert await asyncio.wait_for(reader.read(), 2) == b""  # closed after the timeout
        silent.close()
        assert await call_hook(server, "callback") == ['SET VARIABLE MCD_CALLBACK "1"']
    finally:
        await server.stop()


def test_tag_parameters_are_checked_and_values_that_could_inject_are_refused() -> None:
    assert tag_marks({"did": ["+441632960000"]}, GROUPS) == (
        [("MCD_DID", "+441632960000")], "")
    marks, problem = tag_marks({"did": ['1"\nEXEC Dial']}, GROUPS)
    assert marks == [] and "did must be a number" in problem
    marks, problem = tag_marks({"group": ['sales"\n'], "colour": ["red"]}, GROUPS)
    assert marks == []
    assert "not a configured group" in problem and "unknown parameter 'colour'" in problem
    assert tag_marks({"ignore": ["0"]}, GROUPS) == ([], "")


async def test_a_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = blocker.sockets[0].getsockname()[1]
    try:
        server = AgiHooks(AgiConfig(enabled=True, port=port), groups=lambda: GROUPS,
                          region=lambda: "GB", opted_out=is_opted_out)
        with pytest.raises(AgiError, match=f"agi.listen 127.0.0.1:{port}: cannot listen"):
            await server.start()
    finally:
        blocker.close()


def test_the_agi_section_is_validated_and_a_public_address_is_warned_about() -> None:
    base = {"region": "GB", "inbound": {"contexts": ["from-carrier"]}}
    with pytest.raises(ConfigError) as error:
        config_from_dict({**base, "agi": {"enabled": True, "listen": "nowhere",
                                          "colour": "red"}})
    text = "\n".join(error.value.problems)
    assert "agi.listen" in text and "agi.colour" in text
    config = config_from_dict({**base, "agi": {"enabled": True, "listen": "0.0.0.0:4573"}})
    assert (config.agi.host, config.agi.port) == ("0.0.0.0", 4573)
    assert any("agi.listen" in warning for warning in config.warnings)
    assert config_from_dict(base).agi == AgiConfig()
