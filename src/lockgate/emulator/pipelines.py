"""Pipelines (CDP) API: ``POST /v1/{identify,track,page,screen,group,alias,batch}``."""

from __future__ import annotations

from lockgate.emulator.runtime import Handler

ROUTES: list[tuple[str, Handler]] = []
