from __future__ import annotations

from lockgate.cli import entry

entry()
