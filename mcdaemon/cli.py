"""The `mcdaemon` command: argparse subcommands, each handed to the module that owns it."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from mcdaemon import __version__, logs
from mcdaemon.config.load import load_config, log_warnings, runtime_problems
from mcdaemon.config.model import Config
from mcdaemon.config.reader import ConfigError
from mcdaemon.store import StoreError

Handler = Callable[[argparse.Namespace], int]


def _load(args: argparse.Namespace) -> Config:
    config = load_config(args.config)
    log_warnings(config)  # logged: plain lines would break --log-format json
    return config


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        config = _load(args)
        problems = runtime_problems(config)
        if problems:
            raise ConfigError(problems)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{len(exc.problems)} problem(s) found", file=sys.stderr)
        return 1
    from mcdaemon.core.sender_id import describe

    if config.store.url:
        import asyncio

        from mcdaemon.store import check_postgresql
        try:
            store_line = asyncio.run(check_postgresql(config.store))
        except StoreError as exc:
            print(f"{config.source}: store.url: {exc}", file=sys.stderr)
            print("1 problem(s) found", file=sys.stderr)
            return 1
    print(f"{config.source}: OK ({len(config.ami)} PBX(s), inbound contexts: "
          f"{', '.join(config.inbound.contexts)})")
    print(describe(config.smpp))
    if config.store.url:
        print(store_line)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from mcdaemon.commands.replay import DryRunPolicy, replay_files

    config = _load(args)
    return replay_files(config, args.files, sys.stdout, decider=lambda: DryRunPolicy(config))


def cmd_preview(args: argparse.Namespace) -> int:
    import time

    from mcdaemon.commands.preview import preview

    return preview(_load(args), sys.stdout, args.group, args.outcome, args.caller, time.time())


def cmd_capture(args: argparse.Namespace) -> int:
    from mcdaemon.commands.capture import capture

    return capture(_load(args), args.out, pbx=args.pbx, duration=args.duration,
                   force=args.force)


def cmd_run(args: argparse.Namespace) -> int:
    import asyncio

    from mcdaemon.service import Service

    config = _load(args)
    problems = runtime_problems(config)
    if problems:
        raise ConfigError(problems)
    return asyncio.run(Service(config, config_path=args.config).run())


def cmd_send_test(args: argparse.Namespace) -> int:
    import asyncio

    from mcdaemon.commands.sendtest import send_test

    return asyncio.run(send_test(_load(args), args.number, args.text, args.timeout))


def cmd_enable(args: argparse.Namespace) -> int:
    import asyncio

    from mcdaemon.commands.control import set_switch

    return asyncio.run(set_switch(_load(args), args.group, True, sys.stdout))


def cmd_disable(args: argparse.Namespace) -> int:
    import asyncio

    from mcdaemon.commands.control import set_switch

    return asyncio.run(set_switch(_load(args), args.group, False, sys.stdout))


def cmd_status(args: argparse.Namespace) -> int:
    import asyncio

    from mcdaemon.commands.control import show_status

    return asyncio.run(show_status(_load(args), sys.stdout, as_json=args.json,
                                   health=args.health))


def _since(text: str) -> object:
    """`--since`: checked while parsing (a bad value exits 2 with usage), resolved later in
    the config's time zone."""
    from mcdaemon.report.kpis import parse_since

    try:
        return parse_since(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--since ")) from exc


def cmd_report(args: argparse.Namespace) -> int:
    import asyncio
    import time

    from mcdaemon.commands.report import run_report

    return asyncio.run(run_report(_load(args), sys.stdout, since=args.since, now=time.time(),
                                  group=args.group, output=args.format, html=args.html))


def _when(text: str) -> object:
    """`backfill --since/--until`: epoch seconds, `now`, or what `report --since` takes."""
    from mcdaemon.commands.backfill import parse_when

    try:
        return parse_when(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--since ")) from exc


def cmd_backfill(args: argparse.Namespace) -> int:
    import asyncio
    import time

    from mcdaemon.commands.backfill import backfill

    return asyncio.run(backfill(_load(args), sys.stdout, sys.stderr, files=args.queue_log,
                                since=args.since, until=args.until, now=time.time(),
                                dry_run=args.dry_run, queues=args.queue, pbx=args.pbx))


def cmd_record_booking(args: argparse.Namespace) -> int:
    import asyncio
    import time

    from mcdaemon.commands.report import record_booking

    return asyncio.run(record_booking(_load(args), sys.stdout, number=args.number,
                                      value=args.value, at=args.at, now=time.time(),
                                      currency=args.currency, note=args.note))


def cmd_demo(args: argparse.Namespace) -> int:
    import asyncio

    from mcdaemon.commands.demo import run_demo

    if args.log_level == "info":  # the demo prints what happens; the daemon's log stays quiet
        logs.configure(args.log_format, "warning")
    return asyncio.run(run_demo(sys.stdout, speed=args.speed))


def cmd_contacts(args: argparse.Namespace) -> int:
    import asyncio
    import time

    from mcdaemon.contacts import lookup as contacts
    config = _load(args)
    if args.contacts_command == "import":
        return asyncio.run(contacts.cli_import(config.region, config.store, args.file,
                                               sys.stdout, sys.stderr, time.time()))
    if args.contacts_command == "show":
        return asyncio.run(contacts.cli_show(config.region, config.store, args.number,
                                             sys.stdout, sys.stderr))
    return asyncio.run(contacts.cli_list(config.store, sys.stdout, sys.stderr,
                                         full=args.full))


def cmd_store(args: argparse.Namespace) -> int:
    import asyncio

    from mcdaemon.commands import store
    from mcdaemon.commands.migrate import migrate_store

    config = _load(args)
    if args.store_command == "info":
        return asyncio.run(store.show_info(config, sys.stdout, as_json=args.json))
    if args.store_command == "compact":
        return asyncio.run(store.compact(config, sys.stdout))
    return asyncio.run(migrate_store(config, args.to, sys.stdout, sys.stderr))


#: where `-c` looks when it is not given (the README's and the systemd unit's path)
DEFAULT_CONFIG = "/etc/mcdaemon/config.yaml"


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", default=DEFAULT_CONFIG, metavar="FILE",
                        help=f"the YAML configuration (default: {DEFAULT_CONFIG})")


def _log_options(parser: argparse.ArgumentParser, fmt: str | None = None,
                 level: str | None = None) -> None:
    """--log-format and --log-level, before the command or after it (`mcdaemon run -c F
    --log-level debug`). After it they default to SUPPRESS, so they never undo the ones
    given before."""
    parser.add_argument("--log-format", choices=("auto", "console", "json", "journald"),
                        default=fmt or argparse.SUPPRESS,
                        help="auto: journald under systemd, else console")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                        default=level or argparse.SUPPRESS,
                        help="debug also shows the traceback of a failure (default info)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mcdaemon", description="Texts back the callers an Asterisk PBX missed.")
    parser.add_argument("--version", action="version",
                        version=f"mcdaemon {__version__}")
    _log_options(parser, "auto", "info")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Handler, help_text: str,
                config: bool = True) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if config:
            _config_option(sub)
        _log_options(sub)
        sub.set_defaults(handler=handler)
        return sub

    command("check-config", cmd_check_config,
            "validate a config file; print every problem; exit 0 (fine) or 1")
    replay = command("replay", cmd_replay,
                     "dry run: feed recorded AMI transcripts through the tracker and print "
                     "one JSON line per finished inbound call; nothing is sent")
    replay.add_argument("files", nargs="+", metavar="FILE", help="transcripts (.ami)")
    capture = command("capture", cmd_capture,
                      "record a PBX's live AMI stream to a transcript file for replay or a "
                      "bug report")
    capture.add_argument("--out", required=True, metavar="FILE",
                         help="where to write (created readable by you only)")
    capture.add_argument("--force", action="store_true",
                         help="overwrite --out if it exists (default: refuse)")
    capture.add_argument("--pbx", metavar="NAME", help="which ami: entry (default: the first)")
    capture.add_argument("--duration", type=float, metavar="SECONDS",
                         help="stop after this long (default: until Ctrl-C)")
    preview = command("preview", cmd_preview,
                      "render each template with sample or given values: text, encoding, "
                      "characters used and left, SMS parts")
    preview.add_argument("--group", metavar="G", help="only this group")
    preview.add_argument("--outcome", metavar="O", help="only this outcome's template")
    preview.add_argument("--caller", metavar="NUMBER", help="render for this caller number")
    for name, handler, verb in (("enable", cmd_enable, "turn texting on"),
                                ("disable", cmd_disable, "turn texting off")):
        switch = command(name, handler, f"{verb} at run time (all groups, or --group G); the "
                         "running daemon applies it to the next call, no restart")
        switch.add_argument("--group", metavar="G", help="only this group")
    status = command("status", cmd_status,
                     "show the switches, the SMSC bind and AMI states, the outbox depth")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--health", action="store_true",
                        help="exit 1 unless the daemon runs and every PBX is connected "
                             "(for HEALTHCHECK)")
    report = command("report", cmd_report,
                     "the KPIs from the store, per group and overall: missed-call rate, "
                     "contactability, send, delivery, reply, opt-out and booking rates, time "
                     "to first text, A/B tests; reads the store only")
    report.add_argument("--since", type=_since, default="7d", metavar="WHEN",
                        help="calls that ended since: 7d, 24h, 30m, or an ISO date or "
                             "date-time in the config's time zone (default 7d)")
    report.add_argument("--group", metavar="G", help="only this group")
    report.add_argument("--format", choices=("table", "json", "csv"), default="table",
                        help="output on stdout (default table)")
    report.add_argument("--html", metavar="FILE",
                        help="also write a self-contained HTML page with charts")
    backfill = command("backfill", cmd_backfill,
                       "decide the queue calls the daemon missed while away (AMI down, "
                       "daemon stopped) from Asterisk's queue_log; one JSON line per call")
    backfill.add_argument("--queue-log", action="append", metavar="FILE",
                          help="a queue_log file, oldest first if several (queue_log.1 "
                               "queue_log); default: each PBX's ami[].queue_log and its .1")
    backfill.add_argument("--pbx", metavar="NAME",
                          help="only this PBX (the one --queue-log belongs to when ami has "
                               "several)")
    backfill.add_argument("--since", type=_when, required=True, metavar="WHEN",
                          help="calls that ended since: 7d, 24h, 30m, an ISO date or "
                               "date-time in the config's time zone, or epoch seconds")
    backfill.add_argument("--until", type=_when, default="now", metavar="WHEN",
                          help="the window's end, as --since, or now (default); calls "
                               "still in a queue then are not decided")
    backfill.add_argument("--queue", action="append", metavar="Q",
                          help="only this queue (repeatable; default: every queue)")
    backfill.add_argument("--dry-run", action="store_true",
                          help="print what would be decided; change nothing")
    booking = command("record-booking", cmd_record_booking,
                      "record a booking (a sale, an appointment) from a caller; it is "
                      "attributed to their latest texted missed call of the 30 days before")
    booking.add_argument("number", help="the caller's number, e.g. +447700900123")
    booking.add_argument("--value", type=float, required=True, metavar="AMOUNT",
                         help="what it is worth, e.g. 120")
    booking.add_argument("--at", metavar="WHEN",
                         help="when it was booked: ISO date-time (default: now)")
    booking.add_argument("--currency", metavar="CODE", help="e.g. GBP (shown with sums)")
    booking.add_argument("--note", help="free text kept with it")
    demo = command("demo", cmd_demo,
                   "see it work: real AMI recordings replayed over loopback into the real "
                   "daemon, texts to an embedded SMSC; ends by itself", config=False)
    demo.add_argument("--speed", type=float, default=20.0,
                      help="replay speed factor (default 20)")
    contacts = commands.add_parser(
        "contacts", help="the contact store: names for {caller_name}",
        description="the contact store: names for {caller_name} (see docs/features.md, "
                    "Contacts and caller names)")
    contact_commands = contacts.add_subparsers(dest="contacts_command", required=True,
                                               metavar="ACTION")
    for name, help_text in (
            ("import", "add or update contacts from a CSV file (header number,name,tags; "
                       "tags separated by ; or |); exit 0: all rows, 1: some refused, 2: "
                       "nothing read"),
            ("show", "one contact"), ("list", "every contact (numbers masked)")):
        sub = contact_commands.add_parser(name, help=help_text, description=help_text)
        _config_option(sub)
        _log_options(sub)
        sub.set_defaults(handler=cmd_contacts)
        if name == "import":
            sub.add_argument("file", metavar="FILE.csv", help="UTF-8, with or without BOM")
        elif name == "show":
            sub.add_argument("number", help="e.g. +447700900123 or 07700 900123")
        else:
            sub.add_argument("--full", action="store_true", help="whole phone numbers")
    store = commands.add_parser(
        "store", help="the store: its size, its history and retention, compacting it, moving "
                      "it to PostgreSQL",
        description="the store: its size, its history and retention (store.retention), "
                    "compacting it, moving it to PostgreSQL")
    store_commands = store.add_subparsers(dest="store_command", required=True,
                                          metavar="ACTION")
    for name, help_text in (
            ("info", "size on disk, rows and the oldest and newest of each table, what "
                     "retention removes next; reads the store only"),
            ("compact", "give the space retention freed back to the file system (SQLite: "
                        "with the daemon stopped the file is rewritten, its indexes in "
                        "order; beside it, in steps; PostgreSQL: a VACUUM beside the "
                        "daemons)")):
        sub = store_commands.add_parser(name, help=help_text, description=help_text)
        _config_option(sub)
        _log_options(sub)
        sub.set_defaults(handler=cmd_store)
        if name == "info":
            sub.add_argument("--json", action="store_true", help="machine-readable output")
    migrate_help = ("copy the SQLite store (store.path; stop the daemon first) into an empty "
                    "PostgreSQL database, ids kept; the password from PGPASSWORD or ~/.pgpass")
    migrate = store_commands.add_parser("migrate", help=migrate_help, description=migrate_help)
    _config_option(migrate)
    _log_options(migrate)
    migrate.set_defaults(handler=cmd_store)
    migrate.add_argument("--to", required=True, metavar="URL",
                         help="postgresql://USER@HOST:5432/DATABASE (an empty database)")
    command("run", cmd_run, "run the daemon: watch the PBXs, text the callers they missed")
    send_test = command("send-test", cmd_send_test,
                        "send one text through the configured SMSC bind and report the submit "
                        "result and the delivery receipt")
    send_test.add_argument("number", help="destination, e.g. +447700900123")
    send_test.add_argument("text", nargs="?", help="the text (default: a test message)")
    send_test.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                           help="how long to wait for the bind and the receipt (default 30)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.configure(args.log_format, args.log_level)
    handler: Handler = args.handler
    try:
        status = handler(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit as "Exception ignored"
        return status
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    except (StoreError, PermissionError) as exc:
        # expected: the store or a file is not where the config says, or not ours to write
        if args.log_level == "debug":
            raise
        _fail(args, str(exc))
        return 1
    except BrokenPipeError:
        # `mcdaemon report | head`: the reader has all it wanted; end as quietly as `cat`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as the shell reports a command the pipe ended
    except KeyboardInterrupt:
        return 130


def _fail(args: argparse.Namespace, message: str) -> None:
    """One line saying what to fix: a JSON log line under --log-format json, else text."""
    command = getattr(args, "command", None) or "mcdaemon"
    if args.log_format == "json":
        import structlog

        structlog.get_logger("mcdaemon").error(message, command=command)
    else:
        print(f"mcdaemon {command}: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
