"""Encoding and packing of Track v2 batch bodies (pure functions, no network)."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lockgate.destinations.base import Record
from lockgate.destinations.customerio.batching import (
    ENVELOPE_BYTES,
    Item,
    batch_body,
    body_size,
    encode,
    halves,
    oversize_reason,
    pack,
)
from lockgate.destinations.customerio.settings import MAX_OP_BYTES, CustomerIOSettings
from lockgate.errors import ConfigError


def identify(i: int, **attributes: object) -> Record:
    op = {
        "type": "person",
        "action": "identify",
        "identifiers": {"id": str(i)},
        "attributes": attributes,
    }
    return Record(str(i), op)


def test_dict_and_bytes_ops_encode_to_the_same_compact_json() -> None:
    record = identify(42, plan="pro", name="Zoë")
    from_dict = encode(record)
    from_bytes = encode(Record("42", orjson.dumps(record.op)))
    assert from_dict.data == from_bytes.data
    assert orjson.loads(from_dict.data) == record.op
    assert b" " not in from_dict.data  # compact: every byte counts against the limits


def test_a_body_is_valid_json_holding_every_op_in_order() -> None:
    items = [encode(identify(i, n=i)) for i in range(5)]
    body = batch_body(items)
    assert orjson.loads(body) == {"batch": [orjson.loads(it.data) for it in items]}
    assert len(body) == body_size(len(items), sum(it.size for it in items))


def test_packing_never_exceeds_the_byte_budget_and_keeps_order() -> None:
    items = [encode(identify(i, blob="x" * (i * 37 % 3000))) for i in range(2000)]
    batches = list(pack(items, max_bytes=60_000))
    assert len(batches) > 1
    assert [it.key for b in batches for it in b] == [it.key for it in items]
    for b in batches:
        assert len(batch_body(b)) <= 60_000
    # Batches are full: the next item would not have fitted.
    for b, nxt in zip(batches, batches[1:], strict=False):
        assert len(batch_body([*b, nxt[0]])) > 60_000


def test_default_budget_stays_under_customerio_500kb_request_limit() -> None:
    settings = CustomerIOSettings(site_id="s", api_key="k")
    items = [encode(identify(i, blob="y" * 900)) for i in range(3000)]
    for b in pack(items, max_bytes=settings.max_batch_bytes):
        assert len(batch_body(b)) < 500_000


def test_max_ops_caps_the_operations_per_batch() -> None:
    items = [encode(identify(i)) for i in range(25)]
    assert [len(b) for b in pack(items, max_bytes=499_000, max_ops=10)] == [10, 10, 5]


def test_an_op_exactly_at_the_32kb_limit_fits_a_batch_alone() -> None:
    op = {"type": "person", "action": "identify", "identifiers": {"id": "1"}, "attributes": {}}
    pad = MAX_OP_BYTES - len(orjson.dumps(op)) - len(b'"p":""')
    op["attributes"] = {"p": "z" * pad}
    item = encode(Record("1", op))
    assert item.size == MAX_OP_BYTES
    assert body_size(1, item.size) == MAX_OP_BYTES + ENVELOPE_BYTES


def test_oversize_reason_names_the_size_and_the_limit() -> None:
    reason = oversize_reason(40_123)
    assert "40,123 bytes" in reason and "32,768" in reason and "not sent" in reason


def test_halves_cover_the_batch_exactly_once() -> None:
    items = [Item(str(i), b"{}") for i in range(7)]
    left, right = halves(items)
    assert left + right == items and len(left) == 3


@given(st.lists(st.integers(min_value=2, max_value=5000), min_size=0, max_size=300))
def test_packing_is_a_partition_within_budget(sizes: list[int]) -> None:
    items = [Item(str(i), b"x" * n) for i, n in enumerate(sizes)]
    batches = list(pack(items, max_bytes=20_000))
    assert [it for b in batches for it in b] == items
    assert all(len(batch_body(b)) <= 20_000 for b in batches)


def test_settings_refuse_a_batch_budget_over_the_api_limit() -> None:
    with pytest.raises(ConfigError, match="max_batch_bytes"):
        CustomerIOSettings(site_id="s", api_key="k", max_batch_bytes=600_000)


def test_settings_keep_secrets_out_of_repr() -> None:
    settings = CustomerIOSettings(site_id="site", api_key="sekrit-1", app_api_key="sekrit-2")
    assert "sekrit" not in repr(settings)


def test_settings_from_env_read_region_hosts_and_overrides() -> None:
    env = {
        "CUSTOMERIO_SITE_ID": "site",
        "CUSTOMERIO_API_KEY": "key",
        "CUSTOMERIO_APP_API_KEY": "app",
        "CUSTOMERIO_REGION": "EU",
    }
    s = CustomerIOSettings.from_env(environ=env)
    assert (s.site_id, s.api_key, s.app_api_key, s.region) == ("site", "key", "app", "eu")
    assert s.track_base == "https://track-eu.customer.io"
    assert s.app_base == "https://api-eu.customer.io"
    local = CustomerIOSettings.from_env(
        environ={**env, "CUSTOMERIO_TRACK_URL": "http://127.0.0.1:8765/"}
    )
    assert local.track_base == "http://127.0.0.1:8765"
    assert CustomerIOSettings.from_env(environ={}).track_base == "https://track.customer.io"


def test_settings_reject_an_unknown_region_with_a_hint() -> None:
    with pytest.raises(ConfigError) as info:
        CustomerIOSettings.from_env(environ={"CUSTOMERIO_REGION": "apac"})
    assert "`apac`" in str(info.value) and "CUSTOMERIO_REGION" in str(info.value)
