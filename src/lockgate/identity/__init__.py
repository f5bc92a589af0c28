"""identity."""

from __future__ import annotations
