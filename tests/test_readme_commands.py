"""Every `mcdaemon …` command the README (and the guides beside it: docs/features.md,
CONTRIBUTING.md) shows exists as shown, and a test (or the demo) runs it.

(a) each command line in their shell blocks parses with `build_parser()`: every
    subcommand and flag shown exists; commands in inline code (`mcdaemon disable --group
    sales`) may have placeholders, so only their subcommand and flags are checked;
(b) each subcommand shown, and each of its flags shown in a shell block, is invoked by a test
    (a `main([...])` or subprocess argument list naming it next to `-c`) or by the demo;
(c) each setting named in their prose (`smpp.window`) is one the config loader reads;
(d) the commands the install paths run (the systemd unit, the Docker image) parse too;
(e) each link between them finds its file and its heading.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from mcdaemon.cli import build_parser
from mcdaemon.config.load import known_keys

ROOT = Path(__file__).resolve().parent.parent
#: the administrator's documents whose commands, settings and links are checked
DOCUMENTS = ["README.md", "docs/features.md", "CONTRIBUTING.md"]
TEXTS = {name: (ROOT / name).read_text(encoding="utf-8") for name in DOCUMENTS}
README = TEXTS["README.md"]
#: linked from the README, written on other branches: checked once they are here
ELSEWHERE = {"docs/performance.md", "docs/architecture.md"}
THIS = Path(__file__).resolve()

#: fenced blocks whose lines are shell commands ("" is a block with no language)
SHELL_LANGUAGES = {"sh", "bash", "shell", "console", "plain", "text", ""}
#: tokens that end a command in a shell line
OPERATORS = {"|", "||", "&&", ";", "&", ">", ">>", "<", "2>", "2>&1"}
#: options of other programs whose value may be the word `mcdaemon` (a user, a group, a name)
VALUE_OPTIONS = {"-u", "-g", "-G", "-o", "-t", "--name", "--user", "--group"}
#: options that answer and exit without a command
EXITING_OPTIONS = {"--version", "-h", "--help"}
#: settings whose children are free names (template names, variables, headers, days)
FREE_MAPPINGS = {"groups.*.templates", "groups.*.variables", "groups.*.variants",
                 "groups.*.hours", "groups.*.callback.variables", "contacts.lookup.headers"}


# ---------------------------------------------------------------- reading the README

def _fenced_blocks(text: str) -> Iterator[tuple[str, str]]:
    for match in re.finditer(r"^```([A-Za-z]*)[^\n]*\n(.*?)^```", text, re.S | re.M):
        yield match.group(1).lower(), match.group(2)


def _prose(text: str) -> str:
    """A document without its fenced blocks."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _unbracket(line: str) -> str:
    """`[--full]`, `[--at ISO]`: an optional part shown in brackets is shown all the same."""
    return re.sub(r"\[(-[^\[\]]*)\]", r"\1", line)


