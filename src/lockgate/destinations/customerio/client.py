"""The Customer.io delivery client: Track v2 ``/api/v2/batch`` with limits, retries, outcomes.

:class:`CustomerIOClient` implements :class:`~lockgate.destinations.base.Destination`.
It encodes each operation once, packs operations into batch bodies under the byte
limits, paces requests with a token bucket, keeps at most ``concurrency`` batches in
flight over one keep-alive connection pool, and gives every record exactly one
:class:`~lockgate.destinations.base.Result`:

- 200 → every record in the batch is ``DELIVERED``;
- 207 → records named by ``errors[].batch_index`` are ``REJECTED`` with the API's
  reason, the rest ``DELIVERED``;
- 400 / 413 / 422 → the batch is split in halves, recursively, until the bad records
  are alone (``REJECTED``) and the good ones delivered;
- 429, 5xx, timeouts, connection errors → retried with full-jitter exponential backoff
  (a ``Retry-After`` on any of these answers honoured, capped); when retries run out,
  ``DEAD_LETTER`` with the last error;
- 401 / 403 → :class:`~lockgate.errors.DestinationAuthError` for the whole run;
  404 / 405 → :class:`~lockgate.errors.DestinationError` (wrong URL).

Example::

    client = CustomerIOClient(CustomerIOSettings.from_env())
    async for results in client.deliver(records):
        commit(results)
    await client.aclose()
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from lockgate import __version__, stopping
from lockgate.destinations.base import Outcome, Record, Result
from lockgate.destinations.customerio.batching import Batch, PackedBatch, Packer, oversize_reason
from lockgate.destinations.customerio.pacing import TokenBucket, backoff, parse_retry_after
from lockgate.destinations.customerio.settings import CustomerIOSettings, tls_verify
from lockgate.errors import (
    DestinationAuthError,
    DestinationError,
    DestinationTransientError,
    DestinationUnavailableError,
    shorten,
)

BATCH_PATH = "/api/v2/batch"
SPLIT_STATUSES = frozenset({400, 413, 422})
"""Whole-batch rejections worth splitting: some record in the batch is bad."""
AUTH_STATUSES = frozenset({401, 403})
URL_STATUSES = frozenset({404, 405})
ACCEPTED_WHOLE = frozenset(range(200, 300)) - {207}
"""Answers that accept every operation of a batch (207 names the ones it refused)."""
FEED_CHUNK = 4096
"""Records taken from a synchronous iterable per packing step."""

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(slots=True)
class DeliveryStats:
    """Counters for one client, summed over every ``deliver()`` call."""

    requests: int = 0
    """HTTP requests sent, retries and split halves included."""
    retries: int = 0
    """Requests that repeated an earlier one after a transient failure."""
    throttled: int = 0
    """429 responses seen."""
    bytes_sent: int = 0
    """Request body bytes sent."""
    batches: int = 0
    """Batches packed from the input (before any splitting)."""
    splits: int = 0
    """Times a rejected batch was cut in halves."""
    delivered: int = 0
    rejected: int = 0
    dead_lettered: int = 0


@dataclass(frozen=True, slots=True)
class _Answer:
    """The last thing a request produced: a response, or the transient error that ended it."""

    status: int | None
    body: bytes
    attempts: int
    error: DestinationTransientError | None = None
    location: str | None = None


#: characters of an answer of Customer.io kept in a reason (of one error item; of all of them
#: together, :data:`ANSWER_CHARS`): an error may echo the value or the payload sent, which would
#: otherwise flood the report, `lockgate runs show` and the run log (see :func:`shorten`)
ITEM_CHARS = 300
ANSWER_CHARS = 1000


def _clip(text: str, limit: int) -> str:
    return shorten(text, limit=limit, head=limit - 20)


def describe_api_error(error: Any) -> str:
    """One readable line from a Track error item ``{"reason","field","message"}``, each part
    at most :data:`ITEM_CHARS` characters."""
    if not isinstance(error, dict):
        return _clip(str(error), ITEM_CHARS)
    parts = []
    if error.get("reason"):
        parts.append(_clip(str(error["reason"]), ITEM_CHARS))
    if error.get("field"):
        parts.append(f"field `{shorten(str(error['field']))}`")
    if error.get("message"):
        parts.append(_clip(str(error["message"]), ITEM_CHARS))
    return ": ".join(parts) or _clip(orjson.dumps(error).decode(), ITEM_CHARS)


def _loads(body: bytes) -> Any:
    try:
        return orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None


def refused_credentials(
    status: int, track_base: str, *, checking: bool = False
) -> DestinationAuthError:
    """The error for a 401/403 from the Track API; ``checking`` when it is met by `lockgate
    validate --connect` itself (its hint does not suggest running it)."""
    hint = (
        "check CUSTOMERIO_SITE_ID and CUSTOMERIO_API_KEY (a Track API key, not an App API key) "
        "and CUSTOMERIO_REGION (`us` or `eu`)"
    )
    if not checking:
        hint += "; `lockgate validate --connect` checks them without sending anything"
    return DestinationAuthError(
        f"Customer.io refused the Track API credentials (HTTP {status}) at `{track_base}`",
        status=status,
        hint=hint,
    )


def _snippet(body: bytes, limit: int = 300) -> str:
    text = body.decode("utf-8", "replace").strip()
    return text if len(text) <= limit else text[:limit] + "…"


def whole_batch_reason(status: int, body: bytes) -> str:
    """The API's reason for rejecting a whole request, from any of its error shapes."""
    doc = _loads(body)
    found: list[str] = []
    if isinstance(doc, dict):
        errors = doc.get("errors")
        if isinstance(errors, list):
            found += [describe_api_error(e) for e in errors]
        meta = doc.get("meta")
        if isinstance(meta, dict):
            if meta.get("error"):
                found.append(str(meta["error"]))
            if isinstance(meta.get("errors"), list):
                found += [str(e) for e in meta["errors"]]
    detail = _clip("; ".join(found), ANSWER_CHARS) if found else (_snippet(body) or "no body")
    return f"HTTP {status}: {detail}"


