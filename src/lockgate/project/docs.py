"""Render the configuration reference (`docs/config.md`) from the models' field docstrings.

`tests/project/test_docs.py` fails when a field has no docstring or when the checked-in
page differs from what this renders (regenerate with
`python -m lockgate.project.docs > docs/config.md`).
"""

from __future__ import annotations

import typing

from pydantic import BaseModel

from lockgate.project import models
from lockgate.project.fielddocs import field_doc, required_in_files

SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("`lockgate.yml`", models.ProjectConfig),
    ("`sources.<name>` with `type: duckdb`", models.DuckDBSourceConfig),
    ("`sources.<name>` with `type: postgres`", models.PostgresSourceConfig),
    ("`sources.<name>` with `type: snowflake`", models.SnowflakeSourceConfig),
    ("`sources.<name>` with `type: bigquery`", models.BigQuerySourceConfig),
    ("`destinations.<name>` with `type: customerio`", models.CustomerIODestinationConfig),
    ("`defaults`", models.DefaultsConfig),
    ("`webhooks`", models.WebhooksConfig),
    ("an entry of `alerts`", models.AlertConfig),
    ("`run_log`", models.RunLogConfig),
    ("`syncs/<name>.yml`", models.SyncConfig),
    ("`model:` in a sync", models.ModelRef),
    ("an attribute or property (`attributes.<name>`, `properties.<name>`)", models.FieldConfig),
    ("`event:` in an events sync", models.EventConfig),
    ("`event.name`", models.EventNameConfig),
    ("`event.id`", models.EventIdConfig),
    ("`backfill:` in an events sync", models.BackfillConfig),
    ("`guardrails:` in a sync or in `defaults`", models.GuardrailsConfig),
    ("an entry of `on_change` in a people or objects sync", models.OnChangeConfig),
]


def _type_name(annotation: object) -> str:
    text = str(annotation).replace("typing.", "").replace("lockgate.project.models.", "")
    text = text.replace("<class '", "").replace("'>", "")
    return text.replace("|", "\\|")


def undocumented() -> list[str]:
    """`Model.field` for every field without a docstring."""
    return [
        f"{model.__name__}.{name}"
        for _, model in SECTIONS
        for name in model.model_fields
        if not field_doc(model, name)
    ]


def render() -> str:
    lines = [
        "# Configuration reference",
        "",
        "Generated from the models in `src/lockgate/project/models.py` "
        "(`python -m lockgate.project.docs > docs/config.md`). Unknown keys are errors, and so "
        "are keys the sync's `kind` does not use (`mode` or `primary_key` in an `events` sync, "
        "`backfill` or `event` outside one), named before anything wrong inside them. "
        "Secrets are accepted only as `${ENV_VAR}` references; a message about a secret's "
        "variable not set names it only when it is written in upper case (letters, digits, "
        "`_`, as environment variables are), else the key and line it is in: "
        "`api_key: ${sk_live_abc123}` is the key itself wrapped in `${...}`, and is never "
        "printed. Variables are read when a command needs them (connecting to a source, "
        "sending to Customer.io, posting an alert; a sync reads its destination's before its "
        "model); one not set or empty is an error naming "
        "the block and the line of the key, never a value: `lockgate.yml:13: source `snow`: "
        "environment variable `SNOWFLAKE_PRIVATE_KEY` (for `private_key`) is not set` (an "
        "option left to its default, such as a destination's `api_key`, is named at its "
        "block's line; the default destination, when lockgate.yml has no `destinations:`, by "
        "the file alone). An empty value or name (`state: ''`, a DuckDB `path: ''`, a source "
        "named `''`, an empty item of a list) is an error at its line, white space alone too: "
        "leave the key out for its default. Only a constant (`value`, `default`, `on_change` "
        "`from` and `to`) may be empty text. "
        "YAML anchors and merge keys "
        "work (`plan: &text {column: plan, type: string}` then "
        "`tier: {<<: *text, column: tier}`); an error in a merged value names the line where "
        "the anchored mapping writes it.",
        "",
    ]
    for title, model in SECTIONS:
        # the docstring's first paragraph, which may run over several lines
        doc = " ".join((model.__doc__ or "").strip().split("\n\n")[0].split())
        lines += [
            f"## {title}",
            "",
            doc,
            "",
            "| key | type | default | meaning |",
            "|---|---|---|---|",
        ]
        hints = typing.get_type_hints(model)
        for name, field in model.model_fields.items():
            key = field.alias or name
            default = (
                "required"
                if field.is_required() or required_in_files(model, name)
                else ("(computed)" if field.default_factory else f"`{field.default!r}`")
            )
            description = " ".join((field_doc(model, name) or "").split())
            lines.append(
                f"| `{key}` | {_type_name(hints.get(name, field.annotation))} | {default} | "
                f"{description} |"
            )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(), end="")