def _tokens(line: str) -> list[str]:
    lexer = shlex.shlex(_unbracket(line), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        return list(lexer)
    except ValueError:  # unbalanced quotes: not a shell line
        return line.split()


def _invocations(tokens: list[str]) -> Iterator[list[str]]:
    """The argument lists given to `mcdaemon` (or `/path/bin/mcdaemon`) in one shell line."""
    for index, token in enumerate(tokens):
        if token != "mcdaemon" and not token.endswith("/bin/mcdaemon"):
            continue
        if index and tokens[index - 1] in VALUE_OPTIONS:
            continue  # `journalctl -u mcdaemon`, `install -g mcdaemon`, `docker build -t mcdaemon`
        args: list[str] = []
        for arg in tokens[index + 1:]:
            if arg in OPERATORS:
                break
            args.append(arg)
        if not args or args[0] == "mcdaemon":
            continue  # the unit or the image named `mcdaemon`; `docker exec mcdaemon mcdaemon …`
        if args[0].startswith("-") or re.fullmatch(r"[a-z][a-z-]*", args[0]):
            yield args


def _shell_lines(block: str) -> Iterator[str]:
    for line in block.replace("\\\n", " ").splitlines():
        line = re.sub(r"^\s*[$#]\s+", "", line)  # a prompt
        if line.strip():
            yield line


def fenced_commands(text: str | None = None) -> list[tuple[str, list[str]]]:
    """(line, arguments) of each `mcdaemon` command in shell blocks (of every document)."""
    if text is None:
        return [found for doc in TEXTS.values() for found in fenced_commands(doc)]
    found = []
    for language, block in _fenced_blocks(text):
        if language not in SHELL_LANGUAGES:
            continue
        for line in _shell_lines(block):
            for args in _invocations(_tokens(line)):
                found.append((line.strip(), args))
    return found


def log_events() -> set[str]:
    """The daemon's log event names: `mcdaemon started` in the prose is a log line."""
    events = set()
    for path in (ROOT / "mcdaemon").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        events.update(re.findall(r"""log\.[a-z]+\(\s*f?["']([^"'{]+)["']""", text))
    return events


def inline_commands() -> list[tuple[str, list[str]]]:
    found = []
    events = log_events()
    spans = [span for text in TEXTS.values() for span in re.findall(r"`([^`]+)`", _prose(text))]
    for span in spans:
        span = " ".join(span.split())
        if span in events:
            continue
        for args in _invocations(_tokens(span)):
            found.append((span, args))
    return found


# ---------------------------------------------------------------- argparse

def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:  # type: ignore[type-arg]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def resolve(args: list[str]) -> tuple[tuple[str, ...], argparse.ArgumentParser, list[str],
                                      list[str]]:
    """(subcommand path, its parser, the options given before it, the arguments after it)."""
    parser = build_parser()
    path: list[str] = []
    before: list[str] = []
    index = 0
    while (subparsers := _subparsers(parser)) is not None:
        while index < len(args) and args[index].startswith("-"):
            option = args[index].split("=")[0]
            action = parser._option_string_actions.get(option)
            assert action is not None, f"{option!r} is not an option of `mcdaemon {' '.join(path)}`"
            before.append(option)
            index += 1 if action.nargs == 0 or "=" in args[index] else 2
        if index == len(args) and set(before) & EXITING_OPTIONS:
            break  # `mcdaemon --version`: answered before any command
        assert index < len(args), f"no command after `mcdaemon {' '.join(args)}`"
        name = args[index]
        assert name in subparsers.choices, (
            f"`mcdaemon {' '.join([*path, name])}`: no such command "
            f"(commands: {', '.join(subparsers.choices)})")
        path.append(name)
        parser = subparsers.choices[name]
        index += 1
    return tuple(path), parser, before, args[index:]


def _flags(args: list[str]) -> list[str]:
    return [arg.split("=")[0] for arg in args if re.fullmatch(r"--?[A-Za-z][\w-]*(=.*)?", arg)]


def _takes_config(parser: argparse.ArgumentParser) -> bool:
    return "--config" in parser._option_string_actions


def test_the_readme_shows_mcdaemon_commands_in_shell_blocks() -> None:
    shown = {resolve(args)[0] for _, args in fenced_commands(README)}
    for path in [("check-config",), ("preview",), ("send-test",), ("replay",), ("capture",),
                 ("enable",), ("disable",), ("status",), ("run",), ("report",)]:
        assert path in shown, f"README shows no `mcdaemon {' '.join(path)}` command"


@pytest.mark.parametrize("line, args", fenced_commands(), ids=lambda value: (
    " ".join(value) if isinstance(value, list) else None))
def test_every_command_in_a_shell_block_parses(line: str, args: list[str]) -> None:
    path = resolve(args)[0]  # names the unknown command or option, if any
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(args)
    except SystemExit as exc:
        if path == () and exc.code == 0:
            return  # `mcdaemon --version`
        pytest.fail(f"docs: `{line}` does not parse:\n{errors.getvalue()}")


@pytest.mark.parametrize("span, args", inline_commands(), ids=lambda value: (
    " ".join(value) if isinstance(value, list) else None))
def test_every_inline_command_names_a_real_command_and_real_options(span: str,
                                                                    args: list[str]) -> None:
    _path, parser, _before, rest = resolve(args)
    for flag in _flags(rest):
        assert flag in parser._option_string_actions, (
            f"docs: `{span}`: {flag} is not an option of this command")


# ---------------------------------------------------------------- exercised by a test

def _corpus() -> dict[Path, str]:
    files = [path for path in sorted((ROOT / "tests").rglob("*.py")) if path.resolve() != THIS]
    files.append(ROOT / "mcdaemon" / "commands" / "demo.py")
    return {path: path.read_text(encoding="utf-8") for path in files}


def _quoted(word: str) -> str:
    return rf"""["']{re.escape(word)}["']"""


def invoking_files(path: tuple[str, ...], corpus: dict[Path, str]) -> list[Path]:
    """Files with an argument list naming the command: `"contacts", "list", "-c"`."""
    _, parser, _, _ = resolve(list(path))
    pattern = r"\s*,\s*".join(_quoted(word) for word in path)
    if _takes_config(parser):
        pattern += r"\s*,\s*" + r"""["'](?:-c|--config)["']"""
    else:
        pattern += r"\s*[,\])]"
    return [file for file, text in corpus.items() if re.search(pattern, text)]


def _uses_flag(flag: str, text: str) -> bool:
    return re.search(rf"""["']{re.escape(flag)}(?:["']|=)""", text) is not None


