"""The identity docs stay true: every config field documented, the reference page current."""

from __future__ import annotations

from pathlib import Path

import yaml

from lockgate.identity import __all__ as exported
from lockgate.project.fielddocs import field_doc
from lockgate.project.identity import MODELS, IdentityConfig, reference

DOC = Path(__file__).parents[2] / "docs" / "identity.md"


def test_every_identity_config_field_has_a_docstring() -> None:
    missing = [
        f"{m.__name__}.{name}" for m in MODELS for name in m.model_fields if not field_doc(m, name)
    ]
    assert missing == []


def test_the_reference_in_docs_is_generated_from_the_models() -> None:
    text = DOC.read_text()
    start = text.index("<!-- reference:start -->\n") + len("<!-- reference:start -->\n")
    end = text.index("<!-- reference:end -->")
    assert text[start:end].strip() == reference().strip(), (
        "regenerate the reference section of docs/identity.md from "
        "lockgate.project.identity.reference()"
    )


def test_the_documented_example_config_is_valid() -> None:
    text = DOC.read_text()
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    config = IdentityConfig.model_validate(yaml.safe_load(block)["identity"])
    assert config.type_order[0] == "user_id"


def test_the_public_api_is_documented() -> None:
    text = DOC.read_text()
    for name in ("resolve", "Resolver", "plan_customerio", "explain", "plan", "tombstone"):
        assert name in exported and f"{name}(" in text or f"`{name}" in text
