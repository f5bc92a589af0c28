"""The user docs' examples work: every `lockgate ...` command line they show is one the CLI
accepts, every option they name exists, and every lockgate.yml or sync file they show loads.

The docs are README.md and docs/**/*.md (docs/config.md is generated and tested by
test_docs.py). Command lines are read from shell blocks (```console, ```sh and unlabelled blocks
of commands), from inline code that starts with `lockgate ` (in prose, tables and the hints of
error messages), from the first cell of a table of commands (`lockgate plan SYNC...` / `--all`)
and the options its row names, and from the options a shell comment names for its command
(`# or --type email`). Each is checked against the click app itself (`lockgate.cli.cli`), not
by running a process: the subcommands exist, each option is the command's, a flag has no value
and an option that takes one has it, a value has the option's type, no argument is too many; a
line in a shell block also gives every required parameter. Upper-case words (`SYNC`, `[RUN]`,
`FILE`) are placeholders: accepted as an argument or an option's value, not as a subcommand.
YAML blocks are loaded with the project loader, every `${VAR}` set: a block that is only part of
a file is completed with the fewest keys a valid file needs, the keys it shows written first so
that an error's line is the doc's line.
"""

from __future__ import annotations

import difflib
import functools
import re
import shlex
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from lockgate.cli import cli
from lockgate.errors import ConfigError
from lockgate.project.loader import load_project
from lockgate.project.models import ProjectConfig, SyncConfig

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md"] + sorted(
    p for p in (ROOT / "docs").rglob("*.md") if p.name != "config.md"
)
SHELL_LANGS = {"console", "sh", "shell", "bash"}

#: words the docs write in place of a value (`lockgate sync SYNC --only KEY`): accepted where a
#: command takes an argument or an option its value, nowhere else (not as a subcommand)
PLACEHOLDER = re.compile(r"\[?[A-Z][A-Z0-9_]*(\.\.\.)?\]?(\.\.\.)?")

#: options the docs name that belong to another program than `lockgate`: option -> the file
#: that defines it (checked to hold it)
OTHER_PROGRAMS = {
    "--served": "bench/emulator_ingest.py",
    "--hash": "bench/sources.py",
}


@dataclass(frozen=True)
class Block:
    """A fenced block: its language, the line of its first line of text, its text."""

    doc: str
    lang: str
    line: int
    text: str


@dataclass(frozen=True)
class Example:
    """A command line the docs show; ``shell`` when it is in a shell block (a command to run
    as it stands), else a mention in inline code (which may stop before an option's value)."""

    doc: str
    line: int
    text: str
    shell: bool
    #: for an option the docs name beside a command (in a table row, in a shell comment):
    #: the command lines it may belong to; it is right if the CLI accepts one of them
    alternatives: tuple[str, ...] = ()


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def parse(doc: str, text: str) -> tuple[list[Block], list[tuple[int, str]]]:
    """The fenced blocks of a Markdown text, and its other paragraphs (line, text)."""
    blocks: list[Block] = []
    prose: list[tuple[int, str]] = []
    lines = text.splitlines()
    para: list[str] = []
    para_start = 0
    i = 0

    def end_paragraph() -> None:
        if para:
            prose.append((para_start, "\n".join(para)))
            para.clear()

    while i < len(lines):
        fence = re.match(r"^(\s*)(`{3,})\s*([\w-]*)", lines[i])
        if fence:
            end_paragraph()
            indent, ticks, lang = fence.groups()
            start, body = i + 2, []
            i += 1
            while i < len(lines) and not re.match(rf"^\s*{ticks}\s*$", lines[i]):
                body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
                i += 1
            blocks.append(Block(doc, lang.lower(), start, "\n".join(body)))
        elif not lines[i].strip():
            end_paragraph()
        else:
            if not para:
                para_start = i + 1
            para.append(lines[i])
        i += 1
    end_paragraph()
    return blocks, prose