def shown_usage() -> dict[tuple[str, ...], tuple[set[str], set[str]]]:
    """Per command shown: (its flags shown in shell blocks, the global options given with it)."""
    usage: dict[tuple[str, ...], tuple[set[str], set[str]]] = {}
    for _, args in fenced_commands():
        path, _, before, rest = resolve(args)
        flags, global_options = usage.setdefault(path, (set(), set()))
        flags.update(flag for flag in _flags(rest) if flag not in ("-c", "--config"))
        global_options.update(before)
    for _, args in inline_commands():
        usage.setdefault(resolve(args)[0], (set(), set()))
    if re.search(r"^scripts/dev\.sh demo\b", README, re.M):
        dev = (ROOT / "scripts" / "dev.sh").read_text(encoding="utf-8")
        assert re.search(r"mcdaemon\"? demo", dev), "scripts/dev.sh demo: not `mcdaemon demo`"
        usage.setdefault(("demo",), (set(), set()))
    return usage


def test_every_command_shown_is_run_by_a_test_or_the_demo() -> None:
    corpus = _corpus()
    unexercised = []
    for path, (flags, global_options) in sorted(shown_usage().items()):
        name = "mcdaemon " + " ".join(path)
        files = invoking_files(path, corpus) if path else list(corpus)
        if not files:
            unexercised.append(f"`{name}`: no test invokes it")
            continue
        for flag in sorted(flags):
            if not any(_uses_flag(flag, corpus[file]) for file in files):
                unexercised.append(f"`{name} {flag}`: no test invoking `{name}` passes {flag}")
        for option in sorted(global_options):
            # options of `mcdaemon` itself work the same for every command
            if not any(_uses_flag(option, text) for text in corpus.values()):
                unexercised.append(f"`mcdaemon {option}`: no test passes it")
    assert not unexercised, "README commands no test runs:\n" + "\n".join(unexercised)


def test_the_exercise_check_sees_an_invocation_and_misses_a_mention() -> None:
    corpus = {Path("a.py"): 'await mcdaemon("status", "-c", str(config), "--json")',
              Path("b.py"): 'main(["contacts", "list", "-c", str(config), "--full"])',
              Path("c.py"): '"""run `mcdaemon preview -c FILE`"""; check("preview")'}
    assert invoking_files(("status",), corpus) == [Path("a.py")]
    assert invoking_files(("contacts", "list"), corpus) == [Path("b.py")]
    assert invoking_files(("preview",), corpus) == []
    status = corpus[Path("a.py")]
    assert _uses_flag("--json", status) and not _uses_flag("--js", status)


def test_the_command_finder_skips_other_programs_and_finds_wrapped_ones() -> None:
    lines = {
        "journalctl -u mcdaemon -f": [],
        "install -m 0600 -o mcdaemon -g mcdaemon config.example.yaml /etc/x": [],
        "usermod -a -G mcdaemon asterisk": [],
        "systemctl enable --now mcdaemon": [],
        "ln -s /opt/mcdaemon/bin/mcdaemon /usr/local/bin/mcdaemon": [],
        "docker run -d --name mcdaemon --network host -v a:/b mcdaemon": [],
        "docker exec mcdaemon mcdaemon status -c F   # note": [["status", "-c", "F"]],
        "runuser -u mcdaemon -- mcdaemon disable -c F": [["disable", "-c", "F"]],
        "mcdaemon report -c F --format csv > sales.csv": [["report", "-c", "F", "--format",
                                                           "csv"]],
        "mcdaemon contacts list -c F [--full]": [["contacts", "list", "-c", "F", "--full"]],
        "mcdaemon --log-format json run -c F": [["--log-format", "json", "run", "-c", "F"]],
    }
    for line, expected in lines.items():
        assert list(_invocations(_tokens(line))) == expected, line


# ---------------------------------------------------------------- settings in the prose

def _known() -> set[str]:
    example = yaml.safe_load((ROOT / "config.example.yaml").read_text(encoding="utf-8"))
    return known_keys(example, base_dir=ROOT)


def setting_mentions(text: str, tops: set[str]) -> list[tuple[str, str]]:
    """(the backticked span, the setting it names, normalised) for spans that start with a
    setting's path: `smpp.window`, `ami[].secret`, `groups.<g>.notify_staff: [...]`."""
    found = []
    for span in re.findall(r"`([^`\n]+)`", text):
        match = re.match(r"([a-z_]+)((?:\[[^\]\s]*\]|\.(?:\*|<[a-z]+>|[A-Za-z_][\w-]*))*)", span)
        if match is None or match.group(1) not in tops or not match.group(2):
            continue
        key = match.group(0)
        if re.search(r"\.(csv|ya?ml|ami|db|html|json|py|service|conf)$", key):
            continue  # a file name: `contacts.csv`
        key = re.sub(r"\[[^\]]*\]", "[]", key).removesuffix("[]")
        key = re.sub(r"^groups\.[^.]+", "groups.*", key)
        found.append((span, key))
    return found


