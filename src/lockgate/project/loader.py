"""Load a project folder: `lockgate.yml`, the sync files in `syncs/` (and its folders) and the
SQL models they point to.

YAML is parsed into nodes first so that every validation error can name the file and the
line of the offending key. Duplicate keys are errors (PyYAML silently keeps the last one).
Merge keys (`<<: *defaults`) bring in the anchored mapping's keys, as `yaml.safe_load` does.

Example::

    project = load_project("path/to/project")
    sync = project.sync("customer_profile")
    sql = project.model_sql(sync)
"""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from lockgate.errors import ConfigError
from lockgate.project.models import (
    Place,
    Placed,
    ProjectConfig,
    SyncConfig,
    WebhooksConfig,
    place_of,
    project_path,
)

PROJECT_FILE = "lockgate.yml"
BUILTIN_IDENTIFIERS = ("id", "user_id", "cio_id", "email")  # Customer.io's own identifiers
SYNCS_DIR = "syncs"

Lines = dict[tuple[str | int, ...], int]
#: the tag of a `<<` key: the YAML merge key (`<<: *defaults`)
MERGE_TAG = "tag:yaml.org,2002:merge"
M = TypeVar("M", bound=BaseModel)


#: libyaml's parser where PyYAML was built with it (the wheels are): ~10x the pure-Python one
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _walk(
    node: yaml.Node,
    path: tuple[str | int, ...],
    lines: Lines,
    file: str,
    scalars: yaml.constructor.SafeConstructor,
) -> Any:
    """Turn a YAML node into plain data, recording the line of every key and item."""
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        merge: yaml.Node | None = None
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in out or (key_node.tag == MERGE_TAG and merge is not None):
                raise ConfigError(
                    f"duplicate key `{key}`",
                    hint="each key may appear once; remove or rename one of them",
                    file=file,
                    line=key_node.start_mark.line + 1,
                )
            if key_node.tag == MERGE_TAG:
                merge = key_node
                continue
            lines[(*path, key)] = key_node.start_mark.line + 1
            out[key] = _walk(value_node, (*path, key), lines, file, scalars)
        if merge is None:
            return out
        # `<<: *defaults` (or a list of them) as `yaml.safe_load` reads it: the keys written
        # here win over the merged ones (which come first, as there)
        return {**_merged(node, path, lines, file, scalars), **out}
    if isinstance(node, yaml.SequenceNode):
        return [_walk(item, (*path, i), lines, file, scalars) for i, item in enumerate(node.value)]
    return scalars.construct_object(node, deep=True)  # as `safe_load` reads it


def _merged(
    node: yaml.MappingNode,
    path: tuple[str | int, ...],
    lines: Lines,
    file: str,
    scalars: yaml.constructor.SafeConstructor,
) -> dict[str, Any]:
    """The keys a mapping's merge key (`<<`) brings in, each recorded at the line where it is
    written (in the anchored mapping), unless the mapping writes that key itself. Of a list of
    mappings, the earlier one's key wins, as the YAML merge key spec says (PyYAML 6 gives the
    earlier or the later one depending on whether it interned the two keys' strings)."""
    key_node, value_node = next((k, v) for k, v in node.value if k.tag == MERGE_TAG)
    items = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
    own = {str(k.value) for k, _ in node.value if k.tag != MERGE_TAG}
    out: dict[str, Any] = {}
    for item in items:
        if not isinstance(item, yaml.MappingNode):
            raise ConfigError(
                "`<<` merges a mapping into this one: write `<<: *name` with an anchored "
                "mapping (`&name {...}`), or a list of them",
                hint="or write the keys here instead",
                file=file,
                line=key_node.start_mark.line + 1,
            )
        found: Lines = {}
        for key, value in _walk(item, path, found, file, scalars).items():
            if key in out:  # an earlier mapping of the list wins (YAML's merge key spec)
                continue
            out[key] = value
            if key not in own:
                lines.update((p, n) for p, n in found.items() if p[: len(path) + 1] == (*path, key))
    return out


