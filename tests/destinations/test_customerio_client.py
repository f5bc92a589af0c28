"""The Customer.io delivery client against the real emulator (loopback HTTP or ASGI in-process).

Every test checks what a user of a sync cares about: which records arrived in the workspace,
and that every record got exactly one outcome with a useful reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import pytest

from lockgate.destinations import Outcome, Record, Result
from lockgate.destinations.customerio import CustomerIOClient, CustomerIOSettings
from lockgate.emulator import Emulator, EmulatorConfig, FaultConfig
from lockgate.errors import DestinationAuthError, DestinationError, DestinationUnavailableError


def identify(i: int, **attributes: Any) -> Record:
    attributes.setdefault("plan", "pro" if i % 2 else "free")
    attributes.setdefault("seats", i)
    op = {
        "type": "person",
        "action": "identify",
        "identifiers": {"id": f"u{i}"},
        "attributes": {"email": f"u{i}@example.com", **attributes},
    }
    return Record(f"u{i}", op)


def event(i: int, person: int) -> Record:
    op = {
        "type": "person",
        "action": "event",
        "identifiers": {"id": f"u{person}"},
        "name": "purchased",
        "id": f"01JD{i:022d}",
        "timestamp": 1_790_000_000 + i,
        "attributes": {"amount": i},
    }
    return Record(f"ev{i}", op)


def settings_for(
    emu: Emulator, url: str = "http://emulator", **overrides: Any
) -> CustomerIOSettings:
    site_id, api_key = emu.track_auth
    return CustomerIOSettings(
        site_id=site_id, api_key=api_key, track_url=url, backoff_base=0.01, **overrides
    )


def in_process(emu: Emulator, **overrides: Any) -> CustomerIOClient:
    return CustomerIOClient(settings_for(emu, **overrides), transport=emu.async_transport())


def by_key(results: list[Result]) -> dict[str, Result]:
    keyed = {r.key: r for r in results}
    assert len(keyed) == len(results), "a record got more than one result"
    return keyed


def workspace(emu: Emulator) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The emulator's people and events, without server-assigned ids and clocks."""
    people = sorted(
        (p.id, p.email, orjson.dumps(p.attributes, option=orjson.OPT_SORT_KEYS))
        for p in emu.people()
    )
    owner = {p.cio_id: p.id for p in emu.people()}
    events = sorted(
        (owner.get(e.person or ""), e.name, e.id, orjson.dumps(e.data, option=orjson.OPT_SORT_KEYS))
        for e in emu.events()
    )
    return people, events


def test_identify_records_arrive_with_their_attributes_over_loopback() -> None:
    emu = Emulator()
    records = [identify(i) for i in range(300)]
    with emu.serve(port=0) as base_url:
        client = CustomerIOClient(settings_for(emu, base_url))
        results = client.deliver_all(records)
    assert {r.outcome for r in results} == {Outcome.DELIVERED}
    assert set(by_key(results)) == {r.key for r in records}
    person = emu.person(id="u7")
    assert person is not None
    assert person.email == "u7@example.com"
    assert person.attributes == {"plan": "pro", "seats": 7}
    assert len(emu.people()) == 300
    assert client.stats.delivered == 300 and client.stats.requests == client.stats.batches == 1


def test_one_invalid_op_among_good_ones_is_rejected_with_the_api_reason() -> None:
    emu = Emulator()
    bad = Record("broken", {"type": "person", "action": "identify", "identifiers": {}})
    records = [identify(i) for i in range(5)] + [bad] + [identify(i) for i in range(5, 10)]
    results = by_key(in_process(emu).deliver_all(records))
    rejected = results.pop("broken")
    assert rejected.outcome is Outcome.REJECTED and rejected.status == 207
    assert rejected.reason is not None and "identifiers" in rejected.reason
    assert {r.outcome for r in results.values()} == {Outcome.DELIVERED}
    assert sorted(p.id or "" for p in emu.people()) == sorted(f"u{i}" for i in range(10))