def _is_known(key: str, known: set[str]) -> bool:
    if key in known:
        return True
    parts = key.split(".")
    return any(".".join(parts[:n]) in FREE_MAPPINGS for n in range(1, len(parts)))


@pytest.mark.parametrize("name", DOCUMENTS)
def test_every_setting_named_in_the_prose_exists(name: str) -> None:
    known = _known()
    tops = {key.split(".")[0].split("[")[0] for key in known}
    mentions = setting_mentions(_prose(TEXTS[name]), tops)
    if name != "CONTRIBUTING.md":
        assert len(mentions) > 30, "the setting finder finds (almost) nothing: is it broken?"
    unknown = sorted({f"`{span}` ({key})" for span, key in mentions if not _is_known(key, known)})
    assert not unknown, f"{name} names settings the config does not have:\n" + "\n".join(unknown)


def test_the_setting_check_catches_a_typo() -> None:
    known = _known()
    mentions = setting_mentions("`smpp.windows` and `groups.<g>.notify_staff: []` and "
                                "`groups.sales.templates.queue_abandon` and `contacts.csv:14`",
                                {"smpp", "groups", "contacts"})
    verdicts = {key: _is_known(key, known) for _, key in mentions}
    assert verdicts == {"smpp.windows": False, "groups.*.notify_staff": True,
                        "groups.*.templates.queue_abandon": True}


# ---------------------------------------------------------------- what the install paths run

def _parses(args: list[str], where: str) -> None:
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            build_parser().parse_args(args)
    except SystemExit:
        pytest.fail(f"{where}: `mcdaemon {' '.join(args)}` does not parse:\n{errors.getvalue()}")


def test_the_systemd_unit_runs_a_command_that_parses() -> None:
    unit = (ROOT / "systemd" / "mcdaemon.service").read_text(encoding="utf-8")
    starts = re.findall(r"^ExecStart=(.+)$", unit, re.M)
    assert len(starts) == 1
    program, *args = shlex.split(starts[0])
    assert program.endswith("/mcdaemon")
    _parses(args, "systemd/mcdaemon.service ExecStart")


def test_the_docker_image_runs_commands_that_parse() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")

    def exec_form(instruction: str) -> list[str]:
        match = re.search(rf"^{instruction} (\[.*\])$", dockerfile, re.M)
        assert match is not None, f"Dockerfile: no {instruction} [...]"
        return list(json.loads(match.group(1)))

    entrypoint, command, health = exec_form("ENTRYPOINT"), exec_form("CMD"), exec_form(r"\s+CMD")
    assert entrypoint == ["mcdaemon"]
    _parses(command, "Dockerfile CMD")
    assert health[0] == "mcdaemon"
    _parses(health[1:], "Dockerfile HEALTHCHECK")


# ---------------------------------------------------------------- links between the documents

def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = path.read_text(encoding="utf-8")
    return {_slug(heading) for heading in re.findall(r"^#+ (.+)$", _prose(text), re.M)}


def links(name: str) -> list[tuple[str, str]]:
    """(target file relative to the repository, anchor or "") of each relative link."""
    found = []
    for target in re.findall(r"\]\(([^)\s]+)\)", _prose(TEXTS[name])):
        if re.match(r"[a-z]+:", target):
            continue  # https://, mailto:
        path, _, anchor = target.partition("#")
        file = (ROOT / name).parent / path if path else ROOT / name
        found.append((file.resolve().relative_to(ROOT).as_posix(), anchor))
    return found


def test_the_readme_links_to_its_sections_and_to_the_documents_it_moved_things_to() -> None:
    targets = set(links("README.md"))
    assert {("README.md", "install"), ("README.md", "go-live"),
            ("README.md", "troubleshooting")} <= targets
    files = {file for file, _ in targets}
    assert {"docs/configuration.md", "docs/features.md", "docs/performance.md",
            "docs/architecture.md", "docs/receipts.md", "CONTRIBUTING.md"} <= files


@pytest.mark.parametrize("name", DOCUMENTS)
def test_every_link_finds_its_file_and_heading(name: str) -> None:
    broken = []
    for file, anchor in links(name):
        path = ROOT / file
        if not path.exists():
            if file not in ELSEWHERE:
                broken.append(f"{file}: no such file")
            continue
        if anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(f"{file}#{anchor}: no such heading")
    assert not broken, f"{name}: broken links:\n" + "\n".join(broken)
