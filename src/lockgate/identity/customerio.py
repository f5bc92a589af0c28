"""Identity changes → Customer.io Track v2 operations (identity.md §3.5). Pure: no I/O.

Rules:

* merge two people only when both are confirmed to exist in Customer.io (`exists`); the
  primary is the surviving profile's person (the one with an `id`, by priority);
* each merge gets an idempotency key derived from the two people and the change it answers
  (the profile absorbed; see :func:`_occurrence`), so a retried run sends it once and the
  same two people merged again later are merged again; the resolved identifiers are
  re-applied to the primary afterwards, because Customer.io keeps the primary's values on
  conflict;
* more merges than `merge_policy.max_merges_per_run` raise `ContractError` before any op is
  returned (every merge counts: between profiles, of a profile's several people, of a lead's
  person into the user's); merges whose evidence rank is weaker than `min_path_rank` are held
  for review: not planned, each one in `CioPlan.held_merges` instead (outcome
  `held_for_review`); with `merge_policy.enabled: false` no merge is planned: each one needed
  is in `CioPlan.skipped_merges` instead (outcome `skipped_disabled`);
* splits are never applied: they come back in `CioPlan.review`, and the profiles of a split
  waiting for review (`IdentityResult.held`) get no operation in later runs either;
* a union refused by a limit leaves the email (or id) with one person; the other person gets
  it as the attribute `contested_email` (`contested_id`).

Example::

    plan = plan_customerio(result, config, exists={("id", "u1"), ("email", "l@x.com")})
    plan.ops[0].payload   # {"type": "person", "action": "merge", "primary": {...}, ...}
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from lockgate.errors import ContractError
from lockgate.identity.profiles import contested_values, union_root
from lockgate.identity.state import IdentityResult
from lockgate.project.identity import IdentityConfig

Exists = Callable[[str, str], bool] | Collection[tuple[str, str]]

OUTCOMES_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("profile_id", pa.string()),
        ("absorbed_profile_id", pa.string()),
        ("outcome", pa.string()),
        ("idempotency_key", pa.string()),
    ]
)


@dataclass(frozen=True)
class CioOp:
    """One planned Track v2 operation, its idempotency key and the profile it is for."""

    key: str
    profile_id: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class CioPlan:
    """The Customer.io side of one identity run: ops in send order, merge outcomes, review."""

    ops: tuple[CioOp, ...]
    merge_outcomes: pa.Table
    review: pa.Table
    counts: dict[str, int] = field(default_factory=dict)
    skipped_merges: tuple[CioOp, ...] = ()
    """The merges the run needs that `merge_policy.enabled: false` keeps from being sent (for
    a user to make by hand, or to turn merges on): each as it would have been sent."""
    held_merges: tuple[CioOp, ...] = ()
    """The merges between two profiles' people that `merge_policy.min_path_rank` holds for
    review (their evidence is weaker): each as it would have been sent. Kept back like those
    of `skipped_merges` (the two people stay in Customer.io), and said the same way."""

    @property
    def merges(self) -> list[CioOp]:
        return merges_of(self.ops)


def merges_of(ops: Sequence[CioOp]) -> list[CioOp]:
    """The `merge` operations of ``ops``."""
    return [op for op in ops if op.payload.get("action") == "merge"]


def _key(*parts: object) -> str:
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _occurrence(previous: Mapping[str, Any] | None) -> str | None:
    """Which change of a profile an operation on its person answers, for its key: the run
    that last changed the profile's identifiers before this one (`updated_run` of its row
    in the saved graph).

    The same people can need the same operation again later (a lead's email leaves its
    profile, comes back, leaves again: the same readdressing twice), and a key made of the
    people alone would be found delivered and the second one never sent. A run that is
    killed and run again starts from the same saved graph (it is kept only once the run's
    operations are delivered), so its operations get the same keys, whatever its run id:
    those delivered are not sent twice. A later occurrence starts from a graph saved since
    the profile changed back, whose `updated_run` is that later run."""
    return None if previous is None else previous.get("updated_run")


def _exists_fn(exists: Exists) -> Callable[[str, str], bool]:
    if callable(exists):
        return exists
    known = {(k, str(v)) for k, v in exists}
    return lambda kind, value: (kind, value) in known


def _address(
    row: Mapping[str, Any] | None, exists: Callable[[str, str], bool]
) -> dict[str, str] | None:
    """How to name an existing person: `cio_id`, then `id`, then `email`; `None` if none exists."""
    if row is None:
        return None
    for kind, column in (("cio_id", "cio_id"), ("id", "cio_person_id"), ("email", "cio_email")):
        value = row.get(column)
        if value is not None and exists(kind, str(value)):
            return {kind: str(value)}
    return None


def _holds_another_id(
    secondary: Mapping[str, Any] | None,
    primary: Mapping[str, Any] | None,
    exists: Callable[[str, str], bool],
) -> bool:
    """Whether the person of ``secondary`` (a previous profile row) holds an `id` that the
    person of ``primary`` does not, and is known to exist: a merge would delete it, `id` and
    all (Customer.io keeps the primary's identifiers)."""
    held = None if secondary is None else secondary.get("cio_person_id")
    if held is None or not exists("id", str(held)):
        return False
    return primary is None or primary.get("cio_person_id") != held


def _merge_into(
    row: Mapping[str, Any] | None,
    candidates: Sequence[Mapping[str, Any] | None],
    exists: Callable[[str, str], bool],
) -> Mapping[str, Any] | None:
    """Of the previous rows of a survivor (first) and the profiles it absorbs, the one whose
    person holds the survivor's resolved `id` (else its email); else the survivor's own."""
    if row is not None:
        for column in ("cio_person_id", "cio_email"):
            want = row.get(column)
            for c in candidates:
                if want is not None and c is not None and c.get(column) == want:
                    if _address(c, exists) is not None:
                        return c
    return candidates[0]


def _merge_targets(
    result: IdentityResult,
    exists: Callable[[str, str], bool],
    survivors: Collection[str] | None = None,
) -> tuple[dict[str, list[str]], dict[str, Mapping[str, Any] | None], dict[str, dict[str, Any]]]:
    """The graph's merges by survivor (of ``survivors`` only, when given): the profiles each
    absorbs, the previous row whose person its merges go into, and the previous rows of the
    profiles taking part (only they become Python rows).

    That person is the one already holding the profile's resolved `id` (else its email), so
    that identifying the profile afterwards reaches it (a merge deletes the secondary:
    addressing the id it held would create a new person)."""
    absorbed_by: dict[str, list[str]] = {}
    for survivor, absorbed in zip(
        result.merges["profile_id"].to_pylist(),
        result.merges["absorbed_profile_id"].to_pylist(),
        strict=True,
    ):
        if survivors is None or survivor in survivors:
            absorbed_by.setdefault(survivor, []).append(absorbed)
    prev_rows = _rows_of(result.previous_profiles, set(absorbed_by).union(*absorbed_by.values()))
    rows = _rows_of(result.profiles, absorbed_by)
    into = {
        survivor: _merge_into(
            rows.get(survivor),
            [prev_rows.get(survivor)] + [prev_rows.get(a) for a in absorbed_ids],
            exists,
        )
        for survivor, absorbed_ids in absorbed_by.items()
    }
    return absorbed_by, into, prev_rows


def _ids(values: Collection[str]) -> pa.Array:
    return pa.array(sorted(values), pa.string())


def _rows_of(table: pa.Table, ids: Collection[str]) -> dict[str, dict[str, Any]]:
    """The rows of these profile ids, by profile id: only they become Python dicts (a
    million profiles as dicts are over a GiB)."""
    if not ids:
        return {}
    hit = table.filter(pc.is_in(table["profile_id"], value_set=_ids(ids)))
    return {r["profile_id"]: r for r in hit.to_pylist()}


def _attribute_values(
    result: IdentityResult, config: IdentityConfig, only: Collection[str] | None = None
) -> dict[str, dict[str, Any]]:
    """Per profile, values of types mapped to `attribute:<name>` (latest seen wins)."""
    mapped = {
        t: spec.customerio.split(":", 1)[1]
        for t, spec in config.identifier_types.items()
        if spec.customerio.startswith("attribute:")
    }
    out: dict[str, dict[str, Any]] = {}
    if not mapped:
        return out
    imap = result.identifier_map
    keep = pc.and_(
        pc.is_in(imap["id_type"], pa.array(list(mapped), pa.string())),
        pc.is_valid(imap["profile_id"]),
    )
    if only is not None:
        keep = pc.and_(keep, pc.is_in(imap["profile_id"], value_set=_ids(only)))
    nodes = imap.filter(keep).sort_by([("last_observed", "ascending"), ("id_value", "descending")])
    for row in nodes.select(["profile_id", "id_type", "id_value"]).to_pylist():
        out.setdefault(row["profile_id"], {})[mapped[row["id_type"]]] = row["id_value"]
    return out


def profile_attributes(
    result: IdentityResult, config: IdentityConfig, only: Collection[str] | None = None
) -> dict[str, dict[str, Any]]:
    """The attributes the graph gives each profile's person, by profile id (of the profiles
    `only`, when given).

    Types mapped to `attribute:<name>` give `<name>` (the latest value seen), or `""` (clear)
    on a profile that lost its value to another profile (`IdentityResult.lost`); a union
    refused by a limit leaves the email (or id) with the profile that holds it, and the other
    profile gets it as `contested_email` (`contested_id`), cleared (`""`) once no union is
    refused for it (`IdentityResult.contested`).
    """
    attrs = _attribute_values(result, config, only)
    for pid, name in _lost_attributes(result, config):
        attrs.setdefault(pid, {}).setdefault(name, "")
    # a profile contested before and not now has the attribute cleared; a refusal sets it
    for pid, kind in zip(
        result.contested["profile_id"].to_pylist(),
        result.contested["kind"].to_pylist(),
        strict=True,
    ):
        attrs.setdefault(pid, {})[f"contested_{kind}"] = ""
    targets = {t: spec.customerio for t, spec in config.identifier_types.items()}
    for holder, kind, value in contested_values(result.refused, targets):
        attrs.setdefault(holder, {})[f"contested_{kind}"] = value
    if only is not None:
        wanted = set(only)
        attrs = {pid: values for pid, values in attrs.items() if pid in wanted}
    return attrs


def _lost_attributes(result: IdentityResult, config: IdentityConfig) -> Iterator[tuple[str, str]]:
    """(profile id, attribute name) for each value of an `attribute:` type a profile lost to
    another this run (`IdentityResult.lost`): cleared (`""`) unless it has another."""
    for pid, id_type in zip(
        result.lost["profile_id"].to_pylist(), result.lost["id_type"].to_pylist(), strict=True
    ):
        spec = config.identifier_types.get(id_type)
        if spec is not None and spec.customerio.startswith("attribute:"):
            yield pid, spec.customerio.split(":", 1)[1]


def profile_attribute_columns(
    result: IdentityResult, config: IdentityConfig
) -> dict[str, pa.Table]:
    """`profile_attributes` as one table per attribute name (`profile_id`, `value`): the same
    values, in Arrow (a million profiles as Python dicts are ~700 MiB and seconds)."""
    mapped = {
        t: spec.customerio.split(":", 1)[1]
        for t, spec in config.identifier_types.items()
        if spec.customerio.startswith("attribute:")
    }
    out: dict[str, pa.Table] = {}
    if mapped:
        imap = result.identifier_map
        types = pa.array(list(mapped), pa.string())
        nodes = (
            imap.filter(
                pc.and_(pc.is_in(imap["id_type"], value_set=types), pc.is_valid(imap["profile_id"]))
            )
            .select(["profile_id", "id_type", "id_value", "last_observed"])
            .sort_by([("last_observed", "ascending"), ("id_value", "descending")])
        )
        names = pa.array(list(mapped.values()), pa.string())
        nodes = pa.table(
            {
                "profile_id": nodes["profile_id"],
                "name": names.take(pc.index_in(nodes["id_type"], value_set=types)),
                "value": nodes["id_value"].cast(pa.string()),
                "at": pa.array(range(nodes.num_rows), pa.int64()),
            }
        )
        # the latest seen wins: the last row of each profile and name in that order
        last = nodes.group_by(["profile_id", "name"], use_threads=False).aggregate([("at", "max")])
        nodes = nodes.take(last["at_max"])
        for name in sorted(set(mapped.values())):
            part = nodes.filter(pc.equal(nodes["name"], name))
            out[name] = part.select(["profile_id", "value"])
    # the rest are small (this run's lost values and refusals): Python, over the same rules
    soft: dict[str, dict[str, str]] = {}  # a lost value clears, unless the profile has one
    for pid, name in _lost_attributes(result, config):
        soft.setdefault(name, {}).setdefault(pid, "")
    hard: dict[str, dict[str, str]] = {}
    for pid, kind in zip(
        result.contested["profile_id"].to_pylist(),
        result.contested["kind"].to_pylist(),
        strict=True,
    ):
        hard.setdefault(f"contested_{kind}", {})[pid] = ""
    targets = {t: spec.customerio for t, spec in config.identifier_types.items()}
    for holder, kind, value in contested_values(result.refused, targets):
        hard.setdefault(f"contested_{kind}", {})[holder] = value
    empty = pa.table({"profile_id": pa.array([], pa.string()), "value": pa.array([], pa.string())})
    for name in set(soft) | set(hard):
        table = out.get(name, empty)
        cleared = soft.get(name, {})
        if cleared:
            have = pc.is_in(
                pa.array(list(cleared), pa.string()), value_set=table["profile_id"].combine_chunks()
            ).to_pylist()
            cleared = {p: v for (p, v), h in zip(cleared.items(), have, strict=True) if not h}
        given = {**cleared, **hard.get(name, {})}
        if given:
            table = table.filter(
                pc.invert(
                    pc.is_in(table["profile_id"], value_set=pa.array(list(given), pa.string()))
                )
            )
            table = pa.concat_tables(
                [
                    table,
                    pa.table(
                        {
                            "profile_id": pa.array(list(given), pa.string()),
                            "value": pa.array(list(given.values()), pa.string()),
                        }
                    ),
                ]
            )
        out[name] = table
    return out


def attribute_names(config: IdentityConfig) -> list[str]:
    """Every attribute `profile_attributes` can set, in a stable order."""
    names = sorted(
        {
            spec.customerio.split(":", 1)[1]
            for spec in config.identifier_types.values()
            if spec.customerio.startswith("attribute:")
        }
    )
    kinds = {spec.customerio for spec in config.identifier_types.values()}
    return names + [f"contested_{kind}" for kind in ("email", "id") if kind in kinds]


def plan_customerio(
    result: IdentityResult,
    config: IdentityConfig,
    *,
    exists: Exists,
    attributes: Mapping[str, Mapping[str, Any]] | None = None,
    limit_merges: bool = True,
    merged_only: bool = False,
) -> CioPlan:
    """Plan the Customer.io calls for one identity run.

    Args:
        exists: which people exist in Customer.io, as `(kind, value)` pairs (kind `id`,
            `email` or `cio_id`) or a callable; from the previous run's confirmed deliveries
            or App API lookups.
        attributes: resolved attributes per profile id, re-sent to a merge survivor.

        limit_merges: raise when the plan merges more people than the limit (a sync checks
            the limit as one of its guardrails instead, so `plan` shows it and `--force` can
            let one run through).
        merged_only: plan identifies only for the profiles that merge (a merge's survivor, a
            profile holding several Customer.io people), what a sync sends; their ops are
            those of the whole plan. The whole plan looks at every profile.

    Raises:
        ContractError: more merges than `customerio.merge_policy.max_merges_per_run`.
    """
    known = _exists_fn(exists)
    policy = config.customerio.merge_policy
    ops: list[CioOp] = []
    skipped: list[CioOp] = []
    held_for_review: list[CioOp] = []
    outcomes: dict[str, list[Any]] = {n: [] for n in OUTCOMES_SCHEMA.names}
    reapply: set[str] = set()

    def outcome(survivor: str, absorbed: str, what: str, key: str | None) -> None:
        outcomes["run_id"].append(result.run_id)
        outcomes["profile_id"].append(survivor)
        outcomes["absorbed_profile_id"].append(absorbed)
        outcomes["outcome"].append(what)
        outcomes["idempotency_key"].append(key)

    # 1. merges between lockgate profiles that were both Customer.io people
    merges = result.merges.to_pylist()
    absorbed_by, into, prev_rows = _merge_targets(result, known)
    for m in merges:
        survivor, absorbed = m["profile_id"], m["absorbed_profile_id"]
        target = into[survivor]
        other = (
            prev_rows.get(survivor)
            if target is prev_rows.get(absorbed)
            else prev_rows.get(absorbed)
        )
        primary = _address(target, known)
        secondary = _address(other, known)
        if secondary is None:
            outcome(survivor, absorbed, "skipped_no_cio", None)
            continue
        if primary is None:
            # the survivor has no person yet: identifying it reaches the absorbed person
            outcome(survivor, absorbed, "deferred", None)
            reapply.add(survivor)
            continue
        if m.get("cause") != "forced" and _holds_another_id(other, target, known):
            # a person holding an `id` is never merged away: two users whose rows left (no
            # source shows either `id`, so the one-`id` limit cannot refuse the union) joined
            # by a link between their emails are two people still (an `include` override
            # forcing the two together merges them: catalogue case 34)
            outcome(survivor, absorbed, "skipped_holds_id", None)
            continue
        # a profile is absorbed once (its id is an alias from then on): the same two
        # addresses merged again later (a lead's new person, after the first was merged
        # away) are another merge, with another key
        key = _key("merge", primary, secondary, absorbed)
        merge = CioOp(
            key,
            survivor,
            {"type": "person", "action": "merge", "primary": primary, "secondary": secondary},
        )
        if not policy.enabled:
            outcome(survivor, absorbed, "skipped_disabled", None)
            skipped.append(merge)
            continue
        rank = m["evidence_rank"]
        if policy.min_path_rank is not None and rank is not None and rank > policy.min_path_rank:
            outcome(survivor, absorbed, "held_for_review", None)
            held_for_review.append(merge)
            continue
        ops.append(merge)
        outcome(survivor, absorbed, "merged", key)
        reapply.add(survivor)

    # 2. several Customer.io people inside one profile (imported as `cio_id` identifiers)
    duplicates = duplicate_people(result, config)
    multi = set(duplicates)
    for pid, (primary_cio, others, _) in sorted(duplicates.items()):
        for other_cio in others:
            key = _key("merge", {"cio_id": primary_cio}, {"cio_id": other_cio})
            merge = CioOp(
                key,
                pid,
                {
                    "type": "person",
                    "action": "merge",
                    "primary": {"cio_id": primary_cio},
                    "secondary": {"cio_id": other_cio},
                },
            )
            if not policy.enabled:
                outcome(pid, pid, "skipped_disabled", None)
                skipped.append(merge)
                continue
            ops.append(merge)
            outcome(pid, pid, "merged", key)
            reapply.add(pid)
    # merges off: a profile's email another of its people holds stays with that person
    withheld = (
        set()
        if policy.enabled
        else {pid for pid, (_, _, elsewhere) in duplicates.items() if elsewhere}
    )

    # people known by email alone whose profile gained an `id`: given it before the
    # profile's identify by that `id` (a sync sends these itself, with the merges); people
    # known by email alone whose own email left: merged into the new email's person (a
    # sync, with the App API, gives them the new email by their `cio_id` instead), which
    # the profile's identify then reaches by that email
    readdressed: set[str] = set()
    later: list[CioOp] = []
    if not merged_only:
        adopt, weak = weak_adoptions(
            result, config, adoption_ops(result, known, merges=policy.enabled)
        )
        later.extend(adopt)
        for op in weak:
            outcome(op.profile_id, op.profile_id, "held_for_review", None)
            held_for_review.append(op)
        readdress = readdress_ops(result, known, merges=policy.enabled)
        readdressed = {op.profile_id for op in readdress}
        later.extend(readdress)
        later.extend(release_ops(result, known))
        later.extend(clear_ops(result, config, known))
        if not policy.enabled:
            for op in merges_of(adoption_ops(result, known) + readdress_ops(result, known)):
                outcome(op.profile_id, op.profile_id, "skipped_disabled", None)
                skipped.append(op)
        for op in merges_of(later):
            outcome(op.profile_id, op.profile_id, "merged", op.key)

    # every merge counts towards the limit, those of a lead's person (above) too
    n_merges = len(merges_of(ops)) + len(merges_of(later))
    if limit_merges and n_merges > policy.max_merges_per_run:
        raise ContractError(
            f"this run would merge `{n_merges}` Customer.io people, more than "
            f"`max_merges_per_run` ({policy.max_merges_per_run})",
            hint="review the merge log (`lockgate identity plan`), then raise "
            "`identity.customerio.merge_policy.max_merges_per_run` or fix the rule that "
            "merged them",
        )
    ops.extend(later)

    # 3. identify new people and changed identifiers; re-apply after merges
    review = result.splits.filter(pc.equal(result.splits["status"], "needs_review"))
    held = (
        set(review["parent_profile_id"].to_pylist())
        | set(review["child_profile_id"].to_pylist())
        | set(result.held["profile_id"].to_pylist())
    )
    moved = set(result.moves["from_profile_id"].to_pylist()) | set(
        result.moves["to_profile_id"].to_pylist()
    )
    if merged_only:
        planned = result.profiles.filter(
            pc.is_in(result.profiles["profile_id"], value_set=_ids(set(absorbed_by) | multi))
        )
        attrs_by_type = profile_attributes(result, config, only=set(absorbed_by) | multi)
    else:
        planned = result.profiles
        attrs_by_type = profile_attributes(result, config)
    for row, prev in _with_previous(planned, result.previous_profiles):
        pid = row["profile_id"]
        if pid in held:
            continue  # a split waits for review: nothing changes in Customer.io
        ident = {
            "id": row["cio_person_id"],
            "email": None if pid in withheld else row["cio_email"],
            "anonymous_id": row["cio_anonymous_id"],
        }
        if ident["id"] is None and ident["email"] is None:
            if config.customerio.require_known_identifier:
                continue
        before = (
            {
                "id": prev["cio_person_id"],
                "email": prev["cio_email"],
                "anonymous_id": prev["cio_anonymous_id"],
            }
            if prev
            else None
        )
        existing = _address(into.get(pid, prev), known) if prev else None
        if existing is None and prev is not None and row.get("cio_id"):
            existing = _address(row, known)
        if pid in readdressed:
            existing = {"email": str(ident["email"])}  # a person holds it once they are sent
        changed = before != ident or pid in moved
        if not changed and pid not in reapply and existing is not None:
            continue
        if not changed and pid not in reapply and prev is not None and existing is None:
            # the person was lost in Customer.io (deleted outside lockgate): identify again
            changed = True
        extra = dict(attrs_by_type.get(pid, {}))
        if pid in moved:
            for name in {
                s.customerio.split(":", 1)[1]
                for s in config.identifier_types.values()
                if s.customerio.startswith("attribute:")
            }:
                extra.setdefault(name, None)
        extra.update((attributes or {}).get(pid, {}))
        if existing is not None and "cio_id" in existing:
            address = existing
            body = {k: v for k, v in ident.items() if v is not None}
        elif ident["id"] is not None:
            address = {"id": ident["id"]}
            body = {k: v for k, v in ident.items() if v is not None and k != "id"}
        elif existing is not None:
            address = existing
            body = {k: v for k, v in ident.items() if v is not None and k not in existing}
        else:
            address = {"email": str(ident["email"])}
            body = {k: v for k, v in ident.items() if v is not None and k != "email"}
        body.update(extra)
        payload = {
            "type": "person",
            "action": "identify",
            "identifiers": address,
            "attributes": body,
        }
        ops.append(CioOp(_key("identify", result.run_id, payload), pid, payload))

    counts = {
        "merges": n_merges,
        "merges_skipped": len(skipped),
        "merges_held": len(held_for_review),
        "identifies": sum(1 for op in ops if op.payload["action"] == "identify"),
        "review": review.num_rows,
    }
    return CioPlan(
        tuple(ops),
        pa.table(outcomes, schema=OUTCOMES_SCHEMA),
        review,
        counts,
        tuple(skipped),
        tuple(held_for_review),
    )


def _known_by_email_alone(result: IdentityResult) -> pa.Table | None:
    """The profiles the previous run left as a Customer.io person known by email alone
    (`profile_id`, `cio_email`), when this run has profiles too; None when there are none."""
    previous = result.previous_profiles
    if not previous.num_rows or not result.profiles.num_rows:
        return None
    was = previous.filter(
        pc.and_(pc.is_null(previous["cio_person_id"]), pc.is_valid(previous["cio_email"]))
    ).select(["profile_id", "cio_email"])
    return was if was.num_rows else None


def adoptions(result: IdentityResult) -> list[tuple[str, str, str]]:
    """The profiles that were a Customer.io person known by email alone and now have an `id`:
    `(profile_id, id, old email)` each.

    With another email: identified by the new `id` with the new email, Customer.io would
    find neither and create a second person; the person must first be given the `id` (an
    identify by the `id` carrying the email it holds: Customer.io gives an unknown `id` to
    the person holding the email), and the profile's own identify then changes the email by
    the `id` (identity.md §3.5, "Profile gains user_id"). With the same email, the profile's
    own identify gives the person the `id`, unless a person with that `id` exists already (a
    user whose row left and who comes back with a retired lead's email): see
    :func:`adoption_ops`."""
    was = _known_by_email_alone(result)
    if was is None:
        return []
    now = result.profiles.filter(pc.is_valid(result.profiles["cio_person_id"])).select(
        ["profile_id", "cio_person_id"]
    )
    # set lookups, not a join: each of Arrow's joins costs ~30 ms however small its tables
    # (a thread pool's start), and a run asks this of every people sync
    now = now.filter(pc.is_in(now["profile_id"], value_set=was["profile_id"]))
    if not now.num_rows:
        return []
    was = was.filter(pc.is_in(was["profile_id"], value_set=now["profile_id"]))
    old = dict(zip(was["profile_id"].to_pylist(), was["cio_email"].to_pylist(), strict=True))
    return sorted(
        (pid, person, old[pid])
        for pid, person in zip(
            now["profile_id"].to_pylist(), now["cio_person_id"].to_pylist(), strict=True
        )
    )


def adoption_ops(
    result: IdentityResult,
    exists: Callable[[str, str], bool],
    *,
    merges: bool = True,
    holders: Mapping[str, Collection[str]] | None = None,
) -> list[CioOp]:
    """One op per :func:`adoptions` entry whose person exists: a merge of it into the person
    with that `id` when one exists already (its user's row left and came back, with the
    lead's email or linked to it: Customer.io would drop an update giving the user's person
    the lead's email, the email being the lead's person's), as when a user takes a retired
    lead's email (docs/identity.md); else an identify giving it the `id` when the profile's
    email changed. Neither with the same email and no such person: the profile's own
    identify gives the person the `id`. With ``merges`` off
    (`merge_policy.enabled: false`: no merge is ever sent), no merge: the two people stay,
    and Customer.io drops the update of the user's person giving it the lead's email.

    No identify for a profile whose graph merges go into another profile's person (the one
    holding the profile's new email): its own person is the merge's secondary, which
    Customer.io deletes, and a person holding an `id` is never merged away. The survivor's
    identify by the `id`, carrying the email its person holds, gives that person the `id`
    (with the merge held back, too: the profile's rows go to the person of its email).

    None for a person ``holders`` (email lowercased -> the `id`s of the people Lockgate last
    left holding it) says may be another user's: the graph takes it for the lead's person
    known by email alone, but a user whose row came back without the email kept it in
    Customer.io, and the lead's row reached that user's person by it. A merge would delete
    that user's person, `id` and all (a person holding an `id` is never merged away: the
    profile merges' ``skipped_holds_id``); the user's row taking the email has it released
    from that person first (``diff.order_email_moves``), as from any person keeping one."""
    ops = []
    adopted = adoptions(result)
    pids = {pid for pid, _, _ in adopted}
    now = _rows_of(result.profiles, pids)
    before = _rows_of(result.previous_profiles, pids)
    _, into, prev_rows = _merge_targets(result, exists, survivors=pids)
    merged_away = {pid for pid, target in into.items() if target is not prev_rows.get(pid)}
    for pid, person_id, email in adopted:
        since = _occurrence(before.get(pid))
        same_email = now[pid]["cio_email"] == email
        if not same_email and pid in merged_away:
            # its merges go into the person of another profile it absorbs, the one holding
            # its new email: a user whose row came back (their person there) with that email
            # adopts that person (their own row joins them), whatever the graph's merge of
            # the profile's old person into it does (sent, or held for review by its own,
            # weaker, evidence: a link to an older lead's address)
            target = into.get(pid)
            email = now[pid]["cio_email"]
            if (
                target is None
                or target.get("cio_person_id") is not None
                or not email
                or target.get("cio_email") != email
                or not exists("id", person_id)
            ):
                continue
            same_email = True
        if not exists("email", email):
            continue
        if holders is not None and any(h != person_id for h in holders.get(email.lower(), ())):
            continue
        if exists("id", person_id):
            # the user's person is there (their row left and came back): an identify by the
            # `id` giving it the lead's email would be dropped, the email being the lead's
            # person's, whether the profile keeps that email or now has the user's own
            if merges:
                primary, secondary = {"id": person_id}, {"email": email}
                merge = {
                    "type": "person",
                    "action": "merge",
                    "primary": primary,
                    "secondary": secondary,
                }
                ops.append(CioOp(_key("merge", primary, secondary, pid, since), pid, merge))
            continue
        if same_email:
            continue
        payload = {
            "type": "person",
            "action": "identify",
            "identifiers": {"id": person_id},
            "attributes": {"email": email},
        }
        ops.append(CioOp(_key("adopt", person_id, email, pid, since), pid, payload))
    return ops


def weak_adoptions(
    result: IdentityResult, config: IdentityConfig, ops: Sequence[CioOp]
) -> tuple[list[CioOp], list[CioOp]]:
    """``ops`` (of :func:`adoption_ops`) split into those to send and the merges held for
    review: a merge of a lead's person into a returning user's (`{"id": ...}` from
    `{"email": ...}`) is judged as the graph's merges are (`merge_policy.min_path_rank`), by
    the strongest path joining the `id` to that email in the profile (the weakest link of the
    best path). The user's own row giving the lead's email is rank 1 evidence; a link or a
    Stripe customer joining the user's own email to the lead's is only as strong as it.
    Edges an `include` override forced count as the strongest."""
    limit = config.customerio.merge_policy.min_path_rank
    adopting = [
        op
        for op in merges_of(ops)
        if set(op.payload["primary"]) == {"id"} and set(op.payload["secondary"]) == {"email"}
    ]
    if limit is None or not adopting:
        return list(ops), []
    ranks = _adoption_ranks(result, config, adopting)
    weak = {op.key for op in adopting if (r := ranks.get(op.key)) is not None and r > limit}
    return [op for op in ops if op.key not in weak], [op for op in ops if op.key in weak]


def _adoption_ranks(
    result: IdentityResult, config: IdentityConfig, merges: Sequence[CioOp]
) -> dict[str, int]:
    """Op key -> the evidence rank of each adoption merge of ``merges``: the smallest rank
    at which the edges of its profile join the node of its `id` to the node of its email
    (edges added strongest first). None found (the email is no node of the profile): left
    out, the merge sent as before."""
    id_types = {t for t, s in config.identifier_types.items() if s.customerio == "id"}
    email_types = {t for t, s in config.identifier_types.items() if s.customerio == "email"}
    pids = pa.array(sorted({op.profile_id for op in merges}), pa.string())
    nodes = result.identifier_map.filter(pc.is_in(result.identifier_map["profile_id"], pids))
    node_pid = {
        (t, v): pid
        for t, v, pid in zip(
            nodes["id_type"].to_pylist(),
            nodes["id_value"].to_pylist(),
            nodes["profile_id"].to_pylist(),
            strict=True,
        )
    }
    values = pa.array(sorted({v for _, v in node_pid}), pa.string())
    edges = result.edges
    edges = edges.filter(
        pc.and_(pc.is_in(edges["value_a"], values), pc.is_in(edges["value_b"], values))
    ).select(["type_a", "value_a", "type_b", "value_b", "rank", "status"])
    joined: dict[str, list[tuple[int, tuple[str, str], tuple[str, str]]]] = {}
    for row in edges.to_pylist():
        a, b = (row["type_a"], row["value_a"]), (row["type_b"], row["value_b"])
        pid = node_pid.get(a)
        if pid is None or node_pid.get(b) != pid or row["status"] not in ("accepted", "forced"):
            continue
        rank = 0 if row["status"] == "forced" or row["rank"] is None else int(row["rank"])
        joined.setdefault(pid, []).append((rank, a, b))
    ranks: dict[str, int] = {}
    for op in merges:
        person, email = str(op.payload["primary"]["id"]), str(op.payload["secondary"]["email"])
        ends = [(t, person) for t in id_types]
        targets = [(t, email.strip().lower()) for t in email_types]
        parent: dict[tuple[str, str], tuple[str, str]] = {}
        for rank, a, b in sorted(joined.get(op.profile_id, []), key=lambda e: e[0]):
            ra, rb = union_root(parent, a), union_root(parent, b)
            if ra != rb:
                parent[ra] = rb
            roots = {union_root(parent, n) for n in ends if n in parent}
            if any(union_root(parent, n) in roots for n in targets if n in parent):
                ranks[op.key] = rank
                break
    return ranks


def readdressings(result: IdentityResult) -> list[tuple[str, str, str]]:
    """The profiles that were a Customer.io person known by email alone, are still known by
    email alone, and whose email changed because their own one left them (a lead's row and
    its link gone, other addresses of the profile staying): `(profile_id, new email, old
    email)` each.

    Such a person can only be found by the email it holds, and Customer.io changes a
    person's email only when it is addressed by its `cio_id`: identified by the profile's
    new email, it would find nobody and create a second person for the one profile, leaving
    the first with its older values (:func:`readdress_ops`). An old email another profile's
    person now holds is left out: that profile's rows reach that person."""
    was = _known_by_email_alone(result)
    if was is None:
        return []
    profiles = result.profiles
    now = profiles.filter(
        pc.and_(
            pc.and_(pc.is_null(profiles["cio_person_id"]), pc.is_valid(profiles["cio_email"])),
            pc.is_in(profiles["profile_id"], value_set=was["profile_id"].combine_chunks()),
        )
    ).select(["profile_id", "cio_email"])
    if not now.num_rows:
        return []
    # array lookups, not Python objects per lead: most leads keep their email every run
    at = pc.index_in(now["profile_id"], value_set=was["profile_id"].combine_chunks())
    old = was["cio_email"].combine_chunks().take(at).cast(pa.string())
    email = now["cio_email"].combine_chunks().cast(pa.string())
    changed = pc.fill_null(pc.not_equal(email, old), False)
    now, old = now.filter(changed), old.filter(changed)
    if not now.num_rows:
        return []
    held = pc.is_in(old, value_set=profiles["cio_email"].combine_chunks().cast(pa.string()))
    free = pc.invert(pc.fill_null(held, False))
    return sorted(
        zip(
            now["profile_id"].filter(free).to_pylist(),
            now["cio_email"].filter(free).to_pylist(),
            old.filter(free).to_pylist(),
            strict=True,
        )
    )


def readdress_ops(
    result: IdentityResult,
    exists: Callable[[str, str], bool],
    cio_ids: Mapping[str, str] | None = None,
    *,
    merges: bool = True,
) -> list[CioOp]:
    """The ops that keep one person for each :func:`readdressings` entry whose old person
    exists, sent before the rows (which identify the profile's person by its new email):

    * its `cio_id` known (``cio_ids``, by old email: looked up through the App API), an
      identify addressed by that `cio_id` giving it the new email, the one way Customer.io
      changes an email: the same person goes on, found by the new email;
    * else a `merge` of the old email's person into the new email's (an identify by it
      first, which creates it when nobody holds it: a person Lockgate delivered it to may
      have been merged away by an earlier readdressing): one person remains, found by the
      new email, holding the old one's history; its values are the rows'. Not with
      ``merges`` off (`merge_policy.enabled: false`: no merge is ever sent): then nothing,
      and the rows reach a person under the new email beside the old one.
    """
    ops = []
    readdressed = readdressings(result)
    before = _rows_of(result.previous_profiles, {pid for pid, _, _ in readdressed})
    for pid, email, old in readdressed:
        if not exists("email", old):
            continue
        since = _occurrence(before.get(pid))
        cio_id = (cio_ids or {}).get(old)
        if cio_id is not None:
            payload = {
                "type": "person",
                "action": "identify",
                "identifiers": {"cio_id": cio_id},
                "attributes": {"email": email},
            }
            ops.append(CioOp(_key("readdress", cio_id, old, email, pid, since), pid, payload))
            continue
        if not merges:
            continue
        # the new email's person made sure of (an identify changing nothing when one holds
        # it): a person known to hold it may be gone since, merged into another by an earlier
        # readdressing (its row's record says it is there)
        create = {
            "type": "person",
            "action": "identify",
            "identifiers": {"email": email},
            "attributes": {},
        }
        ops.append(CioOp(_key("readdress", pid, old, email, since), pid, create))
        primary, secondary = {"email": email}, {"email": old}
        merge = {"type": "person", "action": "merge", "primary": primary, "secondary": secondary}
        ops.append(CioOp(_key("merge", primary, secondary, pid, since), pid, merge))
    return ops


ANONYMOUS_KEY_SUFFIX = "#anonymous-id"
"""Ends the key of each :func:`anonymous_id_ops` identify (counted apart in a run's report)."""


def anonymous_id_ops(
    result: IdentityResult, config: IdentityConfig, *, include_own: bool
) -> list[CioOp]:
    """An identify carrying `anonymous_id` for each anonymous id of a profile other than the
    one its own identify carries (`cio_anonymous_id`; with ``include_own``, that one too:
    a project whose people syncs do not carry it).

    Customer.io takes one `anonymous_id` per identify and attaches the anonymous events of
    the last 30 days that bear it; a user seen on two devices needs both sent. Only the
    anonymous ids the graph gives the profile count: blocked ones never reach it, and a shared
    one (over its degree cap) is quarantined, in no profile. A profile with no `id` or email
    (anonymous only) has no person, and a profile of a split waiting for review changes
    nothing in Customer.io. Each identify is addressed as the profile's person is found
    (`cio_id` when known, else `id`, else email). Its key is the anonymous id's alone: once
    delivered, by any sync, it is never sent again, to this person or to another one that
    holds the anonymous id later (the events it attached stay with the first person); nor is
    one that left a Customer.io person's profile (`IdentityResult.withheld`), which that
    person may hold from its own identify."""
    kinds = [t for t, spec in config.identifier_types.items() if spec.customerio == "anonymous_id"]
    imap = result.identifier_map
    if not kinds or not imap.num_rows:
        return []
    nodes = imap.filter(
        pc.and_(
            pc.is_in(imap["id_type"], value_set=pa.array(kinds, pa.string())),
            pc.is_valid(imap["profile_id"]),
        )
    ).select(["profile_id", "id_type", "id_value"])
    if not nodes.num_rows:
        return []
    # in Arrow up to the few that are sent: most profiles hold one anonymous id, carried by
    # their own identify (a million profiles as Python dicts are over a GiB)
    people = result.profiles.select(
        ["profile_id", "cio_id", "cio_person_id", "cio_email", "cio_anonymous_id"]
    )
    people = people.filter(
        pc.or_(
            pc.or_(pc.is_valid(people["cio_id"]), pc.is_valid(people["cio_person_id"])),
            pc.is_valid(people["cio_email"]),
        )
    )  # an anonymous-only profile has no person (`require_known_identifier`)
    nodes = nodes.join(people, "profile_id", join_type="inner")
    if not include_own:
        own = pc.fill_null(pc.equal(nodes["id_value"], nodes["cio_anonymous_id"]), False)
        nodes = nodes.filter(pc.invert(own))
    if not nodes.num_rows:
        return []
    review = result.splits.filter(pc.equal(result.splits["status"], "needs_review"))
    held = (
        set(review["parent_profile_id"].to_pylist())
        | set(review["child_profile_id"].to_pylist())
        | set(result.held["profile_id"].to_pylist())
    )
    withheld = set(
        zip(
            result.withheld["id_type"].to_pylist(),
            result.withheld["id_value"].to_pylist(),
            strict=True,
        )
    )
    ops = []
    rows = nodes.sort_by([("profile_id", "ascending"), ("id_value", "ascending")]).to_pylist()
    for row in rows:
        pid, value = row["profile_id"], row["id_value"]
        if pid in held or (row["id_type"], value) in withheld:
            continue
        ((kind, column),) = [
            (k, c)
            for k, c in (("cio_id", "cio_id"), ("id", "cio_person_id"), ("email", "cio_email"))
            if row[c] is not None
        ][:1]
        payload = {
            "type": "person",
            "action": "identify",
            "identifiers": {kind: str(row[column])},
            "attributes": {"anonymous_id": value},
        }
        ops.append(CioOp(_key("anonymous_id", value) + ANONYMOUS_KEY_SUFFIX, pid, payload))
    return ops


def releases(result: IdentityResult) -> list[tuple[str, str, str]]:
    """The emails this run moved from a profile that was a Customer.io person with an `id`
    and has no email now (or is retired: heir to nothing) to a profile that takes it as its
    Customer.io email: `(profile_id taking it, the giver's person id, email)` each.

    A user whose row left and who shared a family email with another user: the email is the
    other user's now, but the giver's person still holds it in Customer.io, which drops (200,
    nothing applied) an identify giving it to someone else, and no row of the taker's sync
    may release it (the giver has no row, or its rows are another sync's). The giver must
    give it up first (docs/identity.md, "email moved off a retired profile")."""
    moves = result.moves
    if not moves.num_rows:
        return []
    givers = set(moves["from_profile_id"].to_pylist())
    before = _rows_of(result.previous_profiles, givers)
    after = _rows_of(result.profiles, givers | set(moves["to_profile_id"].to_pylist()))
    held = set(result.held["profile_id"].to_pylist())
    # a part split off a person (waiting for review) sends its rows to that person, as it
    # was: it takes no email; the person it was split off goes on with its own identifiers
    parts = {
        r["profile_id"]
        for r in result.held.select(["profile_id", "parent_profile_id"]).to_pylist()
        if r["profile_id"] != r["parent_profile_id"]
    }
    out = set()
    for m in moves.to_pylist():
        giver, taker = m["from_profile_id"], m["to_profile_id"]
        old, new, now = before.get(giver), after.get(taker), after.get(giver)
        if old is None or new is None or taker in parts or giver in held:
            continue
        email = m["id_value"]
        if now is not None and now["cio_email"] is not None:
            continue  # its own identify gives the email up (ordered by the sync)
        if old["cio_person_id"] is not None and old["cio_email"] == email == new["cio_email"]:
            out.add((taker, str(old["cio_person_id"]), email))
    return sorted(out)


def release_ops(result: IdentityResult, exists: Callable[[str, str], bool]) -> list[CioOp]:
    """One identify per :func:`releases` entry whose person exists, clearing its email
    (`"email": ""`), keyed by the run: sent once, before the rows that give it away."""
    ops = []
    for pid, person_id, email in releases(result):
        if not exists("id", person_id):
            continue
        payload = {
            "type": "person",
            "action": "identify",
            "identifiers": {"id": person_id},
            # `_update`: a person deleted in Customer.io since is not created again to give
            # the email up
            "attributes": {"_update": True, "email": ""},
        }
        ops.append(CioOp(_key("release", result.run_id, person_id, email), pid, payload))
    return ops


def retired_clears(
    result: IdentityResult, config: IdentityConfig
) -> list[tuple[str, str, str, tuple[str, ...]]]:
    """The attributes to clear on the people of profiles retired this run, for the
    `attribute:` identifiers that moved off them: `(profile_id, kind, value, names)` each,
    the person found by its `id` (`kind` "id"), else by its email.

    A profile heir to nothing (a user whose own evidence no source shows any more, which a
    moved Stripe id would otherwise have dragged into a merge) is no profile of this run, so
    no identify of its own clears what it gave up (identity.md §3.6 case 11: the old holder's
    Stripe id is cleared). Its person is left as it is but for those attributes."""
    moves = result.moves
    if not moves.num_rows:
        return []
    names = {
        t: spec.customerio.split(":", 1)[1]
        for t, spec in config.identifier_types.items()
        if spec.customerio.startswith("attribute:")
    }
    moved: dict[str, set[str]] = {}
    for m in moves.select(["id_type", "from_profile_id"]).to_pylist():
        if m["id_type"] in names:
            moved.setdefault(m["from_profile_id"], set()).add(names[m["id_type"]])
    if not moved:
        return []
    before = _rows_of(result.previous_profiles, moved)
    now = _rows_of(result.profiles, moved)
    held = set(result.held["profile_id"].to_pylist())
    out = []
    for giver, lost in sorted(moved.items()):
        old = before.get(giver)
        if old is None or giver in now or giver in held:
            continue
        if old["cio_person_id"] is not None:
            out.append((giver, "id", str(old["cio_person_id"]), tuple(sorted(lost))))
        elif old["cio_email"] is not None:
            out.append((giver, "email", str(old["cio_email"]), tuple(sorted(lost))))
    return out


def clear_ops(
    result: IdentityResult, config: IdentityConfig, exists: Callable[[str, str], bool]
) -> list[CioOp]:
    """One identify per :func:`retired_clears` entry whose person exists, clearing (`""`)
    the attributes that moved off it, keyed by the run: sent once, before the sync's rows."""
    ops = []
    for pid, kind, value, names in retired_clears(result, config):
        if not exists(kind, value):
            continue
        payload = {
            "type": "person",
            "action": "identify",
            "identifiers": {kind: value},
            "attributes": {"_update": True, **dict.fromkeys(names, "")},  # never a new person
        }
        ops.append(CioOp(_key("clear", result.run_id, kind, value, names), pid, payload))
    return ops


def merge_addresses(result: IdentityResult, config: IdentityConfig) -> set[tuple[str, str]]:
    """Every `(kind, value)` a `merged_only` plan can ask `exists` about: the `cio_id`, `id`
    and email of each profile that merges, as it is and as it was. A caller that knows many
    people looks up only these."""
    absorbed = result.merges["absorbed_profile_id"].to_pylist()
    survivors = set(result.merges["profile_id"].to_pylist())
    cio_types = [t for t, s in config.identifier_types.items() if s.customerio == "cio_id"]
    survivors |= _multi_person(result.profiles, cio_types)
    out: set[tuple[str, str]] = set()
    for table, ids in (
        (result.previous_profiles, survivors | set(absorbed)),
        (result.profiles, survivors),
    ):
        if not ids:
            continue
        part = table.filter(pc.is_in(table["profile_id"], value_set=_ids(ids)))
        for kind, column in (("cio_id", "cio_id"), ("id", "cio_person_id"), ("email", "cio_email")):
            if column in part.column_names:
                out.update((kind, str(v)) for v in part[column].to_pylist() if v is not None)
    return out


def duplicate_people(
    result: IdentityResult, config: IdentityConfig
) -> dict[str, tuple[str, list[str], bool]]:
    """The profiles holding several imported Customer.io people (`cio_id` identifiers), each
    with the `cio_id` of the person the others merge into (the one holding the profile's
    `id`, else its email, else the first), the others, and whether another one holds the
    profile's email (its rows' update would be dropped: see :func:`withheld_emails`)."""
    cio_types = [t for t, s in config.identifier_types.items() if s.customerio == "cio_id"]
    multi = _multi_person(result.profiles, cio_types)
    if not multi:
        return {}
    multi_rows = _rows_of(result.profiles, multi)
    owners = _cio_owners(result, cio_types, multi)
    out = {}
    for pid in sorted(multi):
        row = multi_rows[pid]
        people = sorted(owners.get(pid, {}))
        holds_id = [c for c in people if row["cio_person_id"] in owners[pid][c]]
        holds_email = [c for c in people if row["cio_email"] in owners[pid][c]]
        primary = (holds_id or holds_email or people)[0]
        elsewhere = bool(holds_email) and primary not in holds_email
        out[pid] = (primary, [c for c in people if c != primary], elsewhere)
    return out


def withheld_emails(result: IdentityResult, config: IdentityConfig) -> set[str]:
    """With `merge_policy.enabled: false`, the profiles whose email another of their
    imported Customer.io people holds than the one holding their `id`: their rows go to that
    person without the email (Customer.io would drop the whole update, the email being the
    other person's), until one person is left (merged by hand, then exported again)."""
    if config.customerio.merge_policy.enabled:
        return set()
    return {pid for pid, (_, _, elsewhere) in duplicate_people(result, config).items() if elsewhere}


def _multi_person(profiles: pa.Table, cio_types: list[str]) -> set[str]:
    """The profiles holding more than one imported Customer.io person (`cio_id`)."""
    counts = [
        pc.fill_null(profiles[f"n_{t}"], 0) for t in cio_types if f"n_{t}" in profiles.column_names
    ]
    if not counts:
        return set()
    total = counts[0]
    for more in counts[1:]:
        total = pc.add(total, more)
    return set(profiles.filter(pc.greater(total, 1))["profile_id"].to_pylist())


def _with_previous(
    profiles: pa.Table, previous: pa.Table, size: int = 65_536
) -> Iterator[tuple[dict[str, Any], dict[str, Any] | None]]:
    """Each profile's row and its previous run's row (or None), by profile id, a slice of
    rows at a time: never every profile as Python dicts at once."""
    ordered = profiles.sort_by([("profile_id", "ascending")])
    for start in range(0, ordered.num_rows, size):
        part = ordered.slice(start, size)
        mine: dict[str, dict[str, Any]] = {}
        for r in part.to_pylist():
            mine[r["profile_id"]] = r
        before = _rows_of(previous, mine)
        for pid, row in mine.items():
            yield row, before.get(pid)


def _cio_owners(
    result: IdentityResult, cio_types: list[str], profiles: Collection[str]
) -> dict[str, dict[str, set[str]]]:
    """Of these profiles, each `cio_id` value and the identifier values it was linked to
    directly (only their `cio_id` nodes, and the links of a `cio_id`, become Python values)."""
    imap = result.identifier_map
    types = pa.array(cio_types, pa.string())
    pmap = {
        (r["id_type"], r["id_value"]): r["profile_id"]
        for r in imap.filter(
            pc.and_(
                pc.is_in(imap["id_type"], value_set=types),
                pc.is_in(imap["profile_id"], value_set=_ids(profiles)),
            )
        )
        .select(["id_type", "id_value", "profile_id"])
        .to_pylist()
    }
    out: dict[str, dict[str, set[str]]] = {}
    for pid_key, pid in pmap.items():
        if pid is not None:
            out.setdefault(pid, {})[pid_key[1]] = set()
    edges = result.edges
    edges = edges.filter(
        pc.and_(
            pc.is_in(edges["status"], pa.array(["accepted", "forced"])),
            pc.or_(
                pc.is_in(edges["type_a"], value_set=types),
                pc.is_in(edges["type_b"], value_set=types),
            ),
        )
    )
    for e in edges.select(["type_a", "value_a", "type_b", "value_b"]).to_pylist():
        for side, other in (("a", "b"), ("b", "a")):
            if e[f"type_{side}"] in cio_types:
                pid = pmap.get((e[f"type_{side}"], e[f"value_{side}"]))
                if pid is not None:
                    out[pid][e[f"value_{side}"]].add(e[f"value_{other}"])
    return out


def tombstone(result: IdentityResult, id_type: str, value: str) -> tuple[pa.Table, CioOp | None]:
    """Forget a person (GDPR): blocklist rows for all their identifiers, and a suppress op.

    Add the rows to the `blocked_values_table` so later events cannot re-create the profile;
    the next `resolve` drops its nodes. The op suppresses the Customer.io person (by `id`, else
    by email), which also blocks those identifiers in Customer.io.
    """
    imap = result.identifier_map
    hit = imap.filter(
        pc.and_(pc.equal(imap["id_type"], id_type), pc.equal(imap["id_value"], value))
    )
    if hit.num_rows == 0:
        return pa.table(
            {"id_type": pa.array([], pa.string()), "id_value": pa.array([], pa.string())}
        ), None
    pid = hit["profile_id"][0].as_py()
    members = imap.filter(pc.equal(imap["profile_id"], pid)) if pid is not None else hit
    blocked = members.select(["id_type", "id_value"])
    op = None
    for row in result.profiles.filter(pc.equal(result.profiles["profile_id"], pid)).to_pylist():
        address = (
            {"id": row["cio_person_id"]}
            if row["cio_person_id"]
            else {"email": row["cio_email"]}
            if row["cio_email"]
            else None
        )
        if address is not None:
            payload = {"type": "person", "action": "suppress", "identifiers": address}
            op = CioOp(_key("suppress", address), str(pid), payload)
    return blocked, op
