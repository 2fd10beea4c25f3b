"""The scale-out broker suites (NATS JetStream, Redis Streams, Kafka) built from their
descriptions: who takes part in what, and the targets the report judges them by."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import suites  # noqa: E402


@pytest.mark.parametrize("broker", suites.BROKERS, ids=lambda b: b.suite)
def test_each_broker_suite_compares_melange_with_its_raw_client_and_faststream(
    broker: suites.Broker,
) -> None:
    suite = suites.broker_suite(broker, suites.QUICK)
    keys = [spec.key for spec in suite.specs]
    raw = broker.raw[0]
    assert keys[0] == "melange" and suite.specs[0].melange
    assert {raw, suites.ASYNCIO_KEY, suites.LINEARITY_KEY, suites.FASTSTREAM_KEY} <= set(keys)
    measured = {m.key: m.ops for m in suite.measurements}
    assert set(measured) == {"publish", "consume", "e2e", "e2e_4n"}
    # FastStream takes part end to end only; everyone else everywhere but the 4N run.
    assert suites.FASTSTREAM_KEY in measured["e2e"]
    assert all(suites.FASTSTREAM_KEY not in measured[k] for k in ("publish", "consume"))
    for key in ("melange", raw, suites.ASYNCIO_KEY):
        assert all(key in measured[k] for k in ("publish", "consume", "e2e"))
    n = getattr(suites.QUICK, broker.sized_by)
    assert measured["e2e_4n"] == {suites.LINEARITY_KEY: ("e2e", {"n": 4 * n})}
    # Every worker names a class that exists.
    for spec in suite.specs:
        module, _, name = spec.target.partition(":")
        assert hasattr(importlib.import_module(module), name), spec.target


@pytest.mark.parametrize("broker", suites.BROKERS, ids=lambda b: b.suite)
def test_each_broker_is_judged_against_raw_faststream_and_linearity(
    broker: suites.Broker,
) -> None:
    judged = [t for t in suites.TARGETS if t.suite == broker.suite]
    against = {(t.contender, t.numerator, t.threshold) for t in judged if not t.linearity}
    # The threaded row against the raw client run the same way: from threads.
    assert ((broker.raw_threads or broker.raw)[0], None, 0.9) in against
    if broker.raw_threads is not None:
        # An asyncio-only raw client: the asyncio row is judged against it on one loop.
        assert (broker.raw[0], suites.ASYNCIO_KEY, 0.9) in against
    assert (suites.FASTSTREAM_KEY, None, 1.0) in against
    assert (suites.FASTSTREAM_KEY, suites.ASYNCIO_KEY, 1.0) in against
    assert any(t.linearity and t.threshold == 0.8 for t in judged)


@pytest.mark.parametrize("broker", suites.KOMBU_BROKERS, ids=lambda b: b.suite)
def test_each_kombu_suite_compares_melange_with_raw_kombu(broker: suites.Broker) -> None:
    suite = suites.kombu_suite(broker.suite, suites.QUICK)
    keys = [spec.key for spec in suite.specs]
    assert keys[0] == "melange" and suite.specs[0].melange
    assert {"kombu", suites.ASYNCIO_KEY, suites.LINEARITY_KEY} <= set(keys)
    assert suites.FASTSTREAM_KEY not in keys  # FastStream has no kombu broker
    measured = {m.key: m.ops for m in suite.measurements}
    for key in ("melange", "kombu", suites.ASYNCIO_KEY):
        assert all(key in measured[k] for k in ("publish", "consume", "e2e"))
    for spec in suite.specs:
        module, _, name = spec.target.partition(":")
        assert hasattr(importlib.import_module(module), name), spec.target
    judged = [t for t in suites.TARGETS if t.suite == broker.suite]
    assert ("kombu", None, 0.9) in {(t.contender, t.numerator, t.threshold) for t in judged}
    assert any(t.linearity and t.threshold == 0.8 for t in judged)


def test_every_melange_contender_publishes_and_consumes_as_melange() -> None:
    # Each Melange worker's class is a whole MelangeContender: none falls back on the base
    # contender's methods, which only raise.
    from benchmarks.contenders.melange_common import MelangeContender
    from benchmarks.workload import Contender

    every = [
        *(
            suites.broker_suite(broker, suites.QUICK)
            for broker in (*suites.BROKERS, *suites.KOMBU_BROKERS)
        ),
        suites.rabbit_suite(suites.QUICK),
        suites.sqs_suite(suites.QUICK, 0, None),
        suites.memory_suite(suites.QUICK),
        suites.sqlite_suite(suites.QUICK, "/tmp/unused"),
    ]
    for suite in every:
        for spec in (spec for spec in suite.specs if spec.melange):
            module, _, name = spec.target.partition(":")
            cls = getattr(importlib.import_module(module), name)
            assert issubclass(cls, MelangeContender), spec.target
            for method in ("setup", "publish_one", "consume", "teardown", "purge"):
                assert getattr(cls, method) is not getattr(Contender, method), (spec.target, method)
