"""The public surface the sync engine codes against."""

from __future__ import annotations

import lockgate.destinations as destinations
import lockgate.destinations.customerio as customerio
from lockgate.destinations import Destination, Outcome, Result
from lockgate.destinations.customerio import CustomerIOClient, CustomerIOSettings


def test_exported_members() -> None:
    assert sorted(destinations.__all__) == ["Destination", "Outcome", "Record", "Result"]
    assert sorted(customerio.__all__) == [
        "AppAPIClient",
        "CustomerIOClient",
        "CustomerIOSettings",
        "DeliveryStats",
    ]


def test_the_customerio_client_is_a_destination() -> None:
    destination: Destination = CustomerIOClient(CustomerIOSettings(site_id="s", api_key="k"))
    assert callable(destination.deliver) and callable(destination.aclose)
    assert [o.value for o in Outcome] == ["delivered", "rejected", "dead_letter"]
    assert Result("k", Outcome.DELIVERED, 200, None, 1).outcome == "delivered"