def test_a_batch_rejected_whole_is_split_until_the_bad_record_is_alone() -> None:
    emu = Emulator()
    corrupt = Record("corrupt", b'{"type":"person","action":"identify","identifiers":{"id":')
    records = [identify(i) for i in range(40)]
    records.insert(23, corrupt)
    client = in_process(emu)
    results = by_key(client.deliver_all(records))
    assert results["corrupt"].outcome is Outcome.REJECTED
    assert results["corrupt"].status == 400
    assert "HTTP 400" in (results["corrupt"].reason or "")
    delivered = {k for k, r in results.items() if r.outcome is Outcome.DELIVERED}
    assert delivered == {f"u{i}" for i in range(40)}
    assert len(emu.people()) == 40
    assert client.stats.splits >= 5  # about log2(41) halvings isolate one record


def test_an_op_over_32kb_never_reaches_the_network_but_one_at_the_limit_does() -> None:
    emu = Emulator()
    base = {"type": "person", "action": "identify", "identifiers": {"id": "big"}}
    # Attribute values are limited to 1000 bytes, so fill 32 KB with many attributes.
    attributes = {f"a{n}": "x" * 900 for n in range(35)}
    size = len(orjson.dumps({**base, "attributes": {**attributes, "pad": ""}}))
    attributes["pad"] = "y" * (32 * 1024 - size)
    at_limit = Record("big", {**base, "attributes": attributes})
    assert len(orjson.dumps(at_limit.op)) == 32 * 1024
    huge = {f"a{n}": "x" * 900 for n in range(40)}
    over = Record("huge", {**base, "identifiers": {"id": "huge"}, "attributes": huge})
    results = by_key(in_process(emu).deliver_all([at_limit, over, identify(1)]))
    assert results["huge"].outcome is Outcome.REJECTED
    assert results["huge"].attempts == 0 and results["huge"].status is None
    assert "32,768 bytes" in (results["huge"].reason or "")
    assert results["big"].outcome is Outcome.DELIVERED
    assert emu.person(id="huge") is None and emu.person(id="big") is not None


def test_results_come_per_batch_from_an_async_source() -> None:
    emu = Emulator()

    async def source() -> AsyncIterator[Record]:
        for i in range(35):
            yield identify(i)
            await asyncio.sleep(0)

    async def run() -> list[list[Result]]:
        client = in_process(emu, max_batch_ops=10)
        try:
            return [chunk async for chunk in client.deliver(source())]
        finally:
            await client.aclose()

    chunks = asyncio.run(run())
    assert sorted(len(c) for c in chunks) == [5, 10, 10, 10]
    assert len({r.key for c in chunks for r in c}) == 35


def test_429_retry_after_is_honoured_and_nothing_is_lost() -> None:
    emu = Emulator(EmulatorConfig(faults=FaultConfig(error_429=0.3, seed=1, retry_after_s=1)))
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        await asyncio.sleep(seconds)

    client = CustomerIOClient(
        settings_for(emu, max_batch_ops=10, concurrency=1, rate_limit=1000.0),
        transport=emu.async_transport(),
        sleep=sleep,
    )
    results = client.deliver_all([identify(i) for i in range(60)])
    assert {r.outcome for r in results} == {Outcome.DELIVERED}
    assert client.stats.throttled >= 1
    # Each 429 said "Retry-After: 1": the client waited at least that long every time.
    assert sum(1 for w in waits if w >= 1.0) == client.stats.throttled
    assert len(emu.people()) == 60