def code_spans(text: str) -> Iterator[tuple[int, str]]:
    """Inline code in ``text`` (offset, content), and the spans inside a span of two or more
    backticks (``warning: `lockgate sync profile` would fail``), as CommonMark reads them."""
    i = 0
    while True:
        opening = re.compile(r"(?<!`)(`+)(?!`)").search(text, i)
        if opening is None:
            return
        ticks = opening.group(1)
        closing = re.compile(rf"(?<!`){ticks}(?!`)").search(text, opening.end())
        if closing is None:
            i = opening.end()
            continue
        content = text[opening.end() : closing.start()]
        yield opening.end(), content
        if len(ticks) > 1:
            for offset, inner in code_spans(content):
                yield opening.end() + offset, inner
        i = closing.end()


def is_shell(block: Block) -> bool:
    if block.lang in SHELL_LANGS:
        return True
    return block.lang == "" and any(
        re.match(r"(\$ )?(lockgate|export) ", line) for line in block.text.splitlines()
    )


def examples(doc: str, text: str) -> list[Example]:
    """Every `lockgate ...` command line in a doc."""
    blocks, prose = parse(doc, text)
    found: list[Example] = []
    for block in blocks:
        if is_shell(block):
            lines = block.text.splitlines()
            n = 0
            last = ""  # the command the comment lines below it are about
            while n < len(lines):
                command_line, start = lines[n], n
                while command_line.rstrip().endswith("\\") and n + 1 < len(lines):
                    n += 1
                    command_line = command_line.rstrip()[:-1] + " " + lines[n]
                commands = shell_commands(command_line.removeprefix("$ "))
                for command in commands:
                    found.append(Example(doc, block.line + start, command, shell=True))
                last = command_path(commands[-1]) if commands else last
                comment = command_line.partition("#")[
                    2
                ]  # "(`lockgate webhooks load`)" in a comment
                # in a comment: options of the command (`# or --type email, --json`), and
                # other commands in inline code (`# load with `lockgate webhooks load``)
                options = []
                for _, span in code_spans(comment):
                    found += mentions(doc, block.line + start, span)
                    if span.startswith("-"):
                        options.append(" ".join(span.split()))
                    comment = comment.replace(f"`{span}`", "")
                options += re.findall(r"(?<![\w/-])--[a-z][a-z0-9-]*", comment)
                for option in options if last else ():
                    text = f"{last} {option}"
                    found.append(Example(doc, block.line + start, text, False, (text,)))
                n += 1
        elif block.lang in ("", "text"):  # an error message, with commands in its hints
            prose.append((block.line, block.text))
    for line, paragraph in prose:
        for offset, span in code_spans(paragraph):
            found += mentions(doc, line + paragraph.count("\n", 0, offset), span)
        for n, row in enumerate(paragraph.splitlines()):
            found += table_row(doc, line + n, row)
    return found


def table_row(doc: str, line: int, row: str) -> list[Example]:
    """A row of a table of commands (`| `lockgate plan SYNC...` / `--all` | ... |`): the
    other forms its first cell names (`--all` is `lockgate plan --all`, `runs show [RUN]` is
    `lockgate runs show [RUN]`), and each option the row names: one of the row's commands (or
    their subcommands) takes it."""
    cells = row.strip().strip("|").split("|") if row.lstrip().startswith("|") else []
    spans = [" ".join(s.split()) for _, s in code_spans(cells[0])] if cells else []
    if not spans or not spans[0].startswith("lockgate "):
        return []
    found, paths = [], [command_path(spans[0])]
    for span in spans[1:]:
        group = paths[-1].split()
        text = (
            f"{paths[-1]} {span}"
            if span.startswith("-")
            else f"lockgate {span}"
            if cli.get_command(click.Context(cli), span.split()[0])
            else f"{' '.join(group[:-1] or group)} {span}"
        )
        found.append(Example(doc, line, text, shell=False))
        paths.append(command_path(text))
    under = list(dict.fromkeys(c for path in paths for c in commands_under(path)))
    for cell in cells[1:]:
        for _, span in code_spans(cell):
            span = " ".join(span.split())
            if span.startswith("-"):
                candidates = tuple(f"{c} {span}" for c in under)
                found.append(Example(doc, line, f"{paths[0]} {span}", False, candidates))
    return found


def command_path(text: str) -> str:
    """The command a command line runs (`lockgate runs show` of `lockgate runs show RUN`)."""
    command: click.Command = cli
    ctx = click.Context(cli)
    path = ["lockgate"]
    for word in text.split()[1:]:
        sub = command.get_command(ctx, word) if isinstance(command, click.Group) else None
        if sub is None:
            break
        command, path = sub, [*path, word]
        ctx = click.Context(sub, parent=ctx, info_name=word)
    return " ".join(path)


