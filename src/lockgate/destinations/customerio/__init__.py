"""Customer.io destination: Track v2 batch delivery and App API read-back.

Example::

    from lockgate.destinations.customerio import CustomerIOClient, CustomerIOSettings

    client = CustomerIOClient(CustomerIOSettings.from_env())
    results = client.deliver_all(records)
"""

from __future__ import annotations

from lockgate.destinations.customerio.app_api import AppAPIClient
from lockgate.destinations.customerio.client import CustomerIOClient, DeliveryStats
from lockgate.destinations.customerio.settings import CustomerIOSettings

__all__ = ["AppAPIClient", "CustomerIOClient", "CustomerIOSettings", "DeliveryStats"]