def test_a_429_saying_retry_after_0_still_backs_off() -> None:
    """`Retry-After: 0` from a server still over its limit would burn every retry at once
    and dead-letter the records: the client backs off as for a 5xx instead."""
    emu = Emulator(EmulatorConfig(faults=FaultConfig(error_429=0.5, seed=3, retry_after_s=0)))
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)  # not slept: only the choice of delay matters here

    client = CustomerIOClient(  # a rate limit that never waits: every wait is a retry's
        settings_for(emu, max_batch_ops=10, concurrency=1, rate_limit=1e9),
        transport=emu.async_transport(),
        sleep=sleep,
    )
    results = client.deliver_all([identify(i) for i in range(60)])
    assert {r.outcome for r in results} == {Outcome.DELIVERED}
    assert client.stats.throttled >= 1
    assert sum(1 for w in waits if w > 0) >= client.stats.throttled


def mixed_records() -> list[Record]:
    records = [identify(i) for i in range(600)]
    records += [event(i, person=i % 600) for i in range(400)]
    return records


@pytest.mark.parametrize("applied_then_failed", [False, True], ids=["not-applied", "applied"])
def test_under_faults_every_record_is_accounted_for_and_the_workspace_matches(
    applied_then_failed: bool,
) -> None:
    clean = Emulator()
    in_process(clean, max_batch_ops=25).deliver_all(mixed_records())
    expected = workspace(clean)

    faults = FaultConfig(
        error_5xx=0.10,
        error_429=0.05,
        timeout=0.03,
        reset=0.03,
        seed=2,
        timeout_s=0.6,
        retry_after_s=0,
        applied_then_failed=applied_then_failed,
    )
    emu = Emulator(EmulatorConfig(faults=faults))
    with emu.serve(port=0) as base_url:
        client = CustomerIOClient(
            settings_for(emu, base_url, max_batch_ops=25, timeout=0.3, max_retries=10)
        )
        results = client.deliver_all(mixed_records())
    keyed = by_key(results)
    assert set(keyed) == {r.key for r in mixed_records()}
    assert Counter(r.outcome for r in results) == {Outcome.DELIVERED: 1000}
    assert client.stats.retries > 0
    assert set(emu.stats.faults_injected) >= {"5xx", "429", "timeout", "reset"}, emu.stats
    # Events carry an `id`, so a batch applied twice (applied, then the answer lost) adds nothing.
    assert workspace(emu) == expected


def test_retries_exhausted_dead_letters_with_the_last_error() -> None:
    emu = Emulator(EmulatorConfig(faults=FaultConfig(error_5xx=1.0)))
    client = in_process(emu, max_retries=2)
    results = client.deliver_all([identify(i) for i in range(10)])
    assert {r.outcome for r in results} == {Outcome.DEAD_LETTER}
    assert {r.status for r in results} == {503}
    assert {r.attempts for r in results} == {3}
    assert all("HTTP 503" in (r.reason or "") for r in results)
    assert emu.people() == []
    assert client.stats.dead_lettered == 10


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_connection_refused_dead_letters_without_a_status() -> None:
    emu = Emulator()
    url = f"http://127.0.0.1:{unused_port()}"
    client = CustomerIOClient(settings_for(emu, url, max_retries=1))
    results = client.deliver_all([identify(1), identify(2)])
    assert {(r.outcome, r.status, r.attempts) for r in results} == {(Outcome.DEAD_LETTER, None, 2)}
    assert all("connection error" in (r.reason or "") for r in results)


def test_customerio_unreachable_stops_delivery_after_three_failed_batches() -> None:
    """Connection refused for every batch: the client stops after the third batch that failed
    every retry (one batch at a time here, so exactly three were tried) instead of trying
    and dead-lettering all ten; with `stop_after_failed_batches: 0` it tries them all."""
    emu = Emulator()
    url = f"http://127.0.0.1:{unused_port()}"
    records = [identify(i) for i in range(10)]
    settings = settings_for(emu, url, max_retries=1, concurrency=1, max_batch_ops=1)
    client = CustomerIOClient(settings)
    with pytest.raises(DestinationUnavailableError) as raised:
        client.deliver_all(records)
    assert "3 batches in a row failed 2 attempts each (last: connection error" in str(raised.value)
    assert "CUSTOMERIO_TRACK_URL" in (raised.value.hint or "")
    # the third batch was sent too: its record is a dead letter of the run it stopped
    assert (client.stats.requests, client.stats.dead_lettered) == (6, 3)

    settings = settings_for(
        emu, url, max_retries=1, concurrency=1, max_batch_ops=1, stop_after_failed_batches=0
    )
    results = CustomerIOClient(settings).deliver_all(records)
    assert [r.outcome for r in results] == [Outcome.DEAD_LETTER] * 10


