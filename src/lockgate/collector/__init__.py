"""collector."""

from __future__ import annotations
