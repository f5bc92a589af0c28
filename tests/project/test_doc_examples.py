"""The user docs' examples work: every `lockgate ...` command line they show is one the CLI
accepts, and every lockgate.yml or sync file they show loads.

The docs are README.md and docs/*.md (docs/config.md is generated and tested by test_docs.py).
Command lines are read from shell blocks (```console, ```sh and unlabelled blocks of commands)
and from inline code that starts with `lockgate `; each is checked against the click app itself
(`lockgate.cli.cli`), not by running a process. YAML blocks are loaded with the project loader:
a block that is only part of a file is completed with the fewest keys a valid file needs, the
keys it shows written first so that an error's line is the doc's line.
"""

from __future__ import annotations

import difflib
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
    p for p in (ROOT / "docs").glob("*.md") if p.name != "config.md"
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
                line, start = lines[n], n
                while line.rstrip().endswith("\\") and n + 1 < len(lines):
                    n += 1
                    line = line.rstrip()[:-1] + " " + lines[n]
                commands = shell_commands(line.removeprefix("$ "))
                for command in commands:
                    found.append(Example(doc, block.line + start, command, shell=True))
                last = command_path(commands[-1]) if commands else last
                comment = line.partition("#")[2]  # "(`lockgate webhooks load`)" in a comment
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
            continue
        if not arguments:
            out.append(f"`{name}` takes no argument, but `{word}` is given")
            continue
        argument = arguments[0]
        if argument.nargs != -1 or word.endswith("..."):
            arguments.pop(0)
        out += bad_value(argument, word, ctx, f"argument {argument.human_readable_name}")
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


def all_examples() -> list[Example]:
    return [e for doc in DOCS for e in examples(rel(doc), doc.read_text())]


def report(found: list[tuple[str, int, str]]) -> str:
    return "\n".join(f"{doc}:{line}: {what}" for doc, line, what in found)


def test_every_command_line_in_the_docs_is_accepted_by_the_cli() -> None:
    wrong = [
        (e.doc, e.line, f"`{e.text}`: {problem}") for e in all_examples() for problem in problems(e)
    ]
    assert not wrong, (
        "command lines in the docs that `lockgate` would refuse; fix the doc (or the CLI, "
        "if the doc says what it should do):\n" + report(wrong)
    )


def commands_of(group: click.Group, ctx: click.Context, path: str) -> Iterator[str]:
    for name in group.list_commands(ctx):
        sub = group.get_command(ctx, name)
        assert sub is not None
        yield f"{path} {name}"
        if isinstance(sub, click.Group):
            yield from commands_of(
                sub, click.Context(sub, parent=ctx, info_name=name), f"{path} {name}"
            )


def test_the_docs_show_every_command() -> None:
    # also keeps the collector honest: it must find each command the docs show
    shown = {" ".join(w for w in e.text.split() if not w.startswith("-")) for e in all_examples()}
    missing = [
        c
        for c in commands_of(cli, click.Context(cli), "lockgate")
        if not any(s == c or s.startswith(c + " ") for s in shown)
    ]
    assert not missing, f"commands no doc shows as `lockgate ...`: {missing}"