def test_unreachable_without_retries_says_one_attempt() -> None:
    # `max_retries: 0`: each batch was tried once, and the error says so in English
    emu = Emulator()
    url = f"http://127.0.0.1:{unused_port()}"
    settings = settings_for(emu, url, max_retries=0, concurrency=1, max_batch_ops=1)
    with pytest.raises(DestinationUnavailableError) as raised:
        CustomerIOClient(settings).deliver_all([identify(i) for i in range(5)])
    assert "3 batches in a row failed 1 attempt each (last: connection error" in str(raised.value)


@pytest.mark.parametrize("seed", range(8))  # seeds 0, 1, 3, 6 never fail three in a row
def test_only_failed_batches_in_a_row_stop_delivery(seed: int) -> None:
    """40% of requests fail at random (no retries, one batch at a time): delivery stops
    exactly when three batches in a row have failed, never on failures with an answered batch
    between them, and every record tried has its outcome."""
    emu = Emulator(EmulatorConfig(faults=FaultConfig(error_5xx=0.4, seed=seed)))
    records = [identify(i) for i in range(30)]
    client = in_process(emu, max_retries=0, concurrency=1, max_batch_ops=1)
    results: list[Result] = []

    async def run() -> None:
        async for chunk in client.deliver(records):
            results.extend(chunk)

    try:
        asyncio.run(run())
        stopped = False
    except DestinationUnavailableError:
        stopped = True
    statuses = [r.status for r in emu.request_log() if r.path == "/api/v2/batch"]
    runs = "".join("x" if s == 503 else "." for s in statuses)
    if stopped:
        assert runs.endswith("xxx") and "xxx" not in runs[:-1]
        # every batch sent has its outcome, the one that tripped it too (dead-lettered)
        assert len(results) == len(statuses) and results[-1].outcome is Outcome.DEAD_LETTER
    else:
        assert "xxx" not in runs and len(results) == 30
    delivered = {r.key for r in results if r.outcome is Outcome.DELIVERED}
    assert {p.id for p in emu.people()} == delivered
    assert runs.count(".") == len(delivered)


def test_wrong_credentials_stop_the_run_with_a_hint() -> None:
    emu = Emulator()
    site_id, _ = emu.track_auth
    settings = CustomerIOSettings(site_id=site_id, api_key="wrong", track_url="http://emulator")
    client = CustomerIOClient(settings, transport=emu.async_transport())

    def many() -> Iterator[Record]:
        for i in range(100_000):
            yield identify(i)

    with pytest.raises(DestinationAuthError) as info:
        client.deliver_all(many())
    assert info.value.status == 401
    assert "CUSTOMERIO_SITE_ID" in str(info.value) and "CUSTOMERIO_API_KEY" in str(info.value)
    assert "wrong" not in str(info.value)
    assert client.stats.requests <= client.settings.concurrency  # not one by one per record


def test_wrong_url_is_a_terminal_error_naming_the_setting() -> None:
    emu = Emulator()
    client = in_process(emu)
    client = CustomerIOClient(
        settings_for(emu, "http://emulator/not-here"), transport=emu.async_transport()
    )
    with pytest.raises(DestinationError, match="CUSTOMERIO_TRACK_URL"):
        client.deliver_all([identify(1)])


