"""A synthetic identity corpus with realistic structure, for tests, benchmarks and demos.

Each person has a user id, one or two emails, maybe a Stripe and a CRM id, and one to five
anonymous ids seen on identify; a few devices are shared by 50 people, a few emails by two
people (families), and some leads exist only as an email and a cookie.

Example::

    config = synthetic_config()
    sources = synthetic_sources(10_000, seed=1)
    result = resolve(config, sources, run_id="demo")
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lockgate.project.identity import IdentityConfig


def synthetic_config() -> IdentityConfig:
    """The identity config the synthetic sources are written for."""
    return IdentityConfig.model_validate(
        {
            "identifier_types": {
                "user_id": {"priority": 1, "limit": 1, "customerio": "id"},
                "email": {"priority": 2, "limit": 5, "customerio": "email"},
                "stripe_customer_id": {"priority": 3, "limit": 2},
                "crm_contact_id": {"priority": 4, "limit": 1},
                "anonymous_id": {
                    "priority": 9,
                    "limit": 25,
                    "bridge_known_profiles": False,
                    "customerio": "anonymous_id",
                },
            },
            "sources": [
                {"name": "app_users", "table": "app_users", "observed_at": "ts"},
                {"name": "stripe_customers", "table": "stripe_customers", "observed_at": "ts"},
                {
                    "name": "crm_contacts",
                    "table": "crm_contacts",
                    "trust": 2,
                    "observed_at": "ts",
                },
                {
                    "name": "identifies",
                    "table": "identifies",
                    "trust": 3,
                    "mode": "append_only",
                    "observed_at": "ts",
                },
            ],
            "rules": {"max_component_size": 200},
        }
    )


def _str(prefix: str, numbers: np.ndarray, suffix: str = "") -> pa.Array:
    out = pc.binary_join_element_wise(prefix, pa.array(numbers).cast(pa.string()), suffix, "")
    return out


def _ts(rng: np.random.Generator, n: int) -> pa.Array:
    base = np.datetime64("2024-01-01T00:00:00", "us").astype(np.int64)
    micros = base + rng.integers(0, 365 * 86_400, n) * 1_000_000
    return pa.array(micros, pa.int64()).cast(pa.timestamp("us", tz="UTC"))


def synthetic_sources(
    n_people: int,
    seed: int = 0,
    *,
    shared_device_every: int = 5_000,
    shared_email_every: int = 2_000,
) -> dict[str, pa.Table]:
    """Source tables for `synthetic_config()`, about 5.5 edges per person."""
    rng = np.random.default_rng(seed)
    person = rng.permutation(n_people).astype(np.int64)
    user = _str("u", person)
    email = _str("p", person, "@ex.com")
    alt = rng.random(n_people) < 0.3
    app_users = pa.table(
        {
            "user_id": pa.concat_arrays([user, user.filter(pa.array(alt))]),
            "email": pa.concat_arrays([email, _str("p", person[alt], ".alt@mail.com")]),
            "ts": _ts(rng, n_people + int(alt.sum())),
        }
    )
    paying = rng.random(n_people) < 0.4
    stripe = pa.table(
        {
            "stripe_customer_id": _str("cus_", person[paying]),
            "email": email.filter(pa.array(paying)),
            "user_id": user.filter(pa.array(paying)),
            "ts": _ts(rng, int(paying.sum())),
        }
    )
    in_crm = rng.random(n_people) < 0.3
    crm_ids = _str("c", person[in_crm])
    crm_email = email.filter(pa.array(in_crm))
    crm_user: list[pa.Array] = [pa.nulls(int(in_crm.sum()), pa.string())]
    # families: one email on two user ids (the limit refuses the second)
    n_fam = max(n_people // shared_email_every, 0)
    if n_fam:
        pairs = rng.choice(n_people, size=(n_fam, 2), replace=False)
        fam_email = _str("family", np.arange(n_fam), "@home.net")
        crm_ids = pa.concat_arrays(
            [crm_ids, _str("cf", np.arange(n_fam)), _str("cg", np.arange(n_fam))]
        )
        crm_email = pa.concat_arrays([crm_email, fam_email, fam_email])
        crm_user += [user.take(pa.array(pairs[:, 0])), user.take(pa.array(pairs[:, 1]))]
    crm = pa.table(
        {
            "crm_contact_id": crm_ids,
            "email": crm_email,
            "user_id": pa.concat_arrays(crm_user),
            "ts": _ts(rng, len(crm_ids)),
        }
    )
    sessions = rng.integers(1, 6, n_people)
    owner = np.repeat(np.arange(n_people), sessions)
    anon = _str("a", np.arange(owner.shape[0]) * 7919 % (owner.shape[0] * 7919 + 1))
    anon_user = user.take(pa.array(owner))
    anon_email = pa.nulls(owner.shape[0], pa.string())
    # shared devices: one anonymous id seen with 50 people
    n_dev = n_people // shared_device_every
    extra_anon: list[pa.Array] = []
    extra_user: list[pa.Array] = []
    for d in range(n_dev):
        who = rng.choice(n_people, size=min(50, n_people), replace=False)
        extra_anon.append(pa.array([f"device{d}"] * len(who), pa.string()))
        extra_user.append(user.take(pa.array(who)))
    # leads: an email seen with a cookie, no user id
    n_leads = n_people // 10
    leads = np.arange(n_leads)
    identifies = pa.table(
        {
            "anonymous_id": pa.concat_arrays([anon, *extra_anon, _str("lead-a", leads)]),
            "user_id": pa.concat_arrays([anon_user, *extra_user, pa.nulls(n_leads, pa.string())]),
            "email": pa.concat_arrays(
                [
                    anon_email,
                    pa.nulls(sum(len(a) for a in extra_anon), pa.string()),
                    _str("lead", leads, "@news.io"),
                ]
            ),
            "ts": _ts(rng, owner.shape[0] + sum(len(a) for a in extra_anon) + n_leads),
        }
    )
    return {
        "app_users": app_users,
        "stripe_customers": stripe,
        "crm_contacts": crm,
        "identifies": identifies,
    }
