"""customerio."""

from __future__ import annotations