def read_utf8(path: Path) -> str:
    """A project file's text: UTF-8 whatever the locale (`lockgate init` writes UTF-8, and a
    file must read the same under every `LANG`)."""
    return path.read_text(encoding="utf-8")


def not_utf8(exc: UnicodeDecodeError, shown: str, what: str = "") -> ConfigError:
    """A file that is not UTF-8 (saved as Latin-1 or Windows-1252 by an editor), at the line of
    its first such byte. Was a bare UnicodeDecodeError: `lockgate schedule` reloading an
    edited file stopped on it instead of keeping the last good project."""
    line = exc.object[: exc.start].count(b"\n") + 1
    return ConfigError(
        f"{what or 'the file '}is not UTF-8 text (byte 0x{exc.object[exc.start]:02x})",
        hint="save the file as UTF-8 (your editor's encoding setting); Lockgate reads every "
        "project file as UTF-8",
        file=shown,
        line=line,
    )


#: `${NAME}` not inside quotes (a `"` or `'` right before it)
_UNQUOTED_REFERENCE = re.compile(r"(?<![\"'])\$\{[A-Za-z_][A-Za-z0-9_]*\}")
#: a `{` that opens a flow mapping (not the one of a `${NAME}`)
_FLOW_OPEN = re.compile(r"(?<!\$)\{")


def read_yaml(path: Path, root: Path | None = None) -> tuple[Any, Lines]:
    """Parse one YAML file into data plus a map from key path to line number."""
    shown = str(path.relative_to(root)) if root and path.is_relative_to(root) else str(path)
    try:
        text = read_utf8(path)
    except OSError as exc:
        raise ConfigError(f"cannot read `{shown}`: {exc.strerror}", file=shown) from exc
    except UnicodeDecodeError as exc:
        raise not_utf8(exc, shown) from exc
    try:
        node = yaml.compose(text, Loader=_LOADER)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        hint = "check indentation and quoting around this line"
        start = 0 if mark is None else text.rfind("\n", 0, mark.index) + 1
        line_text = "" if mark is None else text[start : mark.index + 1]
        end = text.find("\n", start)
        whole_line = "" if mark is None else text[start : len(text) if end < 0 else end]
        if "\t" in line_text:
            # PyYAML says "found character '\t' that cannot start any token"
            hint = "this line is indented with a tab; YAML indents with spaces only"
        elif (found := _UNQUOTED_REFERENCE.search(whole_line)) and _FLOW_OPEN.search(whole_line):
            # `{url: ${WAREHOUSE_URL}}`: inside braces, the reference's own `}` ends the map
            hint = (
                f'inside `{{ ... }}`, quote an environment reference: `"{found.group(0)}"`; '
                "or write the mapping one key per line"
            )
        raise ConfigError(
            f"not valid YAML: {getattr(exc, 'problem', exc)}",
            hint=hint,
            file=shown,
            line=mark.line + 1 if mark else None,
        ) from exc
    if node is None:
        raise ConfigError(
            "the file is empty",
            hint="`lockgate init` writes a commented example of each file; docs/config.md "
            "lists every key",
            file=shown,
        )
    lines: Lines = {}
    data = _walk(node, (), lines, shown, yaml.constructor.SafeConstructor())
    return data, lines


def _line_for(loc: tuple[str | int, ...], lines: Lines) -> int | None:
    """The line of the deepest key on ``loc``; parts that are not keys (union tags) are skipped."""
    current: tuple[str | int, ...] = ()
    for part in loc:
        if (*current, part) in lines:
            current = (*current, part)
    return lines.get(current)


