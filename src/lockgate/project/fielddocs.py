"""The config models' field docstrings, read only when documentation needs them.

Each field of the config models (`models.py`, `identity.py`) is documented by the string under
it. Pydantic's ``use_attribute_docstrings`` would read those while it builds every class: it
parses each model's source at import, about a tenth of a second of every `lockgate` command's
start-up. Only the JSON Schemas (`lockgate validate --schema`, `lockgate init`) and the
generated references (`docs/config.md`, the identity reference) show them, so they are read
here, when asked for.

Example::

    field_doc(SyncConfig, "mode")            # the docstring under `mode:` in SyncConfig
    json_schema(SyncConfig, by_alias=True)   # `model_json_schema` with those as descriptions
"""

from __future__ import annotations

import ast
import functools
import inspect
import sys
import typing
from typing import Any

from pydantic import AliasChoices, BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema


@functools.cache
def _module_docs(module: str) -> dict[str, dict[str, str]]:
    """Class qualname → field name → docstring, for every class of ``module``."""
    docs: dict[str, dict[str, str]] = {}

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if not isinstance(node, ast.ClassDef):
                continue
            name = f"{prefix}{node.name}"
            fields = docs.setdefault(name, {})
            for item, after in zip(node.body, node.body[1:], strict=False):
                if (
                    isinstance(item, ast.AnnAssign)
                    and isinstance(item.target, ast.Name)
                    and isinstance(after, ast.Expr)
                    and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)
                ):
                    fields[item.target.id] = inspect.cleandoc(after.value.value)
            visit(node.body, f"{name}.")

    visit(ast.parse(inspect.getsource(sys.modules[module])).body, "")
    return docs


def field_doc(model: type[BaseModel], name: str) -> str | None:
    """The description of ``model``'s field ``name``: its ``Field(description=...)``, else the
    docstring under it in the class (or the base class) that declares it."""
    field = model.model_fields[name]
    if field.description:
        return field.description
    for cls in model.__mro__:
        if name in cls.__dict__.get("__annotations__", {}):
            return _module_docs(cls.__module__).get(cls.__qualname__, {}).get(name)
    return None


def required_in_files(model: type[BaseModel], name: str) -> bool:
    """Whether a file must write the key ``name`` although its field has a default: the `type`
    that picks a source's or destination's model (a union told apart by `type`: a mapping
    without it is refused, as pydantic cannot tell which model it is). The default is for the
    models built in code (the Customer.io destination a project without `destinations:`
    gets)."""
    annotation = model.model_fields[name].annotation
    return (
        name == "type"
        and typing.get_origin(annotation) is typing.Literal
        and len(typing.get_args(annotation)) == 1  # a tag, not a choice (an attribute's `type`)
    )


class _DocumentedSchema(GenerateJsonSchema):
    """Pydantic's JSON Schema, each model property described by its field's docstring."""

    def model_schema(self, schema: core_schema.ModelSchema) -> JsonSchemaValue:
        value = super().model_schema(schema)
        model = schema["cls"]
        properties = value.get("properties", {})
        for name, field in model.model_fields.items():
            key = field.alias if self.by_alias and field.alias else name
            doc = field_doc(model, name)
            if doc and key in properties and "description" not in properties[key]:
                properties[key] = _described(properties[key], doc)
            if required_in_files(model, name) and key in properties:
                # as `lockgate validate` says: a source or destination names its `type`
                value["required"] = [key, *(k for k in value.get("required", ()) if k != key)]
            choices = field.validation_alias
            if isinstance(choices, AliasChoices) and key in properties:
                # a synonym validate takes (`query:` for `sql:`) is a key editors take too
                for other in choices.choices:
                    if isinstance(other, str) and other not in properties:
                        properties[other] = properties[key]
        return value


def _described(prop: dict[str, Any], doc: str) -> dict[str, Any]:
    """``prop`` with ``description`` where pydantic puts it: just before ``title``."""
    if "title" not in prop:
        return {**prop, "description": doc}
    out: dict[str, Any] = {}
    for key, value in prop.items():
        if key == "title":
            out["description"] = doc
        out[key] = value
    return out


def json_schema(model: type[BaseModel], *, by_alias: bool = True) -> dict[str, Any]:
    """``model.model_json_schema(by_alias=...)`` with field docstrings as descriptions."""
    return model.model_json_schema(by_alias=by_alias, schema_generator=_DocumentedSchema)
