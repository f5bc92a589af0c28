"""Batches packed by the caller (the sync's columnar path) behave exactly like the client's own.

The sync cuts request bodies straight from Arrow buffers; these tests hold that path to the
same outcomes as :meth:`CustomerIOClient.deliver`: the same request bodies, and per-record
results with the API's reasons whenever a batch is not accepted whole.
"""

from __future__ import annotations

import asyncio
import random

import numpy as np
import orjson
from hypothesis import given
from hypothesis import strategies as st

from lockgate.destinations import Outcome, Record, Result
from lockgate.destinations.customerio import CustomerIOClient, CustomerIOSettings
from lockgate.destinations.customerio.batching import (
    Batch,
    PackedBatch,
    Packer,
    body_of,
    pack_ranges,
)
from lockgate.emulator import Emulator


@given(
    st.lists(st.integers(min_value=2, max_value=4000), min_size=0, max_size=300),
    st.integers(min_value=8_000, max_value=40_000),
    st.one_of(st.none(), st.integers(min_value=1, max_value=50)),
)
def test_range_packing_cuts_the_same_batches_as_the_record_packer(
    sizes: list[int], max_bytes: int, max_ops: int | None
) -> None:
    ops = [b'"' + b"x" * (n - 2) + b'"' for n in sizes]
    records = [Record(str(i), op) for i, op in enumerate(ops)]
    packer = Packer(max_bytes=max_bytes, max_ops=max_ops, max_op_bytes=4000)
    batches, oversize = packer.feed(records)
    last = packer.flush()
    batches += [last] if last is not None else []
    assert not oversize
    bounds = pack_ranges(np.array(sizes, dtype=np.int64), max_bytes=max_bytes, max_ops=max_ops)
    joined = b"".join(op + b"," for op in ops)
    offsets = np.concatenate([[0], np.cumsum([n + 1 for n in sizes])]).astype(int)
    bodies = [
        body_of(joined[offsets[s] : offsets[e] - 1])
        for s, e in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    assert bodies == [b.body() for b in batches]


def identify(i: int, identifiers: dict[str, str] | None = None) -> bytes:
    op = {
        "type": "person",
        "action": "identify",
        "identifiers": identifiers or {"id": f"u{i}"},
        "attributes": {"plan": "pro", "seats": i},
    }
    return orjson.dumps(op)


def packed(keys: list[str], ops: list[bytes]) -> PackedBatch:
    return PackedBatch(body_of(b",".join(ops)), len(ops), lambda: Batch(keys, ops), tag=keys)


def deliver(client: CustomerIOClient, batches: list[PackedBatch]) -> list[object]:
    async def run() -> list[object]:
        async def jobs():  # type: ignore[no-untyped-def]
            for b in batches:
                yield b

        out = [item async for item in client.deliver_packed(jobs())]
        await client.aclose()
        return out

    return asyncio.run(run())


def client_for(emu: Emulator, **overrides: object) -> CustomerIOClient:
    site_id, api_key = emu.track_auth
    settings = CustomerIOSettings(
        site_id=site_id,
        api_key=api_key,
        track_url="http://emulator",
        backoff_base=0.01,
        **overrides,  # type: ignore[arg-type]
    )
    return CustomerIOClient(settings, transport=emu.async_transport())


def test_a_batch_accepted_whole_needs_no_per_record_results() -> None:
    emu = Emulator()
    keys = [f"u{i}" for i in range(50)]
    out = deliver(client_for(emu), [packed(keys, [identify(i) for i in range(50)])])
    assert len(out) == 1
    batch, status, results = out[0]  # type: ignore[misc]
    assert (status, results, batch.tag) == (200, None, keys)
    assert len(emu.people()) == 50


def test_one_bad_operation_gets_the_apis_reason_and_the_rest_arrive() -> None:
    emu = Emulator()
    keys = [f"u{i}" for i in range(10)]
    ops = [identify(i) for i in range(10)]
    ops[3] = identify(3, {"cio_id": "cio_abc"})  # Customer.io refuses the `cio_` prefix
    out = deliver(client_for(emu), [packed(keys, ops)])
    _, status, results = out[0]  # type: ignore[misc]
    assert status == 207 and results is not None
    by_key: dict[str, Result] = {r.key: r for r in results}
    assert set(by_key) == set(keys)
    assert by_key["u3"].outcome is Outcome.REJECTED
    assert "cio_id must not carry the `cio_` prefix" in (by_key["u3"].reason or "")
    assert all(by_key[k].outcome is Outcome.DELIVERED for k in keys if k != "u3")
    assert sorted(p.id for p in emu.people()) == sorted(k for k in keys if k != "u3")


def test_server_errors_are_retried_and_every_record_arrives_once() -> None:
    from lockgate.emulator import EmulatorConfig, FaultConfig

    emu = Emulator(EmulatorConfig(faults=FaultConfig(error_5xx=0.4, seed=7)))
    rng = random.Random(3)
    batches, n = [], 0
    for _ in range(20):
        size = rng.randint(1, 30)
        keys = [f"u{n + j}" for j in range(size)]
        batches.append(packed(keys, [identify(n + j) for j in range(size)]))
        n += size
    client = client_for(emu, max_retries=20)
    out = deliver(client, batches)
    assert client.stats.retries > 0  # faults were injected and retried
    for _, status, results in out:  # type: ignore[misc]
        assert results is None and status == 200
    delivered = sum(b.size for b, _, _ in out)  # type: ignore[misc]
    assert delivered == n
    assert len(emu.people()) == n


@given(
    st.lists(
        st.one_of(st.none(), st.integers(min_value=2, max_value=40_000)), min_size=0, max_size=60
    ),
    st.sampled_from(["string", "large_string", "string_view"]),
    st.integers(min_value=0, max_value=3),
)
def test_rows_packed_from_arrow_columns_cut_the_record_packers_bodies(
    sizes: list[int | None], kind: str, skip: int
) -> None:
    """The sync's rows as Arrow columns (any string layout, a slice of a larger batch): the
    same request bodies as the record packer, and each missing or oversize operation refused
    with its reason, never sent."""
    import pyarrow as pa

    from lockgate.destinations.customerio.batching import oversize_reason
    from lockgate.destinations.customerio.settings import MAX_OP_BYTES
    from lockgate.sync.deliver import NO_PAYLOAD, _packed_from

    sizes = [2] * skip + sizes
    ops = [None if n is None else '"' + "x" * (n - 2) + '",' for n in sizes]
    keys = [f"u{i}" for i in range(len(ops))]
    column = pa.array(ops, getattr(pa, kind)())
    batch = pa.RecordBatch.from_arrays(
        [
            pa.array(keys),
            pa.array(range(len(ops)), pa.uint64()),
            pa.array(["{}"] * len(ops)),
            pa.array([False] * len(ops)),
            pa.array(["identify"] * len(ops)),
            column,
        ],
        names=["k", "h", "ident", "removed", "action", "op"],
    ).slice(skip)
    reader = pa.RecordBatchReader.from_batches(batch.schema, [batch])
    out = list(_packed_from(reader, "people", max_bytes=100_000, max_ops=None))
    refused = [(r.key, r.reason) for item in out if isinstance(item, list) for r in item]
    bodies = [item.body for item in out if isinstance(item, PackedBatch)]

    packer = Packer(max_bytes=100_000, max_ops=None, max_op_bytes=MAX_OP_BYTES)
    kept = [
        Record(k, op[:-1].encode())
        for k, op, n in zip(keys[skip:], ops[skip:], sizes[skip:], strict=True)
        if op is not None and n is not None and n <= MAX_OP_BYTES
    ]
    expected, _ = packer.feed(kept)
    last = packer.flush()
    expected += [last] if last is not None else []
    assert bodies == [b.body() for b in expected]
    assert refused == [
        (k, NO_PAYLOAD if n is None else oversize_reason(n))
        for k, n in zip(keys[skip:], sizes[skip:], strict=True)
        if n is None or n > MAX_OP_BYTES
    ]
