"""destinations."""

from __future__ import annotations