def test_missing_credentials_and_secrets_in_repr() -> None:
    from lockgate.errors import ConfigError

    with pytest.raises(ConfigError, match="CUSTOMERIO_API_KEY"):
        CustomerIOClient(CustomerIOSettings.from_env())
    client = CustomerIOClient(CustomerIOSettings(site_id="site", api_key="s3cr3t-key"))
    assert "s3cr3t" not in repr(client)


@contextmanager
def tls_server_with_an_untrusted_certificate() -> Iterator[str]:
    """A loopback TLS listener presenting a self-signed certificate; its https URL."""
    import datetime as dt
    import ssl
    import tempfile
    import threading

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    with tempfile.TemporaryDirectory() as folder:
        cert_path, key_path = f"{folder}/cert.pem", f"{folder}/key.pem"
        with open(cert_path, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        with open(key_path, "wb") as f:
            f.write(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_path, key_path)
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.2)
        stop = threading.Event()

        def accept() -> None:
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    return
                with contextlib.suppress(OSError, ssl.SSLError):
                    conn.settimeout(5)
                    context.wrap_socket(conn, server_side=True).close()
                conn.close()

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        try:
            yield f"https://127.0.0.1:{listener.getsockname()[1]}"
        finally:
            stop.set()
            thread.join(5)
            listener.close()


def test_an_https_url_still_checks_the_certificate() -> None:
    """Certificate checks are skipped only for plain `http://` URLs (no TLS happens there):
    an `https://` workspace presenting a certificate nobody trusts gets nothing."""
    emu = Emulator()
    with tls_server_with_an_untrusted_certificate() as url:
        client = CustomerIOClient(settings_for(emu, url, max_retries=0))
        results = client.deliver_all([identify(1), identify(2)])
    assert {r.outcome for r in results} == {Outcome.DEAD_LETTER}
    assert all("CERTIFICATE_VERIFY_FAILED" in (r.reason or "") for r in results), results


def test_a_workspace_behind_a_private_ca_is_reached_with_ssl_cert_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Track URL behind a proxy with its own CA (`SSL_CERT_FILE`) is reached; the TLS
    context every client shares is built again when the variable changes, so a client made
    after it is unset checks against the public CAs again, in the same process."""
    emu = Emulator()
    with emu.serve(tls=True) as url:
        assert emu.ca_cert is not None
        monkeypatch.setenv("SSL_CERT_FILE", str(emu.ca_cert))
        trusted = CustomerIOClient(settings_for(emu, url, max_retries=0))
        assert {r.outcome for r in trusted.deliver_all([identify(1), identify(2)])} == {
            Outcome.DELIVERED
        }
        monkeypatch.delenv("SSL_CERT_FILE")
        untrusted = CustomerIOClient(settings_for(emu, url, max_retries=0))
        results = untrusted.deliver_all([identify(3)])
    assert [r.outcome for r in results] == [Outcome.DEAD_LETTER]
    assert "CERTIFICATE_VERIFY_FAILED" in (results[0].reason or "")
    assert emu.person(id="u1") is not None and emu.person(id="u2") is not None
    assert emu.person(id="u3") is None


def test_an_error_quoting_a_url_never_shows_its_user_or_password() -> None:
    """A proxy's credentials in `track_url` (a password holding `@` too) are `***` in every
    message; the host, port and path, which say what answered, are kept."""
    from lockgate.errors import DestinationError

    error = DestinationError(
        "`http://proxy:p@ss:w0rd@10.0.0.1:8080/track/api/v2/batch` answered HTTP 404",
        hint="check CUSTOMERIO_TRACK_URL (`https://tok3n@proxy.example.com`)",
    )
    assert str(error) == (
        "`http://***@10.0.0.1:8080/track/api/v2/batch` answered HTTP 404\n"
        "  hint: check CUSTOMERIO_TRACK_URL (`https://***@proxy.example.com`)"
    )
    settings = CustomerIOSettings("site", "key", track_url="http://u:secret@127.0.0.1:1/")
    assert settings.track_shown == "http://***@127.0.0.1:1"
