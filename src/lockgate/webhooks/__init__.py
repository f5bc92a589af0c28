"""Customer.io reporting webhooks into the warehouse (docs/webhooks.md).

``app.py`` receives (signature, envelope, 200 only once durable), ``spool.py`` is the durable
group-commit store, ``load.py`` loads spooled events with dlt, ``loop.py`` runs the local
emulator → webhooks → warehouse → sync loop, ``errors.py`` holds the JSON error shape shared by
Lockgate's HTTP surfaces.

Example::

    from lockgate.webhooks import Spool, create_app, load_pending

    app = create_app(spool=Spool(folder), signing_key=key)   # any ASGI server
    load_pending(project)                                     # into the warehouse
"""

from __future__ import annotations

from lockgate.webhooks.app import create_app
from lockgate.webhooks.load import BackgroundLoader, LoadResult, load_pending
from lockgate.webhooks.spool import Spool
from lockgate.webhooks.verify import sign, verify

__all__ = [
    "BackgroundLoader",
    "LoadResult",
    "Spool",
    "create_app",
    "load_pending",
    "sign",
    "verify",
]
