"""Destinations: where delivered records go. ``base.py`` holds the protocol.

Customer.io (``destinations.customerio``) is the first implementation.
"""

from __future__ import annotations

from lockgate.destinations.base import Destination, Outcome, Record, Result

__all__ = ["Destination", "Outcome", "Record", "Result"]
