"""Identity resolution: stitch identifiers into profiles, with limits, for Customer.io.

The sync engine calls :func:`resolve` once per run with each identity source's rows and the
previous run's state, writes the analyst tables (`IdentityResult.tables()`), resolves its rows
with :class:`Resolver`, and plans Customer.io calls with :func:`plan_customerio`.

Example::

    from lockgate.identity import Resolver, plan_customerio, resolve

    result = resolve(config, {"app_users": users}, run_id=run_id, state=previous)
    rows = Resolver(config, result).resolve_table(people)
    ops = plan_customerio(result, config, exists=known_people).ops
"""

from __future__ import annotations

from lockgate.identity.customerio import CioOp, CioPlan, plan_customerio, tombstone
from lockgate.identity.engine import resolve
from lockgate.identity.explain import Explanation, ResolvedRow, Resolver, RulesPlan, explain, plan
from lockgate.identity.state import IdentityResult, IdentityState

__all__ = [
    "CioOp",
    "CioPlan",
    "Explanation",
    "IdentityResult",
    "IdentityState",
    "ResolvedRow",
    "Resolver",
    "RulesPlan",
    "explain",
    "plan",
    "plan_customerio",
    "resolve",
    "tombstone",
]
