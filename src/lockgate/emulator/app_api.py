"""App API read-back subset under ``/v1/...`` (Bearer auth)."""

from __future__ import annotations

from lockgate.emulator.runtime import Handler

ROUTES: list[tuple[str, Handler, str]] = []
