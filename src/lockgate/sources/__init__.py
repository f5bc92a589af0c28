"""sources."""

from __future__ import annotations

