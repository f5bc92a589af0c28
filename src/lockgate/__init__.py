"""Lockgate: customer data infrastructure for Customer.io.

Warehouse models become Customer.io people, events, objects and relationships;
only changes are sent, events exactly once. See the README for the quick start.
"""

from __future__ import annotations

from lockgate.errors import LockgateError, TerminalError, TransientError

__version__ = "0.1.0.dev0"

__all__ = ["LockgateError", "TerminalError", "TransientError", "__version__"]
