"""sync."""

from __future__ import annotations
