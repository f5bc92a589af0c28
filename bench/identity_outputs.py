"""A digest of every table the identity graph gives, to check a change gives the same outputs.

Runs ``resolve`` three times on the synthetic corpus (``lockgate.identity.synthetic``): a first
stitch, a re-stitch of the same sources from its state, and a re-stitch after rows changed,
went away and came in (a re-assigned email, a removed Stripe customer, new sessions), and
prints one SHA-256 per analyst table, state table and run (rows sorted, so only the content
counts, not the order). Compare the output of two versions' sources::

    PYTHONPATH=/tmp/before/src python bench/identity_outputs.py > before.txt
    PYTHONPATH=src python bench/identity_outputs.py > after.txt && diff before.txt after.txt
"""

from __future__ import annotations

import argparse
import hashlib

import pyarrow as pa
import pyarrow.compute as pc

from lockgate.identity import resolve
from lockgate.identity.synthetic import synthetic_config, synthetic_sources


def digest(table: pa.Table) -> str:
    rows = sorted(repr(row) for row in zip(*(c.to_pylist() for c in table.columns), strict=True))
    h = hashlib.sha256(repr(table.schema).encode())
    for row in rows:
        h.update(row.encode())
    return f"{table.num_rows:>8} {h.hexdigest()[:16]}"


def changed(sources: dict[str, pa.Table]) -> dict[str, pa.Table]:
    out = dict(sources)
    users = sources["app_users"]
    emails = users["email"].to_pylist()
    emails[0], emails[1] = emails[1], emails[0] + ".moved"
    out["app_users"] = users.set_column(
        users.schema.get_field_index("email"), "email", pa.array(emails, pa.string())
    )
    # a lead's email on a user: the lead's profile merges into the user's
    users = out["app_users"]
    lead = pa.table(
        {
            "user_id": users["user_id"].slice(5, 1),
            "email": ["lead5@news.io"],
            "ts": users["ts"].slice(5, 1),
        },
        schema=users.schema,
    )
    # a person's own row gone while the CRM still has their email: a split
    crm_email = sources["crm_contacts"]["email"][0]
    users = pa.concat_tables([users.filter(pc.not_equal(users["email"], crm_email)), lead])
    out["app_users"] = users
    out["stripe_customers"] = sources["stripe_customers"].slice(1)
    ids = sources["identifies"]
    fresh = pc.binary_join_element_wise(ids["anonymous_id"].slice(0, 100), "new", "-")
    out["identifies"] = ids.slice(0, 100).set_column(0, "anonymous_id", fresh)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--people", type=int, default=30_000)
    args = parser.parse_args()
    config = synthetic_config()
    sources = synthetic_sources(
        args.people, seed=3, shared_device_every=500, shared_email_every=200
    )
    state = None
    for run_id, inputs in (("r1", sources), ("r2", sources), ("r3", changed(sources))):
        result = resolve(config, inputs, run_id=run_id, state=state)
        for name, table in sorted(result.tables().items()):
            print(run_id, f"{name:<22}", digest(table))
        for name in ("held", "lost", "contested", "previous_profiles"):
            print(run_id, f"{name:<22}", digest(getattr(result, name)))
        state = result.state


if __name__ == "__main__":
    main()