def _leaves(annotation: Any) -> list[Any]:
    """The types an annotation may hold: unions and `Annotated` unwrapped."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _leaves(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [leaf for arg in typing.get_args(annotation) for leaf in _leaves(arg)]
    return [annotation]


def _walk_models(
    model: type[BaseModel], loc: tuple[str | int, ...]
) -> tuple[list[type[BaseModel]], tuple[str | int, ...]]:
    """The models the mapping at ``loc`` may be (pydantic's error path, tags included), and
    ``loc`` without its union tags (`sources.warehouse.duckdb.path` is `sources.warehouse.path`
    in the file: `duckdb` is the model its `type:` picked, not a key)."""
    current: list[Any] = [model]
    keys: list[str | int] = []
    for part in loc:
        step: list[Any] = []
        for tp in current:
            origin, args = typing.get_origin(tp), typing.get_args(tp)
            if isinstance(tp, type) and issubclass(tp, BaseModel):
                for name, info in tp.model_fields.items():
                    if part in (name, info.alias):
                        step += _leaves(info.annotation)
            elif origin is dict and isinstance(part, str):
                step += _leaves(args[1])
            elif origin is list and isinstance(part, int):
                step += _leaves(args[0])
        tagged = [
            tp
            for tp in current
            if isinstance(tp, type)
            and issubclass(tp, BaseModel)
            and "type" in tp.model_fields
            and tp.model_fields["type"].default == part
        ]
        if step:
            current = step
            keys.append(part)
        elif tagged:  # a union tag (`duckdb`): keep the model it names
            current = tagged
        else:  # an unknown key, or a path the models do not describe
            keys.append(part)
    models = [tp for tp in current if isinstance(tp, type) and issubclass(tp, BaseModel)]
    return models, tuple(keys)


def _models_at(model: type[BaseModel], loc: tuple[str | int, ...]) -> list[type[BaseModel]]:
    """The models the mapping at ``loc`` may be (pydantic's error path, tags included)."""
    return _walk_models(model, loc)[0]


def _keys_at(model: type[BaseModel], loc: tuple[str | int, ...]) -> list[str]:
    """The keys allowed in the mapping at ``loc``."""
    return [
        info.alias or name
        for tp in _models_at(model, loc)
        for name, info in tp.model_fields.items()
    ]


def validate_model(model: type[M], data: Any, lines: Lines, file: str) -> M:
    """Validate data against a model; the first error becomes a ConfigError with file:line."""
    try:
        config = model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raw = first["loc"]
        # drop pydantic's validator steps such as `function-before[...]` and the tags of
        # unions (`duckdb` in `sources.warehouse.duckdb.path`): neither is a key in the file.
        # An unknown key itself is kept even when it holds a bracket
        keep = len(raw) - 1 if first["type"] == "extra_forbidden" else len(raw)
        keys = tuple(p for p in raw[:keep] if not (isinstance(p, str) and "[" in p))
        loc = _walk_models(model, keys)[1] + tuple(raw[keep:])
        where = ".".join(str(p) for p in loc) or "(top level)"
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = f"unknown key `{loc[-1]}`"
            hint = "remove it or check its spelling; `lockgate validate --schema` shows every key"
            close = difflib.get_close_matches(str(raw[-1]), _keys_at(model, raw[:-1]), n=1)
            if close:
                hint = f"did you mean `{close[0]}`? (`lockgate validate --schema` shows every key)"
        elif first["type"] == "missing":
            message = f"missing required key `{loc[-1]}`"
            hint = "add it; see docs/config.md"
        elif first["type"] in ("union_tag_not_found", "union_tag_invalid"):
            tags = [str(tp.model_fields["type"].default) for tp in _models_at(model, raw)]
            known = ", ".join(f"`{t}`" for t in tags)
            if first["type"] == "union_tag_not_found":
                message = f"`{where}` has no `type`"
                hint = f"add `type:` with one of {known}; see docs/config.md"
            else:
                message = f"`type` `{first['ctx']['tag']}` is not one of {known}"
                hint = "check its spelling; see docs/config.md"
                loc = (*loc, "type")
        elif first["type"] == "model_type" and not loc:
            shape = "a list" if isinstance(data, list) else "a single value"
            message = f"the file holds {shape}; it must be a mapping of keys (`name: ...`)"
            hint = "write one key per line at the top level, without a leading `- `"
        else:
            # a validator may say how to fix its value (`hint` in its error's context)
            hint = (first.get("ctx") or {}).get(
                "hint"
            ) or "see docs/config.md for the allowed values"
        more = len(exc.errors()) - 1
        if more:
            hint += f" ({more} more error{'s' if more > 1 else ''} after this one)"
        raise ConfigError(
            f"{message} (at `{where}`)",
            hint=hint,
            file=file,
            line=_line_for(loc, lines),
        ) from None
    refuse_blank(config, lines, file)
    return config


def _blank_in(value: Any, loc: tuple[str | int, ...]) -> tuple[tuple[str | int, ...], Any] | None:
    """The first empty (or white-space-only) text in a validated config value, as (its path
    in the file, what holds it: a field's `FieldInfo`, `"key"` for a mapping's key, None for
    an item of a list or a mapping's value). Fields typed `Any` (a constant's `value`, a
    `default`) may hold any text and are not looked into."""
    if isinstance(value, BaseModel):
        for name, info in type(value).model_fields.items():
            if info.annotation is Any:
                continue
            field_value, key = getattr(value, name), info.alias or name
            if isinstance(field_value, str) and not field_value.strip():
                return (*loc, key), info
            found = _blank_in(field_value, (*loc, key))
            if found is not None:
                return found
        return None
    if isinstance(value, str):
        return (loc, None) if not value.strip() else None
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and not key.strip():
                return (*loc, key), "key"
            found = _blank_in(item, (*loc, key))
            if found is not None:
                return found
        return None
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found = _blank_in(item, (*loc, i))
            if found is not None:
                return found
    return None


def refuse_blank(config: BaseModel, lines: Lines, file: str) -> None:
    """Refuse an empty value the models' own checks let through: `state: ''` put the state in
    the project folder itself, a DuckDB `path: ''` or a source named `''` failed (or did
    something else) only when a command used them. Raises ConfigError at the line."""
    found = _blank_in(config, ())
    if found is None:
        return
    loc, info = found
    where = ".".join(str(p) for p in loc if p != "") or "(top level)"
    if info == "key":
        parent = ".".join(str(p) for p in loc[:-1])
        message = f"`{parent}` holds an entry with an empty name"
        hint = "give it a name (letters, digits and `_`), or take the entry out"
    elif isinstance(loc[-1], int):
        message = f"item {loc[-1] + 1} of `{'.'.join(str(p) for p in loc[:-1])}` is empty"
        hint = "write a value there, or take the item out"
    else:
        message = f"`{where}` is empty"
        default = getattr(info, "default", None)
        if not isinstance(info, FieldInfo) or info.is_required():
            hint = "write a value; see docs/config.md"
        elif isinstance(default, str) and default:
            hint = f"write a value, or leave `{loc[-1]}` out for its default (`{default}`)"
        else:
            hint = f"write a value, or leave `{loc[-1]}` out; see docs/config.md"
    raise ConfigError(f"{message} (at `{where}`)", hint=hint, file=file, line=_line_for(loc, lines))


@dataclass
class Project:
    """A loaded project: its folder, `lockgate.yml` and the syncs by name."""

    root: Path
    config: ProjectConfig
    syncs: dict[str, SyncConfig] = field(default_factory=dict)
    sync_files: dict[str, str] = field(default_factory=dict)
    sync_lines: dict[str, Lines] = field(default_factory=dict)
    #: the line of each key of `lockgate.yml`, for errors found after loading (a run's)
    lines: Lines = field(default_factory=dict)

    def sync(self, name: str) -> SyncConfig:
        try:
            return self.syncs[name]
        except KeyError:
            known = ", ".join(f"`{n}`" for n in sorted(self.syncs)) or "none"
            close = difflib.get_close_matches(name, sorted(self.syncs), n=1)
            hint = f"syncs in this project: {known}"
            hint = f"did you mean `{close[0]}`? ({hint})" if close else hint
            raise ConfigError(f"no sync named `{name}`", hint=hint) from None

    def locate(
        self, error: ConfigError, sync: str, key: tuple[str, ...] | None = None
    ) -> ConfigError:
        """``error``, about sync ``sync`` but raised away from its file (compiling the mapping
        against the model's columns), pointed at the sync file and at the line of the field
        it names, or else of ``key`` (``("model",)`` for an error about the model)."""
        if error.file is None and sync in self.sync_files:
            error.file = self.sync_files[sync]
            lines = self.sync_lines.get(sync, {})
            named = re.search(r"field `([^`]+)`", error.reason)
            rule = re.search(r"`on_change\[(\d+)\]\.(\w+)`", error.reason)
            identifier = re.search(r"identifier `([^`]+)` reads column", error.reason)
            object_id = re.search(r"object id \(`(\w+)`\)", error.reason)
            if rule:
                error.line = lines.get(("on_change", int(rule[1]), rule[2]))
            elif identifier:
                error.line = lines.get(("identify_by", identifier[1]), lines.get(("identify_by",)))
            elif object_id:
                error.line = lines.get((object_id[1],))
            elif "primary key column" in error.reason:
                error.line = lines.get(("primary_key",))
            elif named:
                keys = ("attributes", "properties", "relationship_attributes")
                error.line = next(
                    (lines[(key, named[1])] for key in keys if (key, named[1]) in lines), None
                )
            elif key is not None:
                error.line = lines.get(key)
        return error

    def where(self, *key: str | int) -> str:
        """`lockgate.yml:<line>` of a key of the project file (`lockgate.yml` when unknown)."""
        line = _line_for(key, self.lines)
        return f"{PROJECT_FILE}:{line}" if line else PROJECT_FILE

    def model_sql(self, sync: SyncConfig) -> str:
        """The SQL text of a sync's model."""
        model = sync.model
        if model.sql is not None:
            return model.sql
        if model.table is not None:
            return f"select * from {model.table}"
        assert model.file is not None
        path = self.root / model.file
        try:
            return read_utf8(path)
        except OSError as exc:
            raise ConfigError(
                f"sync `{sync.name}`: cannot read model file `{model.file}`: {exc.strerror}",
                hint=f"the path is relative to the project folder `{self.root}`",
                file=self.sync_files.get(sync.name),
                line=self.sync_lines.get(sync.name, {}).get(("model",)),
            ) from exc
        except UnicodeDecodeError as exc:
            raise not_utf8(exc, str(model.file), f"sync `{sync.name}`: its model file ") from exc

    @property
    def state_dir(self) -> Path:
        """The state folder: `state:` with its `${VAR}` references and a leading `~` expanded,
        relative to the project folder. A deployment points it at a persistent volume by a
        variable; kept as written, the state went into a folder named `${VAR}` in the project
        and was lost with the container (the next run a full resend). Raises ConfigError
        naming the line of `state:` when a variable it names is not set."""
        return self.path_option(self.config.state, "state")

    def path_option(self, value: str, *loc: str) -> Path:
        """A path option of lockgate.yml at ``loc`` (`state`, `webhooks.spool`, a DuckDB
        source's `path`) as the path it names: `${VAR}` references and a leading `~` expanded,
        relative to the project folder unless absolute. Raises ConfigError naming the option's
        line when a variable it names is not set."""
        what = place_of(loc)
        if what:  # `source `warehouse`: environment variable `X` (for `path`) is not set`
            place = Place(what, loc[:-1], self.lines, PROJECT_FILE)
            return project_path(self.root, value, field=".".join(loc), at=place)
        try:
            return project_path(self.root, value, field=".".join(loc))
        except ConfigError as exc:
            exc.file, exc.line = PROJECT_FILE, self.lines.get(loc)
            raise

    @property
    def spool_dir(self) -> Path:
        """The webhooks spool folder (`webhooks.spool`, expanded as `state:` is)."""
        config = self.config.webhooks or WebhooksConfig()
        return self.path_option(config.spool, "webhooks", "spool")

    def __iter__(self) -> Iterator[SyncConfig]:
        return iter(self.syncs.values())


def _check_identifiers(sync: SyncConfig, config: ProjectConfig, lines: Lines, file: str) -> None:
    """Every `identify_by` type is one of Customer.io's or one declared under `identity:`."""
    declared = list(config.identity.identifier_types) if config.identity else []
    # a relationship can go to a person known only by an anonymous id (Customer.io attaches
    # it once that visitor is identified)
    anonymous = ["anonymous_id"] if sync.kind == "relationships" else []
    allowed = list(dict.fromkeys([*BUILTIN_IDENTIFIERS, *anonymous, *declared]))
    for kind in sync.identify_by:
        if kind in allowed:
            continue
        close = difflib.get_close_matches(kind, allowed, n=1)
        known = ", ".join(f"`{k}`" for k in allowed)
        if config.identity is None:
            hint = f"identify by {known}, or declare `{kind}` under `identity:` in lockgate.yml"
        else:
            hint = f"declare it under `identity.identifier_types` in lockgate.yml; known: {known}"
        raise ConfigError(
            f"identifier type `{kind}` in `identify_by` is not known",
            hint=(f"did you mean `{close[0]}`? " if close else "") + hint + " (docs/identity.md)",
            file=file,
            line=lines.get(("identify_by", kind)),
        )


def declared_hint(name: str, declared: Any, what: str = "sources") -> str:
    """The hint for a name that is not among ``declared``: the close one, then every one."""
    names = sorted(declared)
    close = difflib.get_close_matches(name, names, n=1)
    listed = f"declared {what}: {', '.join(f'`{n}`' for n in names) or 'none'}"
    return f"did you mean `{close[0]}`? ({listed})" if close else listed


def _check_sources_named(config: ProjectConfig, lines: Lines) -> None:
    """`identity.sources[].source` and `webhooks.warehouse` name declared sources, as a sync's
    `source:` and `run_log.warehouse` must: a typo is an error of `lockgate validate` at its
    line, not of the run that reads it after extracting the model."""
    named: list[tuple[str, str | None, tuple[str | int, ...]]] = [
        (f"identity source `{spec.name}` reads from", spec.source, ("identity", "sources", i))
        for i, spec in enumerate(config.identity.sources if config.identity else ())
    ]
    if config.webhooks is not None:
        named.append(("`webhooks.warehouse` names", config.webhooks.warehouse, ("webhooks",)))
    several = len(config.sources) > 1
    for i, spec in enumerate(config.identity.sources if config.identity and several else ()):
        if spec.source is None:
            raise ConfigError(
                f"identity source `{spec.name}` has no `source:`, and lockgate.yml declares "
                "several warehouses",
                hint=f"add `source: <name>` naming the warehouse that holds "
                f"{f'`{spec.table}`' if spec.table else 'the tables its `sql` reads'}; declared "
                f"sources: {', '.join(f'`{n}`' for n in sorted(config.sources))}",
                file=PROJECT_FILE,
                line=lines.get(("identity", "sources", i)),
            )
    for what, name, path in named:
        if name is None or name in config.sources:
            continue
        key = (*path, "source") if path[0] == "identity" else (*path, "warehouse")
        raise ConfigError(
            f"{what} source `{name}`, which lockgate.yml does not declare under `sources:`",
            hint=declared_hint(name, config.sources),
            file=PROJECT_FILE,
            line=lines.get(key) or lines.get(path),
        )


def _place_blocks(config: ProjectConfig, lines: Lines) -> None:
    """Give each block of lockgate.yml whose options may name environment variables (sources,
    destinations, `webhooks`, alerts) its :class:`Place`: a variable not set, found when a
    command connects, is then an error naming the block and its line."""
    blocks: list[tuple[tuple[str | int, ...], Placed | None]] = [
        *((("sources", name), source) for name, source in config.sources.items()),
        *((("destinations", name), dest) for name, dest in config.destinations.items()),
        (("webhooks",), config.webhooks),
        *((("alerts", i), alert) for i, alert in enumerate(config.alerts)),
    ]
    for loc, block in blocks:
        if block is not None:
            block.placed(Place(place_of(loc) or "", loc, lines, PROJECT_FILE))


def _check_null_defaults(
    sync: SyncConfig, shown: str, sync_lines: Lines | None, lines: Lines
) -> None:
    """Refuse `on_null: default` for a sync (its own, or `defaults.on_null` of lockgate.yml)
    when a field reading a column has neither a `default` nor an `on_null` of its own: a null
    there was sent as JSON `null`, which Customer.io does not take as a value. A field's own
    `on_null: default` without a `default` is refused where it is written. ``sync_lines``:
    the sync file's, when the sync sets its own `on_null`; None when lockgate.yml's applies."""
    if sync.on_null != "default":
        return
    groups = (sync.attributes, sync.properties, getattr(sync, "relationship_attributes", {}))
    bare = [
        name
        for group in groups
        for name, spec in group.items()
        if spec.value is None and spec.on_null is None and spec.default is None
    ]
    if not bare:
        return
    named = ", ".join(f"`{name}`" for name in bare)
    raise ConfigError(
        f"sync `{sync.name}`: `on_null: default` sends each field's `default` for a null, "
        f"and {named} {'has' if len(bare) == 1 else 'have'} none",
        hint=f"give {'it' if len(bare) == 1 else 'each'} a `default` (`{bare[0]}: {{column: "
        f"{bare[0]}, default: ...}}`), or its own `on_null` (`skip` or `clear`)",
        file=shown if sync_lines is not None else PROJECT_FILE,
        line=(sync_lines if sync_lines is not None else lines).get(
            ("on_null",) if sync_lines is not None else ("defaults", "on_null")
        ),
    )


def sync_files(root: Path) -> list[Path]:
    """The sync files of the project at ``root``: every `.yml` or `.yaml` file in `syncs/` and
    in the folders under it (`syncs/marketing/leads.yml`), by path. Files and folders whose
    name starts with `.` (`.git`, an editor's lock or swap file such as Emacs's
    `.#people.yml`, a notebook's copies) are passed over, as is a backup (`people.yml~`); a
    folder linked
    twice is read once. A file in a folder was skipped: `validate` and `sync --all` said
    nothing of it."""
    top = root / SYNCS_DIR
    found: list[Path] = []
    seen: set[str] = set()
    for folder, subfolders, files in os.walk(top, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a link back up the tree, or one folder linked twice
            subfolders.clear()
            continue
        seen.add(real)
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        found += [
            Path(folder) / name
            for name in files
            if name.endswith((".yml", ".yaml")) and not name.startswith(".")
        ]
    return sorted(found, key=lambda path: path.relative_to(top).parts)


def load_project(root: str | Path = ".") -> Project:
    """Load and validate a project folder. Raises ConfigError naming file and line."""
    root = Path(root).resolve()
    project_file = root / PROJECT_FILE
    if not project_file.exists():
        raise ConfigError(
            f"no `{PROJECT_FILE}` in `{root}`",
            hint="run `lockgate init` to scaffold a project, or pass `--project PATH`",
        )
    data, lines = read_yaml(project_file, root)
    config = validate_model(ProjectConfig, data, lines, PROJECT_FILE)
    _check_sources_named(config, lines)
    _place_blocks(config, lines)
    project = Project(root=root, config=config, lines=lines)
    for path in sync_files(root):
        shown = str(path.relative_to(root))
        sync_data, sync_lines = read_yaml(path, root)
        sync = validate_model(SyncConfig, sync_data, sync_lines, shown)
        if sync.name in project.syncs:
            raise ConfigError(
                f"sync name `{sync.name}` is used twice: in `{project.sync_files[sync.name]}` "
                f"and in `{shown}`",
                hint=f"rename one of them; a sync's name is unique in the project, whatever "
                f"folder under `{SYNCS_DIR}/` its file is in",
                file=shown,
                line=sync_lines.get(("name",)),
            )
        if sync.source not in config.sources:
            raise ConfigError(
                f"sync `{sync.name}` reads source `{sync.source}`, "
                "which lockgate.yml does not declare",
                hint=declared_hint(sync.source, config.sources),
                file=shown,
                line=sync_lines.get(("source",)),
            )
        if sync.destination not in config.destinations:
            raise ConfigError(
                f"sync `{sync.name}` writes to destination `{sync.destination}`, "
                "which lockgate.yml does not declare",
                hint=declared_hint(sync.destination, config.destinations, "destinations"),
                file=shown,
                line=sync_lines.get(("destination",)),
            )
        _check_identifiers(sync, config, sync_lines, shown)
        own_null = "on_null" in sync.model_fields_set
        if not own_null and sync.kind != "events":
            # `defaults.on_null` for the attributes of a sync that does not set its own
            # (events' properties have no value to keep: a null there is always left out)
            sync = sync.model_copy(update={"on_null": config.defaults.on_null})
        _check_null_defaults(sync, shown, sync_lines if own_null else None, lines)
        zone = config.sources[sync.source].timezone
        if sync.timezone is None and zone is not None:
            # the source's zone for the naive timestamps of a sync that does not name its own
            sync = sync.in_time_zone(zone)
        project.syncs[sync.name] = sync
        project.sync_files[sync.name] = shown
        project.sync_lines[sync.name] = sync_lines
    if config.run_log is not None:
        run_log_warehouse(project, lines)
    for i, alert in enumerate(config.alerts):
        unknown = [n for n in alert.syncs or () if n not in project.syncs]
        if unknown:
            raise ConfigError(
                f"alert {i + 1} names sync `{unknown[0]}`, which the project does not have",
                hint=f"syncs: {', '.join(sorted(project.syncs)) or 'none'}",
                file=PROJECT_FILE,
                line=lines.get(("alerts", i, "syncs")),
            )
    return project


def run_log_warehouse(project: Project, lines: Lines | None = None) -> str:
    """The source `run_log:` writes into: `run_log.warehouse`, or the first source that can take
    Lockgate's tables (a DuckDB file, Postgres). Raises ConfigError naming the line."""
    from lockgate.sources.write import writable

    config = project.config.run_log
    assert config is not None
    lines = lines or {}
    declared = project.config.sources
    if config.warehouse is None:
        name = next((n for n in declared if writable(project, n) is None), None)
        if name is None:
            raise ConfigError(
                "`run_log:` has no warehouse to write into: no source is a DuckDB file, "
                "Postgres, Redshift or Snowflake",
                hint="set `run_log.warehouse` to a DuckDB file, Postgres, Redshift or Snowflake "
                "source",
                file=PROJECT_FILE,
                line=lines.get(("run_log",)),
            )
        return name
    line = lines.get(("run_log", "warehouse"))
    if config.warehouse not in declared:
        raise ConfigError(
            f"`run_log.warehouse` names source `{config.warehouse}`, which is not declared",
            hint=declared_hint(config.warehouse, declared),
            file=PROJECT_FILE,
            line=line,
        )
    why = writable(project, config.warehouse)
    if why is not None:
        raise ConfigError(
            f"`run_log.warehouse`: source `{config.warehouse}` cannot take the run log: {why}",
            hint="name a DuckDB file, Postgres, Redshift or Snowflake source",
            file=PROJECT_FILE,
            line=line,
        )
    return config.warehouse
