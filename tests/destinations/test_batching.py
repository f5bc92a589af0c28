"""Encoding and packing of Track v2 batch bodies (pure functions, no network)."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lockgate.destinations.base import Record
from lockgate.destinations.customerio.batching import (
    Batch,
    Packer,
    body_size,
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


def one_batch(records: list[Record]) -> Batch:
    batches, oversize = pack(records, max_bytes=499_000)
    assert len(batches) == 1 and not oversize
    return batches[0]


def test_dict_and_bytes_ops_encode_to_the_same_compact_json() -> None:
    record = identify(42, plan="pro", name="Zoë")
    from_dict = one_batch([record])
    from_bytes = one_batch([Record("42", orjson.dumps(record.op))])
    assert from_dict.body() == from_bytes.body()
    assert orjson.loads(from_dict.body()) == {"batch": [record.op]}
    assert b" " not in from_dict.body()  # compact: every byte counts against the limits


def test_a_body_is_valid_json_holding_every_op_in_order() -> None:
    records = [identify(i, n=i) for i in range(5)]
    batch = one_batch(records)
    assert batch.keys == ["0", "1", "2", "3", "4"]
    assert orjson.loads(batch.body()) == {"batch": [r.op for r in records]}
    assert len(batch.body()) == body_size(5, sum(len(op) for op in batch.ops))


def test_packing_never_exceeds_the_byte_budget_and_keeps_order() -> None:
    records = [identify(i, blob="x" * (i * 37 % 3000)) for i in range(2000)]
    batches, _ = pack(records, max_bytes=60_000)
    assert len(batches) > 1
    assert [k for b in batches for k in b.keys] == [r.key for r in records]
    for b in batches:
        assert len(b.body()) <= 60_000
    # Batches are full: the next operation would not have fitted.
    for b, nxt in zip(batches, batches[1:], strict=False):
        assert len(Batch([*b.keys, nxt.keys[0]], [*b.ops, nxt.ops[0]]).body()) > 60_000


def test_feeding_in_pieces_packs_the_same_as_all_at_once() -> None:
    records = [identify(i, blob="q" * (i % 700)) for i in range(3000)]
    whole, _ = pack(records, max_bytes=50_000)
    packer = Packer(max_bytes=50_000)
    pieces: list[Batch] = []
    for start in range(0, len(records), 333):
        full, _ = packer.feed(records[start : start + 333])
        pieces += full
    last = packer.flush()
    assert last is not None and packer.flush() is None
    assert [b.body() for b in [*pieces, last]] == [b.body() for b in whole]


def test_default_budget_stays_under_customerio_500kb_request_limit() -> None:
    settings = CustomerIOSettings(site_id="s", api_key="k")
    records = [identify(i, blob="y" * 900) for i in range(3000)]
    batches, _ = pack(records, max_bytes=settings.max_batch_bytes)
    assert all(len(b.body()) < 500_000 for b in batches)


def test_max_ops_caps_the_operations_per_batch() -> None:
    batches, _ = pack([identify(i) for i in range(25)], max_bytes=499_000, max_ops=10)
    assert [len(b) for b in batches] == [10, 10, 5]


def sized(key: str, size: int) -> Record:
    op = {"type": "person", "action": "identify", "identifiers": {"id": key}, "attributes": {}}
    pad = size - len(orjson.dumps(op)) - len(b'"p":""')
    op["attributes"] = {"p": "z" * pad}
    record = Record(key, op)
    assert len(orjson.dumps(op)) == size
    return record


def test_ops_over_32kb_are_set_aside_with_their_size_and_the_rest_packed() -> None:
    records = [sized("at-limit", MAX_OP_BYTES), sized("over", MAX_OP_BYTES + 1), identify(7)]
    batches, oversize = pack(records, max_bytes=499_000)
    assert oversize == [("over", MAX_OP_BYTES + 1)]
    assert [k for b in batches for k in b.keys] == ["at-limit", "7"]


def test_oversize_reason_names_the_size_and_the_limit() -> None:
    reason = oversize_reason(40_123)
    assert "40,123 bytes" in reason and "32,768" in reason and "not sent" in reason


def test_halves_and_without_cover_the_batch_exactly_once() -> None:
    batch = Batch([str(i) for i in range(7)], [b"{}"] * 7)
    left, right = batch.halves()
    assert left.keys + right.keys == batch.keys and len(left) == 3
    assert batch.without([0, 3]).keys == ["1", "2", "4", "5", "6"]


@given(st.lists(st.integers(min_value=2, max_value=5000), min_size=0, max_size=300))
def test_packing_is_a_partition_within_budget(sizes: list[int]) -> None:
    records = [Record(str(i), b'"' + b"x" * (n - 2) + b'"') for i, n in enumerate(sizes)]
    batches, oversize = pack(records, max_bytes=40_000)
    assert not oversize
    assert [k for b in batches for k in b.keys] == [r.key for r in records]
    assert all(len(b.body()) <= 40_000 for b in batches)


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
