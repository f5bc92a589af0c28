"""The identity state machine of test_identity_properties.py with its `users` sync a `mirror`
(without `delete_removed`): a user whose row leaves has their person's attributes cleared
(their `plan` among them), and the person stays in Customer.io with their `id` and email,
no longer in the sync's snapshot. The invariants are the machine's, but for (b): a user
whose row left and came back has the `plan` their rows gave since, null if none did (the
clear took the one before). What this adds is a person the snapshot no longer shows that
later runs must still count as existing (docs/sync.md, "People Lockgate made exist"): a user
who comes back with the email of a lead's person has that person merged into theirs.

`LOCKGATE_PROPERTY_EXAMPLES=8 LOCKGATE_PROPERTY_STEPS=12` explores more than CI's few
derandomized examples.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis.stateful import run_state_machine_as_test
from tests.sync.helpers import bind_machine, property_settings
from tests.sync.test_identity_properties import SYNCS, IdentityMachine

from lockgate.emulator import Emulator


class MirrorIdentityMachine(IdentityMachine):
    """:class:`IdentityMachine` with the `users` sync in `mirror` mode."""

    def __init__(self) -> None:
        # the machine writes the syncs of ``SYNCS`` as it starts; restored after the test
        users = SYNCS["users"]
        if "mode:" not in users:
            self.monkeypatch.setitem(SYNCS, "users", users.rstrip(" ") + "        mode: mirror\n")
        super().__init__()

    def _expect(self) -> None:
        # the run cleared the person of each user whose row left: the `plan` they had is gone
        for uid in self.plan_of.keys() - self.users.keys():
            self.plan_of[uid] = None
        super()._expect()


SETTINGS = property_settings(examples=2, steps=6)


def test_people_keyed_through_the_identity_graph_with_a_mirror_users_sync_are_one_person_each(
    customerio_emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bind_machine(MirrorIdentityMachine, customerio_emulator, tmp_path, monkeypatch)
    run_state_machine_as_test(MirrorIdentityMachine, settings=SETTINGS)