def test_every_option_the_docs_name_exists() -> None:
    # an option named on its own (`--export-rejected FILE` in the README's table): some
    # command has it, or it belongs to another program the docs name
    ctx = click.Context(cli)
    options = {"--help", "-h"}
    stack: list[tuple[click.Command, click.Context]] = [(cli, ctx)]
    while stack:
        command, at = stack.pop()
        options |= {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
        if isinstance(command, click.Group):
            for name in command.list_commands(at):
                sub = command.get_command(at, name)
                assert sub is not None
                stack.append((sub, click.Context(sub, parent=at, info_name=name)))
    wrong = []
    for doc in DOCS:
        blocks, prose = parse(rel(doc), doc.read_text())
        texts = prose + [(b.line, b.text) for b in blocks if b.lang not in ("python", "json")]
        for line, text in texts:
            for m in re.finditer(r"(?<![\w/-])--[a-z][a-z0-9-]*", text):
                option = m.group()
                at = line + text.count("\n", 0, m.start())
                if option in options:
                    continue
                if option in OTHER_PROGRAMS:
                    defined = (ROOT / OTHER_PROGRAMS[option]).read_text()
                    if f'"{option}"' in defined:
                        continue
                close = difflib.get_close_matches(option, sorted(options), n=1)
                wrong.append(
                    (
                        rel(doc),
                        at,
                        f"no lockgate command has `{option}`"
                        + (f" (did you mean `{close[0]}`?)" if close else ""),
                    )
                )
    assert not wrong, "options the docs name that do not exist:\n" + report(wrong)


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


def yaml_blocks() -> list[Block]:
    return [
        b for doc in DOCS for b in parse(rel(doc), doc.read_text())[0] if b.lang in ("yaml", "yml")
    ]


def parts(block: Block) -> list[Part]:
    """The files a YAML block shows: one per `# lockgate.yml` / `# syncs/NAME.yml` comment,
    else one, told by its keys."""
    text = textwrap.dedent(block.text)
    headers = list(FILE_HEADER.finditer(text))
    if headers:
        out = []
        for n, header in enumerate(headers):
            end = headers[n + 1].start() if n + 1 < len(headers) else len(text)
            line = block.line + text.count("\n", 0, header.start())
            out.append(Part(block, line, header.group(1), text[header.start() : end]))
        return out
    keys = set(yaml.safe_load(text) or {})
    if keys <= PROJECT_KEYS and not keys <= SYNC_KEYS:
        return [Part(block, block.line, "lockgate.yml", text)]
    if keys <= SYNC_KEYS and not keys <= PROJECT_KEYS:
        return [Part(block, block.line, "syncs/example.yml", text)]
    raise AssertionError(
        f"{block.doc}:{block.line}: a YAML block whose keys ({', '.join(sorted(keys))}) are "
        "neither of lockgate.yml nor of a sync file; start it with a `# lockgate.yml` or "
        "`# syncs/NAME.yml` comment (or, if it is no project file, label the block otherwise)"
    )


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


def yaml_examples() -> list[Part]:
    return [part for block in yaml_blocks() for part in parts(block)]


@pytest.mark.parametrize("part", yaml_examples(), ids=lambda p: f"{p.block.doc}:{p.line}:{p.file}")
def test_every_project_file_in_the_docs_loads(
    part: Part, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lockgate.cli.project import _missing_env

    same_block = [p for p in yaml_examples() if p.block == part.block]
    files = {p.file: completed(p) for p in same_block}
    files.setdefault("lockgate.yml", completed(Part(part.block, 0, "lockgate.yml", "name: docs\n")))
    if not any(f.startswith("syncs/") for f in files):
        files["syncs/customer_profile.yml"] = completed(
            Part(part.block, 0, "syncs/customer_profile.yml", "")
        )
    (tmp_path / "syncs").mkdir()
    # the destination's default references, and every `${VAR}` the files name, are set
    monkeypatch.setenv("CUSTOMERIO_SITE_ID", "x")
    monkeypatch.setenv("CUSTOMERIO_API_KEY", "x")
    for name, text in files.items():
        (tmp_path / name).write_text(text)
        for variable in re.findall(r"\$\{(\w+)\}", text):  # every `${VAR}` is set
            monkeypatch.setenv(variable, "https://example.com/x" if "URL" in variable else "x")
    where = f"{part.block.doc}:{part.line} ({part.file})"
    try:
        project = load_project(tmp_path)
    except ConfigError as exc:
        line = (
            f"{part.block.doc}:{part.line + exc.line - 1}"
            if exc.file == part.file and exc.line
            else where
        )
        pytest.fail(
            f"{line}: the example does not load: {exc.reason} (hint: {exc.hint}); fix the "
            f"example (or the loader, if the example is right). The file as loaded:\n"
            f"{files[exc.file] if exc.file in files else ''}"
        )
    assert _missing_env(project) == {}, f"{where}: environment references not read as such"
