"""Customer.io's official OpenAPI files as JSON Schema validators, with documented workarounds.

The files are read from ``$LOCKGATE_CUSTOMERIO_SPECS_DIR`` (default
``../shared/reference/specs`` beside the checkout); the tests that need them skip when they
are missing. The specs are OpenAPI 3.1 (JSON Schema 2020-12); ``#/components/...`` refs
resolve through a ``referencing`` Registry. Their small bugs are worked around here, each
one listed in ``SPEC_WORKAROUNDS`` and in docs/emulator.md ("Spec bugs worked around").
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

#: Where Customer.io's OpenAPI files are (copies are not vendored into the repository).
# shared/ sits beside the project's checkout (locally and in CI)
SPECS = Path(
    os.environ.get(
        "LOCKGATE_CUSTOMERIO_SPECS_DIR",
        Path(__file__).resolve().parents[3] / "shared" / "reference" / "specs",
    )
)


def available() -> bool:
    return (SPECS / "journeys-track.json").exists() and (SPECS / "pipelines.json").exists()


SPEC_WORKAROUNDS = {
    "oneOf-overlap": "Several `oneOf` lists have overlapping branches (a v1 `page` event with "
    "`anonymous_id` matches both the page and the screen variants; v2 `object_identify` variants), "
    "so valid payloads fail `oneOf`. Every `oneOf` is read as `anyOf`.",
    "integrations-null": "The Pipelines `track` example sends `integrations: null`, which its "
    "own `integrations` schema (an object) rejects; `integrations` also accepts null.",
    "group-trailing-commas": "The Pipelines `group` example has stray commas inside string values "
    '(`"timestamp": "2015-02-23T22:28:55.111Z,"`, `"channel": "browser,"`); they are stripped.',
    "type-required": "Pipelines calls list `type` as required although its description says the "
    "endpoint sets it; a body sent to `/v1/<call>` without `type` is validated with that type.",
    "screen-anonymous_id": "The identified-event `Mobile screen view` variant lists `anonymous_id` "
    "as required (documentation error noted in the reference); the example without it is "
    "validated with that requirement dropped.",
}


def _drop_screen_anonymous_required(node: Any) -> None:
    if isinstance(node, dict):
        if node.get("title") == "Mobile screen view" and "anonymous_id" in node.get("required", []):
            node["required"] = [r for r in node["required"] if r != "anonymous_id"]
        for v in node.values():
            _drop_screen_anonymous_required(v)
    elif isinstance(node, list):
        for v in node:
            _drop_screen_anonymous_required(v)


@cache
def load(name: str) -> tuple[dict[str, Any], Registry]:
    text = (SPECS / name).read_text()
    doc = json.loads(text.replace('"oneOf"', '"anyOf"'))  # workaround: oneOf-overlap
    if name == "journeys-track.json":
        events = doc["paths"]["/api/v1/customers/{identifier}/events"]["post"]
        _drop_screen_anonymous_required(events)  # workaround: screen-anonymous_id
        _drop_screen_anonymous_required(doc["components"])
    if name == "pipelines.json":
        doc["components"]["schemas"]["integrations"]["type"] = ["object", "null"]
    registry = Registry().with_resource(
        f"urn:{name}", Resource.from_contents(doc, default_specification=DRAFT202012)
    )
    return doc, registry


def _pointer(path: str, method: str) -> str:
    escaped = path.replace("~", "~0").replace("/", "~1")
    return f"#/paths/{escaped}/{method}/requestBody/content/application~1json/schema"


@cache
def validator(name: str, path: str, method: str) -> Draft202012Validator:
    _, registry = load(name)
    return Draft202012Validator({"$ref": f"urn:{name}{_pointer(path, method)}"}, registry=registry)


def errors(name: str, path: str, method: str, body: Any) -> list[str]:
    return [e.message[:200] for e in validator(name, path, method).iter_errors(body)]


def _walk(node: Any, doc: dict[str, Any], seen: frozenset[str], out: list[Any]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/") and ref not in seen:
            target: Any = doc
            for part in ref[2:].split("/"):
                target = target[part]
            _walk(target, doc, seen | {ref}, out)
        if "example" in node:
            out.append(node["example"])
        for key, value in node.items():
            if key not in ("example", "examples"):
                _walk(value, doc, seen, out)
    elif isinstance(node, list):
        for value in node:
            _walk(value, doc, seen, out)


REQUEST_KEYS = {
    "/api/v1/customers/{identifier}": None,  # any object example of the request schema
    "/api/v1/customers/{identifier}/events": {"name"},
    "/api/v1/events": {"name"},
    "/api/v1/merge_customers": {"primary"},
    "/api/v1/segments/{segment_id}/add_customers": {"ids"},
    "/api/v1/segments/{segment_id}/remove_customers": {"ids"},
    "/api/v2/entity": {"type", "action"},
    "/api/v2/batch": {"batch"},
    "/identify": {"userId", "anonymousId", "traits"},
    "/track": {"event"},
    "/page": {"userId", "anonymousId"},
    "/screen": {"userId", "anonymousId"},
    "/group": {"groupId"},
    "/alias": {"previousId"},
    "/batch": {"batch"},
}


def request_examples(name: str) -> list[tuple[str, str, dict[str, Any]]]:
    """Examples in the spec that are whole request bodies: ``(path, method, body)``."""
    doc, _ = load(name)
    found: list[tuple[str, str, dict[str, Any]]] = []
    for path, methods in doc["paths"].items():
        if path not in REQUEST_KEYS:
            continue
        for method, op in methods.items():
            if not isinstance(op, dict):
                continue
            media = op.get("requestBody", {}).get("content", {}).get("application/json")
            if not media:
                continue
            examples: list[Any] = [media["example"]] if "example" in media else []
            _walk(media["schema"], doc, frozenset(), examples)
            keys = REQUEST_KEYS[path]
            seen: list[Any] = []
            for ex in examples:
                if not isinstance(ex, dict) or ex in seen:
                    continue
                if keys is None:
                    if not errors(name, path, method, ex) and "action" not in ex:
                        seen.append(ex)
                elif keys & set(ex) and (path != "/track" or "anonymousId" in ex or "userId" in ex):
                    seen.append(ex)
            found += [
                (path, method, _strip_commas(ex) if name == "pipelines.json" else ex) for ex in seen
            ]
    return found


def _strip_commas(node: Any) -> Any:
    """Workaround group-trailing-commas."""
    if isinstance(node, dict):
        return {k: _strip_commas(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_strip_commas(v) for v in node]
    return node.rstrip(",") if isinstance(node, str) else node
