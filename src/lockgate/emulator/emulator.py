"""The :class:`Emulator`: one emulated Customer.io workspace with its ASGI app and accessors."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from lockgate.emulator.app import EmulatorASGI, build_app
from lockgate.emulator.config import EmulatorConfig, FaultConfig
from lockgate.emulator.models import (
    Activity,
    Event,
    Merge,
    Object,
    Person,
    Relationship,
    RequestRecord,
)
from lockgate.emulator.runtime import Runtime, Stats
from lockgate.emulator.server import serve_in_thread
from lockgate.emulator.transport import SyncASGITransport


class Emulator:
    """A local Customer.io: Track v1/v2, Pipelines and App API on one ASGI app.

    ``emu.app`` is the ASGI app (use it with ``httpx.ASGITransport``); ``emu.serve()`` runs it
    on a loopback port. The accessors return frozen snapshots of the workspace.

    Example::

        emu = Emulator()
        with emu.serve(port=0) as base_url:
            httpx.put(f"{base_url}/api/v1/customers/42", json={"plan": "pro"},
                      auth=emu.track_auth)
        assert emu.person(id="42").attributes["plan"] == "pro"
    """

    def __init__(self, config: EmulatorConfig | None = None, *, request_log_max: int = 10_000):
        self.config = config or EmulatorConfig()
        self._rt = Runtime(self.config, request_log_max=request_log_max)
        self.app: EmulatorASGI = build_app(self._rt)
        self.base_url: str | None = None
        """Set while :meth:`serve` runs (e.g. ``http://127.0.0.1:54321``)."""
        self.ca_cert: Path | None = None
        """The CA certificate to trust while :meth:`serve` runs with ``tls=True``."""

    def own_process(self) -> None:
        """Tune Python's cyclic garbage collector for a process that runs nothing but this
        emulator (``lockgate emulator`` does): what exists now, and the people and records each
        apply of accepted Track v2 operations creates, are frozen out of the collector's scans
        (see :attr:`Store.freeze_applied`). Process-wide: not for an emulator inside tests or
        another program.

        Example::

            emu = Emulator(config)
            emu.own_process()  # a process of its own, as `lockgate emulator` is
            uvicorn.Server(uvicorn.Config(emu.app, port=8765)).run()
        """
        gc.collect()
        gc.freeze()
        self._rt.store.freeze_applied = True

    def set_faults(self, faults: FaultConfig) -> None:
        """Change the faults while the emulator runs, keeping its workspace: a Customer.io
        that starts failing between two runs, or recovers (``FaultConfig()``). Fault draws
        start again from ``faults.seed``.

        Example::

            emu.set_faults(FaultConfig(error_5xx=1.0, applied_then_failed=True))
            ...  # a run whose requests are applied but never answered 200
            emu.set_faults(FaultConfig())
        """
        config = dataclasses.replace(self.config, faults=faults)
        self.config = self._rt.config = self._rt.store.config = config
        self._rt.injector.config = config
        self._rt.injector.reset()

    # -- credentials ---------------------------------------------------------------------------

    @property
    def track_auth(self) -> tuple[str, str]:
        """``(site_id, api_key)`` for Track v1/v2 Basic auth."""
        return (self.config.site_id, self.config.api_key)

    @property
    def pipelines_auth(self) -> tuple[str, str]:
        """``(write_key, "")`` for Pipelines Basic auth."""
        return (self.config.write_key, "")

    @property
    def app_headers(self) -> dict[str, str]:
        """``Authorization: Bearer`` header for the App API."""
        return {"Authorization": f"Bearer {self.config.app_api_key}"}

    # -- serving -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def serve(self, port: int = 0, host: str = "127.0.0.1", tls: bool = False) -> Iterator[str]:
        """Run the app with uvicorn in a background thread; yields the base URL."""
        with serve_in_thread(self.app, host=host, port=port, tls=tls) as (url, files):
            self.base_url = url
            self.ca_cert = files.ca_cert if files else None
            try:
                yield url
            finally:
                self.base_url = None
                self.ca_cert = None

    def client(self, **kwargs: Any) -> httpx.Client:
        """A synchronous in-process ``httpx.Client`` for this app (no sockets).

        Pass ``auth=emu.track_auth`` and so on; ``base_url`` defaults to ``http://emulator``.
        """
        kwargs.setdefault("base_url", "http://emulator")
        return httpx.Client(transport=self.transport(), **kwargs)

    def transport(self) -> SyncASGITransport:
        """A sync ``httpx`` transport into this app, for code that takes an ``httpx.Client``."""
        return SyncASGITransport(self.app)

    def async_transport(self) -> httpx.ASGITransport:
        """``httpx.ASGITransport(app=emu.app)`` for an ``httpx.AsyncClient``."""
        return httpx.ASGITransport(app=self.app)

    # -- accessors -----------------------------------------------------------------------------

    def people(self) -> list[Person]:
        return self._rt.store.snapshot_people()

    def person(
        self,
        *,
        id: str | None = None,
        email: str | None = None,
        cio_id: str | None = None,
        phone: str | None = None,
    ) -> Person | None:
        """The person with this identifier (email case-insensitive), or None."""
        given = [
            (k, v)
            for k, v in (("id", id), ("email", email), ("cio_id", cio_id), ("phone", phone))
            if v is not None
        ]
        if len(given) != 1:
            raise TypeError("person() takes exactly one of id=, email=, cio_id=, phone=")
        store = self._rt.store
        with store.lock:
            p = store.resolve(given[0])
            return p.freeze() if p else None

    def events(self, person: str | Person | None = None) -> list[Event]:
        """All events, or those of one person (a :class:`Person` or a cio_id)."""
        cio = person.cio_id if isinstance(person, Person) else person
        store = self._rt.store
        with store.lock:
            return [e for e in store.events if cio is None or e.person == cio]

    def delete_event(self, event_id: str) -> bool:
        """Take a stored event out (as if Customer.io lost it); False when no event has the id.
        Its id stays known, so an event sent again with it is still a duplicate dropped."""
        store = self._rt.store
        with store.lock:
            kept = [e for e in store.events if e.id != event_id]
            found = len(kept) < len(store.events)
            store.events = kept
            return found

    def objects(self) -> list[Object]:
        with self._rt.store.lock:
            return list(self._rt.store.objects.values())

    def relationships(self) -> list[Relationship]:
        return self._rt.store.snapshot_relationships()

    def merges(self) -> list[Merge]:
        with self._rt.store.lock:
            return list(self._rt.store.merges)

    def activity_log(self) -> list[Activity]:
        with self._rt.store.lock:
            return list(self._rt.store.activity)

    def request_log(self) -> list[RequestRecord]:
        return self._rt.request_log()

    @property
    def stats(self) -> Stats:
        return self._rt.stats()

    def reset(self) -> None:
        """Forget all state and counters; also re-seeds faults and refills rate limiters."""
        self._rt.reset()