def indexed_errors(body: bytes, size: int) -> dict[int, str] | None:
    """Map ``errors[].batch_index`` to reasons, or ``None`` if any error can't be placed."""
    doc = _loads(body)
    if not isinstance(doc, dict) or not isinstance(doc.get("errors"), list):
        return None
    mapped: dict[int, str] = {}
    for error in doc["errors"]:
        index = error.get("batch_index") if isinstance(error, dict) else None
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < size:
            return None
        reason = describe_api_error(error)
        mapped[index] = f"{mapped[index]}; {reason}" if index in mapped else reason
    return {i: _clip(reason, ANSWER_CHARS) for i, reason in mapped.items()}


class CustomerIOClient:
    """Delivers Track v2 batch operations to Customer.io; see the module docstring.

    ``transport`` replaces the network (``httpx.ASGITransport(emulator.app)`` in tests);
    ``clock``/``sleep``/``rng`` replace time and randomness for tests.

    Example::

        client = CustomerIOClient(CustomerIOSettings(site_id="s", api_key="k",
                                                     track_url="http://127.0.0.1:8765"))
        results = client.deliver_all([Record("42", {"type": "person", "action": "identify",
                                                    "identifiers": {"id": "42"}})])
    """

    def __init__(
        self,
        settings: CustomerIOSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        settings.require_track()
        self.settings = settings
        self.stats = DeliveryStats()
        self._transport = transport
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._bucket = TokenBucket(settings.rate_limit, settings.rate_burst)
        self._http: httpx.AsyncClient | None = None
        self._failed_in_a_row = 0
        """Batches whose every attempt failed since the last request that got an answer."""
        self.on_retry: Callable[[str, int, float], None] | None = None
        """Told ``(error, attempt, delay)`` before each wait to retry a request: what went
        wrong, the attempt that failed (1 for the first), and the seconds until the next."""

    def __repr__(self) -> str:
        return f"CustomerIOClient({self.settings!r})"

    # -- connection ---------------------------------------------------------------------

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            s = self.settings
            self._http = httpx.AsyncClient(
                base_url=s.track_base,
                verify=tls_verify(s.track_base),
                auth=httpx.BasicAuth(s.site_id, s.api_key),
                headers={
                    "Content-Type": "application/json",
                    "User-Agent": f"lockgate/{__version__}",
                },
                timeout=httpx.Timeout(s.timeout),
                limits=httpx.Limits(
                    max_connections=s.concurrency, max_keepalive_connections=s.concurrency
                ),
                transport=self._transport,
            )
        return self._http

    async def aclose(self) -> None:
        """Close the connection pool; a later ``deliver()`` opens a new one."""
        if self._http is not None:
            http, self._http = self._http, None
            await http.aclose()

    # -- the Destination protocol ---------------------------------------------------------

    async def deliver(
        self, records: Iterable[Record] | AsyncIterable[Record]
    ) -> AsyncIterator[list[Result]]:
        """Deliver ``records``; yield each batch's results as soon as that batch is finished.

        Operations over 32 KB are yielded as ``REJECTED`` without being sent. Raises
        :class:`~lockgate.errors.DestinationAuthError` (401/403) or
        :class:`~lockgate.errors.DestinationError` (wrong URL) for the whole run.
        """

        async def run(batch: Batch) -> list[Result]:
            return await self._deliver_batch(batch, 0)

        async for results in self._in_flight(self._batches(records), run):
            yield results

    async def deliver_packed(
        self, batches: AsyncIterable[PackedBatch | list[Result]]
    ) -> AsyncIterator[tuple[PackedBatch, int, list[Result] | None] | list[Result]]:
        """Deliver batches the caller packed itself (see :class:`PackedBatch`).

        Yields ``(batch, status, None)`` when the whole batch was accepted (the common case:
        no per-record objects are made), or ``(batch, status, results)`` with one result per
        record when the answer needed per-record handling (207, a split, dead letters), in
        which case ``batch.unpack()`` supplied the records. ``list[Result]`` items in the
        input (records the caller refused before packing) pass straight through. Same
        pacing, concurrency, retries and run-wide errors as :meth:`deliver`.
        """

        async def run(
            packed: PackedBatch,
        ) -> tuple[PackedBatch, int, list[Result] | None]:
            answer = await self._post(packed.body)
            status = answer.status
            if answer.error is None and status is not None and status in ACCEPTED_WHOLE:
                self.stats.delivered += packed.size
                return packed, status, None
            try:
                return packed, status or 0, await self._answered(packed.unpack(), answer, 0)
            except DestinationUnavailableError as exc:  # yielded as this batch's outcome
                exc.settled = (packed, status or 0, exc.settled)
                raise

        async for item in self._in_flight(batches, run):
            yield item

    async def _in_flight(
        self,
        jobs: AsyncIterable[Any],
        run: Callable[[Any], Awaitable[Any]],
    ) -> AsyncIterator[Any]:
        """Run ``run(job)`` for each job with at most ``concurrency`` in flight, yielding each
        output as soon as it is ready; ``list`` jobs (refused records) pass through as they
        are. A run-wide error from a job or from ``jobs`` itself is raised here. Once a stop
        is asked for (:mod:`lockgate.stopping`), no job is started; those running finish."""
        concurrency = self.settings.concurrency
        slots = asyncio.Semaphore(concurrency)
        done = object()
        out: asyncio.Queue[Any] = asyncio.Queue(maxsize=2 * concurrency)
        tasks: set[asyncio.Task[None]] = set()

        async def run_one(job: Any) -> None:
            try:
                result = await run(job)
            except Exception as exc:  # handed to the consumer, who re-raises it
                await out.put(exc)
                return
            finally:
                slots.release()
            await out.put(result)

        async def produce() -> None:
            try:
                async for job in jobs:
                    if isinstance(job, list):  # refused before sending
                        await out.put(job)
                        continue
                    await slots.acquire()
                    if stopping.requested():  # SIGTERM: the batches in flight still finish
                        slots.release()
                        break
                    self.stats.batches += 1
                    task = asyncio.create_task(run_one(job))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    await asyncio.sleep(0)  # let the new batch start before packing more
                while tasks:
                    await asyncio.gather(*list(tasks))
                await out.put(done)
            except Exception as exc:  # a failing source, or a run-wide destination error
                await out.put(exc)

        producer = asyncio.create_task(produce())
        try:
            while True:
                item = await out.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    settled = getattr(item, "settled", None)
                    if settled is not None:  # the outcome of the batch that stopped the run
                        yield settled
                    raise item
                yield item
        finally:
            producer.cancel()
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(producer, *tasks, return_exceptions=True)

    def deliver_all(self, records: Iterable[Record]) -> list[Result]:
        """Synchronous convenience: run ``deliver()`` to the end and return every result."""

        async def run() -> list[Result]:
            results: list[Result] = []
            try:
                async for chunk in self.deliver(records):
                    results.extend(chunk)
            finally:
                await self.aclose()
            return results

        return asyncio.run(run())

    # -- packing --------------------------------------------------------------------------

    async def _batches(
        self, records: Iterable[Record] | AsyncIterable[Record]
    ) -> AsyncIterator[Batch | list[Result]]:
        """Encode and pack; oversize operations come out as lists of REJECTED results."""
        packer = Packer(
            max_bytes=self.settings.max_batch_bytes, max_ops=self.settings.max_batch_ops
        )

        def rejected(oversize: list[tuple[str, int]]) -> list[Result]:
            self.stats.rejected += len(oversize)
            return [
                Result(key, Outcome.REJECTED, None, oversize_reason(size), 0)
                for key, size in oversize
            ]

        if isinstance(records, AsyncIterable):
            async for record in records:
                full, oversize = packer.feed((record,))
                if oversize:
                    yield rejected(oversize)
                for batch in full:
                    yield batch
        else:
            iterator = iter(records)
            while chunk := list(itertools.islice(iterator, FEED_CHUNK)):
                full, oversize = packer.feed(chunk)
                if oversize:
                    yield rejected(oversize)
                for batch in full:
                    yield batch
        last = packer.flush()
        if last is not None:
            yield last

    # -- one batch ------------------------------------------------------------------------

    async def _deliver_batch(self, batch: Batch, prior: int) -> list[Result]:
        """Send ``batch`` as one request (retrying) and settle each of its records.

        ``prior`` counts the requests that already carried these records (before a split).
        """
        return await self._answered(batch, await self._post(batch.body()), prior)

    async def _answered(self, batch: Batch, answer: _Answer, prior: int) -> list[Result]:
        """Settle each record of ``batch`` from the final answer to its request."""
        attempts = prior + answer.attempts
        status = answer.status
        if answer.error is not None:
            self._failed_in_a_row += 1
            stop = self.settings.stop_after_failed_batches
            if stop and self._failed_in_a_row >= stop:
                unavailable = DestinationUnavailableError(
                    f"`{self.settings.track_shown}` is down or unreachable: "
                    f"{self._failed_in_a_row} batches in a row failed {attempts} "
                    f"attempt{'' if attempts == 1 else 's'} each "
                    f"(last: {answer.error}); the run stopped, and records not delivered wait "
                    "for the next run",
                    status=status,
                    hint="check that Customer.io answers (CUSTOMERIO_TRACK_URL, CUSTOMERIO_REGION, "
                    "the network or proxy, status.customer.io), then run again; "
                    "`stop_after_failed_batches` sets how many failed batches stop a run",
                )
                # this batch was sent too: its records are dead letters of the run it stops
                unavailable.settled = self._settle(
                    batch, Outcome.DEAD_LETTER, status, str(answer.error), attempts
                )
                raise unavailable
            return self._settle(batch, Outcome.DEAD_LETTER, status, str(answer.error), attempts)
        assert status is not None
        if 200 <= status < 300 and status != 207:
            return self._settle(batch, Outcome.DELIVERED, status, None, attempts)
        if status == 207:
            mapped = indexed_errors(answer.body, len(batch))
            if mapped is not None:
                return self._settle_indexed(batch, mapped, status, attempts)
            # A 207 we cannot attribute: isolate by splitting (identify and events with
            # an `id` are safe to apply twice).
            return await self._split(batch, status, answer.body, attempts)
        if status in AUTH_STATUSES:
            raise refused_credentials(status, self.settings.track_shown)
        if 300 <= status < 400:
            location = answer.location or "no Location header"
            raise DestinationError(
                f"`{self.settings.track_shown}{BATCH_PATH}` redirected (HTTP {status}) to "
                f"`{location}`",
                status=status,
                hint="Customer.io redirects traffic sent to the other region's host; set "
                "CUSTOMERIO_REGION to your workspace's region (`us` or `eu`)",
            )
        if status in URL_STATUSES:
            raise DestinationError(
                f"`{self.settings.track_shown}{BATCH_PATH}` answered HTTP {status}: "
                f"{_snippet(answer.body)}",
                status=status,
                hint="check CUSTOMERIO_TRACK_URL (unset it to use the region's host)",
            )
        if status == 400:
            mapped = indexed_errors(answer.body, len(batch))
            if mapped:  # the server named the bad records: reject them, resend the rest
                results = [
                    Result(batch.keys[i], Outcome.REJECTED, status, reason, attempts)
                    for i, reason in sorted(mapped.items())
                ]
                self.stats.rejected += len(results)
                rest = batch.without(mapped)
                if len(rest):
                    try:
                        results += await self._deliver_batch(rest, attempts)
                    except DestinationUnavailableError as exc:  # the rejected go with it
                        exc.settled = results + list(exc.settled or ())
                        raise
                return results
        if status in SPLIT_STATUSES:
            return await self._split(batch, status, answer.body, attempts)
        # Anything else (409, 415, ...) is not about one record: splitting would send
        # every record alone to get the same answer. Stop the run instead.
        raise DestinationError(
            f"unexpected answer from `{self.settings.track_shown}{BATCH_PATH}`: "
            f"{whole_batch_reason(status, answer.body)}",
            status=status,
            hint="check CUSTOMERIO_TRACK_URL and any proxy in between; report this if it persists",
        )

    async def _split(self, batch: Batch, status: int, body: bytes, attempts: int) -> list[Result]:
        if len(batch) == 1:
            reason = whole_batch_reason(status, body)
            return self._settle(batch, Outcome.REJECTED, status, reason, attempts)
        self.stats.splits += 1
        left, right = batch.halves()
        first = await self._deliver_batch(left, attempts)
        try:
            return first + await self._deliver_batch(right, attempts)
        except DestinationUnavailableError as exc:  # the first half's outcomes go with it
            exc.settled = first + list(exc.settled or ())
            raise

    def _settle(
        self, batch: Batch, outcome: Outcome, status: int | None, reason: str | None, n: int
    ) -> list[Result]:
        if outcome is Outcome.DELIVERED:
            self.stats.delivered += len(batch)
        elif outcome is Outcome.REJECTED:
            self.stats.rejected += len(batch)
        else:
            self.stats.dead_lettered += len(batch)
        return [Result(key, outcome, status, reason, n) for key in batch.keys]

    def _settle_indexed(
        self, batch: Batch, mapped: dict[int, str], status: int, n: int
    ) -> list[Result]:
        self.stats.rejected += len(mapped)
        self.stats.delivered += len(batch) - len(mapped)
        return [
            Result(key, Outcome.REJECTED, status, mapped[i], n)
            if i in mapped
            else Result(key, Outcome.DELIVERED, status, None, n)
            for i, key in enumerate(batch.keys)
        ]

    # -- one request, with retries --------------------------------------------------------

    async def _post(self, body: bytes) -> _Answer:
        """POST ``body`` until it gets a non-transient answer or retries run out."""
        s = self.settings
        http = self._client()
        attempt = 0
        while True:
            attempt += 1
            await self._bucket.acquire(self._clock, self._sleep)
            self.stats.requests += 1
            self.stats.bytes_sent += len(body)
            if attempt > 1:
                self.stats.retries += 1
            error: DestinationTransientError
            try:
                response = await http.post(BATCH_PATH, content=body)
            except httpx.TimeoutException as exc:
                error = DestinationTransientError(
                    f"timed out after {s.timeout:g} s ({type(exc).__name__})"
                )
            except httpx.TransportError as exc:
                error = DestinationTransientError(
                    f"connection error: {type(exc).__name__}: {exc or 'no detail'}"
                )
            else:
                status = response.status_code
                if status != 429 and status != 408 and status < 500:
                    self._failed_in_a_row = 0  # Customer.io answers
                    location = response.headers.get("location")
                    return _Answer(status, response.content, attempt, location=location)
                if status == 429:
                    self.stats.throttled += 1
                # honoured on a 503 (or any answer retried) as on a 429: a server down for
                # maintenance that says how long would otherwise be retried too early until
                # the retries ran out
                retry_after = parse_retry_after(
                    response.headers.get("retry-after"), now=time.time(), cap=s.retry_after_cap
                )
                error = DestinationTransientError(
                    f"HTTP {status} from Customer.io: {_snippet(response.content) or 'no body'}",
                    status=status,
                    retry_after=retry_after,
                )
            # once a stop is asked for, a failed request is not tried again: its records go
            # out with the next run
            if attempt > s.max_retries or stopping.requested():
                return _Answer(error.status, b"", attempt, error)
            await self._wait(attempt, error)

    async def _wait(self, attempt: int, error: DestinationTransientError) -> None:
        delay = self._delay(attempt, error)
        if self.on_retry is not None:
            self.on_retry(error.reason, attempt, delay)
        if delay > 0:
            await self._sleep(delay)

    def _delay(self, attempt: int, error: DestinationTransientError) -> float:
        s = self.settings
        if error.retry_after:  # `Retry-After: 0` (or a past date) falls back to the backoff
            delay = error.retry_after
            # Every worker holds back, not just this one: the limit is per account.
            now = self._clock()
            self._bucket.defer(now, now + delay)
        else:
            delay = backoff(attempt, base=s.backoff_base, cap=s.backoff_cap, rng=self._rng)
        return delay