def commands_under(path: str) -> list[str]:
    """A command and every subcommand below it."""
    command: click.Command = cli
    ctx = click.Context(cli)
    for word in path.split()[1:]:
        assert isinstance(command, click.Group)
        sub = command.get_command(ctx, word)
        assert sub is not None
        command, ctx = sub, click.Context(sub, parent=ctx, info_name=word)
    if not isinstance(command, click.Group):
        return [path]
    return [path, *(c for n in command.list_commands(ctx) for c in commands_under(f"{path} {n}"))]


def mentions(doc: str, line: int, span: str) -> list[Example]:
    span = re.sub(r"^(\$ )?\S*/lockgate ", "lockgate ", " ".join(span.split()) + " ").strip()
    if span.startswith("lockgate "):
        return [Example(doc, line, span, shell=False)]
    return []


def shell_commands(line: str) -> list[str]:
    """The `lockgate` commands of one shell line: after `&&`, `|`, `;` or `&`, without a
    comment, a leading `VAR=value` or the path to the script (`.venv/bin/lockgate`)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    out: list[list[str]] = [[]]
    for token in lexer:
        if token and set(token) <= set(";&|"):
            out.append([])
        else:
            out[-1].append(token)
    commands = []
    for words in out:
        while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
            words = words[1:]
        if words and words[0].endswith("/lockgate"):
            words = ["lockgate", *words[1:]]
        if words[:1] == ["lockgate"]:
            commands.append(shlex.join(words))
    return commands


def problems(example: Example) -> list[str]:
    """What the CLI would refuse in a command line the docs show (empty when it is right)."""
    if example.alternatives:
        if any(not refused(text, example.shell) for text in example.alternatives):
            return []
        where = ", ".join(f"`{command_path(t)}`" for t in example.alternatives)
        return [f"none of {where} takes it: {refused(example.alternatives[0], example.shell)[0]}"]
    return refused(example.text, example.shell)


def refused(text: str, shell: bool) -> list[str]:
    """What the CLI would refuse in a command line (a whole one when ``shell``, else one that
    may stop before an option's value)."""
    try:
        words = shlex.split(text)
    except ValueError as exc:  # an unbalanced quote
        return [f"cannot read it as a command line ({exc})"]
    command: click.Command = cli
    path = ["lockgate"]
    ctx = click.Context(cli, info_name="lockgate")
    arguments = [p for p in command.params if isinstance(p, click.Argument)]
    i = 1
    out: list[str] = []
    given: set[str] = set()  # the parameters given
    while i < len(words):
        word = words[i].strip("[]") if words[i].startswith("[-") else words[i]
        i += 1
        name = " ".join(path)
        if word in ("-h", "--help", "..."):
            continue
        if word.startswith("-"):
            option_name, has_value, value = word.partition("=")
            option = next(
                (
                    p
                    for p in command.params
                    if isinstance(p, click.Option) and option_name in (*p.opts, *p.secondary_opts)
                ),
                None,
            )
            if option is None:
                known = [o for p in command.params for o in getattr(p, "opts", ())]
                close = difflib.get_close_matches(option_name, known, n=1)
                out.append(
                    f"`{name}` has no option `{option_name}`"
                    + (f" (did you mean `{close[0]}`?)" if close else "")
                    + f"; its options: {', '.join(sorted(known)) or 'none'}"
                )
                continue
            given.add(option.name or "")
            if option.is_flag or option.count:
                if has_value:
                    out.append(f"`{option_name}` of `{name}` is a flag: it takes no value")
                continue
            if not has_value:
                if i >= len(words) or words[i].startswith("-"):
                    if shell or i < len(words):
                        out.append(f"`{option_name}` of `{name}` takes a value: none is given")
                    continue
                value = words[i]
                i += 1
            out += bad_value(option, value, ctx, f"`{option_name}` of `{name}`")
            continue
        if isinstance(command, click.Group) and not arguments:
            sub = command.get_command(ctx, word)
            if sub is None:
                known = command.list_commands(ctx)
                close = difflib.get_close_matches(word, known, n=1)
                out.append(
                    f"`{name}` has no subcommand `{word}`"
                    + (f" (did you mean `{close[0]}`?)" if close else "")
                    + f"; its subcommands: {', '.join(known)}"
                )
                return out
            command, path = sub, [*path, word]
            ctx = click.Context(sub, parent=ctx, info_name=word)
            arguments = [p for p in command.params if isinstance(p, click.Argument)]
            given = set()
            continue
        if not arguments:
            out.append(f"`{name}` takes no argument, but `{word}` is given")
            continue
        argument = arguments[0]
        if argument.nargs != -1 or word.endswith("..."):
            arguments.pop(0)
        given.add(argument.name or "")
        if word.startswith("[") and argument.required:
            out.append(f"`{word}` is shown as optional, but `{name}` requires it")
        out += bad_value(argument, word, ctx, f"argument {argument.human_readable_name}")
    if shell:  # a command line to run as it stands: nothing it needs is left out
        name = " ".join(path)
        if isinstance(command, click.Group) and not command.invoke_without_command:
            out.append(f"`{name}` needs a subcommand: {', '.join(command.list_commands(ctx))}")
        for param in command.params:
            if param.required and param.name not in given:
                shown = param.opts[0] if isinstance(param, click.Option) else param.name
                out.append(f"`{name}` needs `{shown}`, which is not given")
    return out


def bad_value(param: click.Parameter, value: str, ctx: click.Context, what: str) -> list[str]:
    """A value the parameter's type refuses (a placeholder such as FILE stands for any)."""
    if PLACEHOLDER.fullmatch(value) or isinstance(param.type, click.Path | click.File):
        return []
    try:
        param.type.convert(value, param, ctx)
    except click.BadParameter as exc:
        return [f"{what} refuses `{value}`: {exc.message}"]
    return []


@functools.cache
def all_examples() -> list[Example]:
    return [e for doc in DOCS for e in examples(rel(doc), doc.read_text())]


def report(found: list[tuple[str, int, str]]) -> str:
    return "\n".join(f"{doc}:{line}: {what}" for doc, line, what in found)


def refusals(found: list[Example]) -> list[tuple[str, int, str]]:
    return [(e.doc, e.line, f"`{e.text}`: {problem}") for e in found for problem in problems(e)]


def test_every_command_line_in_the_docs_is_accepted_by_the_cli() -> None:
    wrong = refusals(all_examples())
    if wrong:
        pytest.fail(
            "command lines in the docs that `lockgate` would refuse; fix the doc (or the CLI, "
            "if the doc says what it should do):\n" + report(wrong),
            pytrace=False,
        )


def test_the_docs_show_every_command() -> None:
    # also keeps the collector honest: it must find each command the docs show
    shown = {command_path(e.text) for e in all_examples()}
    runnable = [c for c in commands_under("lockgate")[1:] if runs_alone(c)]
    missing = [c for c in runnable if c not in shown]
    assert not missing, f"commands no doc shows as `lockgate ...`: {missing}"


def resolve(path: str) -> click.Command:
    """The command at a path (`lockgate runs show`)."""
    command: click.Command = cli
    ctx = click.Context(cli)
    for word in path.split()[1:]:
        assert isinstance(command, click.Group)
        sub = command.get_command(ctx, word)
        assert sub is not None, path
        command, ctx = sub, click.Context(sub, parent=ctx, info_name=word)
    return command


def runs_alone(path: str) -> bool:
    """A command, not a group that only holds others (`lockgate webhooks`)."""
    command = resolve(path)
    return not isinstance(command, click.Group) or command.invoke_without_command


@functools.cache
def every_option() -> frozenset[str]:
    """The options of every command (and `--help`)."""
    options = {"--help", "-h"}
    for path in commands_under("lockgate"):
        command = resolve(path)
        options |= {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
    return frozenset(options)


def unknown_options(doc: str, text: str) -> list[tuple[str, int, str]]:
    """Options a doc names (anywhere but in Python and JSON blocks) that no command has, nor
    another program the docs name (:data:`OTHER_PROGRAMS`)."""
    blocks, prose = parse(doc, text)
    texts = prose + [(b.line, b.text) for b in blocks if b.lang not in ("python", "json")]
    wrong = []
    for line, paragraph in texts:
        for m in re.finditer(r"(?<![\w/-])--[a-z][a-z0-9-]*", paragraph):
            option = m.group()
            if option in every_option():
                continue
            if option in OTHER_PROGRAMS and f'"{option}"' in (
                (ROOT / OTHER_PROGRAMS[option]).read_text()
            ):
                continue
            close = difflib.get_close_matches(option, sorted(every_option()), n=1)
            said = f"no lockgate command has `{option}`"
            said += f" (did you mean `{close[0]}`?)" if close else ""
            wrong.append((doc, line + paragraph.count("\n", 0, m.start()), said))
    return wrong


def test_every_option_the_docs_name_exists() -> None:
    # an option named on its own (`--export-rejected FILE` in prose): some command has it
    wrong = [w for doc in DOCS for w in unknown_options(rel(doc), doc.read_text())]
    if wrong:
        pytest.fail("options the docs name that no command has; fix the doc:\n" + report(wrong))


# --- YAML: lockgate.yml and sync files ---------------------------------------------------

#: a comment naming the file the lines below it belong to (`# syncs/profile.yml`)
FILE_HEADER = re.compile(r"^# (lockgate\.yml|syncs/([a-z0-9_]+)\.yml)\b.*$", re.M)
PROJECT_KEYS = {f.alias or n for n, f in ProjectConfig.model_fields.items()}
SYNC_KEYS = {f.alias or n for n, f in SyncConfig.model_fields.items()}

#: the least a lockgate.yml needs, for a part of one; a part's own keys replace these
PROJECT_BASE = {"name": "docs", "sources": {"warehouse": {"type": "duckdb", "path": "w.duckdb"}}}
#: the least a sync file of each kind needs, for a part of one (named after the syncs the
#: docs' examples use)
SYNC_BASE: dict[str, dict[str, Any]] = {
    "people": {
        "name": "customer_profile",
        "source": "warehouse",
        "model": {"table": "analytics.users"},
        "kind": "people",
        "primary_key": "id",
        "identify_by": {"id": "id"},
        "attributes": {"plan": "plan"},
    },
    "events": {
        "name": "orders",
        "source": "warehouse",
        "model": {"table": "analytics.orders"},
        "kind": "events",
        "identify_by": {"id": "user_id"},
        "event": {"name": "event_name", "timestamp": "ts", "id": "order_id"},
    },
}
#: what the text around a part says it sits in, beyond the least a file needs: the part's
#: first line -> keys added to its file
CONTEXT: dict[str, dict[str, Any]] = {
    # sync.md: "`attribute`: a key of `attributes`", "`unless`: SQL over the model's columns"
    "on_change:": {"attributes": {"cart_status": "cart_status", "cart_value": "cart_value"}},
}


@dataclass(frozen=True)
class Part:
    """A whole file, or part of one, that a YAML block shows: which file, and its text."""

    block: Block
    line: int  # the doc's line of the part's first line
    file: str  # `lockgate.yml` or `syncs/<name>.yml`
    text: str


def yaml_blocks(doc: str, text: str) -> list[Block]:
    return [b for b in parse(doc, text)[0] if b.lang in ("yaml", "yml")]


def parts(block: Block) -> list[Part]:
    """The files a YAML block shows: one per `# lockgate.yml` / `# syncs/NAME.yml` comment,
    else one, told by its keys (`file` is `?` when they tell neither)."""
    text = textwrap.dedent(block.text)
    headers = list(FILE_HEADER.finditer(text))
    if headers:
        out = []
        for n, header in enumerate(headers):
            end = headers[n + 1].start() if n + 1 < len(headers) else len(text)
            line = block.line + text.count("\n", 0, header.start())
            out.append(Part(block, line, header.group(1), text[header.start() : end]))
        return out
    data = yaml.safe_load(text)
    keys = set(data) if isinstance(data, dict) else set()
    if keys and keys <= PROJECT_KEYS and not keys <= SYNC_KEYS:
        return [Part(block, block.line, "lockgate.yml", text)]
    if keys and keys <= SYNC_KEYS and not keys <= PROJECT_KEYS:
        return [Part(block, block.line, "syncs/example.yml", text)]
    return [Part(block, block.line, "?", text)]


def completed(part: Part) -> str:
    """The part's text, then the keys a valid file needs that it does not write."""
    data = yaml.safe_load(part.text) or {}
    written = [ln for ln in part.text.splitlines() if ln.strip() and not ln.startswith("#")]
    extra = CONTEXT.get(written[0].split("#")[0].strip(), {}) if written else {}
    if part.file == "lockgate.yml":
        base: dict[str, Any] = PROJECT_BASE
    else:
        kind = data.get("kind") or (
            "events" if {"event", "backfill", "properties"} & set(data) else "people"
        )
        stem = Path(part.file).stem
        base = {**SYNC_BASE[kind], **({"name": stem} if stem != "example" else {})}
    missing = {k: v for k, v in {**base, **extra}.items() if k not in data}
    text = part.text.rstrip("\n") + "\n" if data else ""
    return text + (yaml.safe_dump(missing, sort_keys=False) if missing else "")


def load_error(block: Block, root: Path, monkeypatch: pytest.MonkeyPatch) -> str | None:
    """Why the files a YAML block shows, completed, do not load as a project (None: they do),
    naming the doc's line."""
    from lockgate.cli.project import _missing_env

    shown = parts(block)
    for part in shown:
        if part.file == "?":
            keys = ", ".join(f"`{k}`" for k in sorted(yaml.safe_load(part.text) or {}))
            return (
                f"{block.doc}:{block.line}: a YAML block whose keys ({keys}) are neither those of "
                "lockgate.yml nor those of a sync file; start it with a `# lockgate.yml` or "
                "`# syncs/NAME.yml` comment, or label it otherwise if it is no project file"
            )
    files = {p.file: completed(p) for p in shown}
    files.setdefault("lockgate.yml", completed(Part(block, 0, "lockgate.yml", "")))
    if not any(f.startswith("syncs/") for f in files):  # `alerts:` names this sync
        files["syncs/customer_profile.yml"] = completed(
            Part(block, 0, "syncs/customer_profile.yml", "")
        )
    (root / "syncs").mkdir()
    # the destination's default references, and every `${VAR}` the files name, are set
    monkeypatch.setenv("CUSTOMERIO_SITE_ID", "x")
    monkeypatch.setenv("CUSTOMERIO_API_KEY", "x")
    for name, text in files.items():
        (root / name).write_text(text)
        for variable in re.findall(r"\$\{(\w+)\}", text):
            monkeypatch.setenv(variable, "https://example.com/x" if "URL" in variable else "x")
    try:
        project = load_project(root)
    except ConfigError as exc:
        failing = next((p for p in shown if p.file == exc.file), None)
        where = f"{block.doc}:{block.line}"
        if failing is not None and exc.line:
            where = f"{block.doc}:{failing.line + exc.line - 1}"
        return (
            f"{where}: the example ({exc.file}) does not load: {exc.reason} (hint: {exc.hint}); "
            "fix the example, or the loader if the example is right. The file as loaded:\n"
            + files.get(str(exc.file), "")
        )
    missing = _missing_env(project)
    if missing:
        return f"{block.doc}:{block.line}: environment references not read as such: {missing}"
    return None


@pytest.mark.parametrize(
    "block",
    [b for doc in DOCS for b in yaml_blocks(rel(doc), doc.read_text())],
    ids=lambda b: f"{b.doc}:{b.line}",
)
def test_every_project_file_in_the_docs_loads(
    block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    error = load_error(block, tmp_path, monkeypatch)
    if error:
        pytest.fail(error, pytrace=False)


# --- the checks themselves find mistakes ------------------------------------------------

PLANTED = """\
# A doc with planted mistakes

```console
$ lockgate validate --conect --project demo          # wrong: option
$ lockgate emulater --port 8765                      # wrong: subcommand
$ lockgate reconcile customer_profile --sample many  # wrong: value
$ lockgate reconcile customer_profile extra          # wrong: argument
$ lockgate history --person                          # wrong: value missing
$ lockgate sync --all --json=yes                     # wrong: a flag with a value
$ lockgate identity explain jane@x.com               # or --tipe email: wrong
$ lockgate sync SYNC... --only KEY --full-resync && lockgate runs show [RUN] --json
$ .venv/bin/lockgate plan NAME --export-rejected FILE --detailed-exitcode
```

Run `lockgate SYNC --force` (wrong: a placeholder as a command), or
`lockgate plan NAME
--onyl KEY` (wrong, across lines); ``warning: `lockgate snyc profile` would fail`` (wrong).

```
Error: ...
  hint: run `lockgate sync orders --forse` once (wrong)
```

| command | what it does |
|---|---|
| `lockgate runs` / `runs shw [RUN]` | wrong: subcommand; `--export-rejected FILE` is right |
| `lockgate schedule` | `--heartbeet FILE` (wrong) |

```sh
lockgate identity plan          # wrong: `--old` is required
lockgate webhooks --json        # wrong: no subcommand
```

`lockgate reconcile [SYNC]` (wrong: SYNC is required) and `lockgate runs show [RUN]` (right).
"""


def test_the_command_check_finds_each_planted_mistake() -> None:
    found = refusals(examples("planted.md", PLANTED))
    # each line that says "wrong" (or where a command it shows starts), and no other
    wrong = [4, 5, 6, 7, 8, 9, 10, 15, 16, 17, 21, 26, 27, 30, 31, 34]
    assert sorted({line for _, line, _ in found}) == wrong, report(found)
    said = report(found)
    for expected in (
        "planted.md:4: `lockgate validate --conect --project demo`: `lockgate validate` has no "
        "option `--conect` (did you mean `--connect`?)",
        "planted.md:5: `lockgate emulater --port 8765`: `lockgate` has no subcommand `emulater` "
        "(did you mean `emulator`?)",
        "`--sample` of `lockgate reconcile` refuses `many`",
        "`lockgate reconcile` takes no argument, but `extra` is given",
        "`--person` of `lockgate history` takes a value: none is given",
        "`--json` of `lockgate sync` is a flag: it takes no value",
        "planted.md:10: `lockgate identity explain --tipe`: none of `lockgate identity explain` "
        "takes it",
        "`lockgate` has no subcommand `SYNC`",
        "planted.md:16: `lockgate plan NAME --onyl KEY`: `lockgate plan` has no option `--onyl`",
        "`lockgate` has no subcommand `snyc`",
        "planted.md:21: `lockgate sync orders --forse`",
        "`lockgate runs` has no subcommand `shw`",
        "planted.md:27: `lockgate schedule --heartbeet FILE`",
        "planted.md:30: `lockgate identity plan`: `lockgate identity plan` needs `--old`",
        "planted.md:31: `lockgate webhooks --json`: `lockgate webhooks` has no option `--json`",
        "`lockgate webhooks` needs a subcommand: load, rejects, send, serve, status",
        "planted.md:34: `lockgate reconcile [SYNC]`: `[SYNC]` is shown as optional, but "
        "`lockgate reconcile` requires it",
    ):
        assert expected in said, said


def test_the_option_check_finds_an_option_no_command_has() -> None:
    found = unknown_options("planted.md", PLANTED)
    assert sorted(line for _, line, _ in found) == [4, 10, 17, 21, 27], report(found)
    assert min(found)[2] == "no lockgate command has `--conect` (did you mean `--connect`?)"


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        (  # a key the sync file does not have, in a part of one
            "on_change:\n  - attribute: cart_status\n    form: open\n    event: x\n",
            "planted.md:14: the example (syncs/example.yml) does not load: unknown key `form`",
        ),
        (  # a value the model refuses, in the second file of a block of two
            "# lockgate.yml\ndefaults:\n  on_null: skip\n\n# syncs/profile.yml\nmode: sometimes\n",
            "planted.md:17: the example (syncs/profile.yml) does not load:",
        ),
        (  # a source whose `type` is misspelled
            "sources:\n  warehouse:\n    type: snowflak\n",
            "planted.md:14: the example (lockgate.yml) does not load: `type` `snowflak` is not one",
        ),
        (  # keys of neither file
            "warehouse: warehouse\ndataset: customerio\n",
            "planted.md:12: a YAML block whose keys (`dataset`, `warehouse`) are neither",
        ),
    ],
)
def test_the_yaml_check_finds_a_planted_mistake(
    yaml_text: str, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = "# planted\n\n" + "text\n" * 8 + "```yaml\n" + yaml_text + "```\n"
    [block] = yaml_blocks("planted.md", doc)
    error = load_error(block, tmp_path, monkeypatch)
    assert error is not None and error.startswith(expected), error
