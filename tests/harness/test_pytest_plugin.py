"""The pytest plugin, run in pytest sessions of its own (pytester)."""

from __future__ import annotations

from pathlib import Path

import pytest

from melange.backends.sqlite import SQLiteBackend
from melange.exceptions import QueueNotFoundError, TopicNotFoundError

pytest_plugins = ["pytester"]

# A service and its tests, as a user of Melange writes them with the plugin.
SERVICE_TESTS = """
import time

from melange import Consumer, FailurePolicy, JsonSerializer, MessageDispatcher, TopicPublisher
from melange.backends.factory import MessagingBackendFactory


def billing_dispatcher(backend, fail=False):
    publisher = TopicPublisher(JsonSerializer(), backend)

    def on_order(event):
        if fail:
            raise ConnectionError("bank unreachable")
        publisher.publish("payments", {"kind": "PaymentRequested", "order_id": event["order_id"]})

    MessagingBackendFactory(backend).init_queue(
        "plugin-billing", "plugin-orders", dead_letter_queue_name="plugin-billing-dlq"
    )
    return MessageDispatcher(
        JsonSerializer(),
        backend=backend,
        consumers=[Consumer(on_order)],
        failure_policy=FailurePolicy(max_attempts=3, initial_delay=0.2, jitter=0.0),
    )


def test_order_placed_leads_to_payment_requested(melange_harness, melange_backend):
    dispatcher = billing_dispatcher(melange_backend)
    melange_harness.publish_to_topic("plugin-orders", {"order_id": 42})
    melange_harness.run(dispatcher, "plugin-billing")
    melange_harness.published(kind="PaymentRequested", order_id=42, to="payments")
    print("BACKEND", type(melange_backend).__name__)


def test_backoff_then_dead_letter(melange_harness, melange_backend):
    dispatcher = billing_dispatcher(melange_backend, fail=True)
    melange_harness.publish_to_topic("plugin-orders", {"order_id": 7})
    started = time.monotonic()
    melange_harness.run(dispatcher, "plugin-billing")
    melange_harness.retried(order_id=7, times=2, reason="ConnectionError")
    melange_harness.dead_lettered(order_id=7, reason="gave up after 3 attempt(s)")
    print("ELAPSED", round(time.monotonic() - started, 3))
"""


def test_the_plugin_is_registered_under_its_name(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--help")
    result.stdout.fnmatch_lines(["*--melange-backend=URL*"])


def test_in_memory_by_default_with_delays_on_the_fake_clock(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_service=SERVICE_TESTS)

    result = pytester.runpytest_subprocess("-s", "-p", "no:cacheprovider")

    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*BACKEND InMemoryMessagingBackend*"])
    [elapsed] = [line for line in result.outlines if "ELAPSED" in line]
    # Two retries of 0.2 s and 0.4 s, skipped on the fake clock.
    assert float(elapsed.split("ELAPSED")[1]) < 0.3


def test_the_same_tests_run_on_sqlite_and_leave_nothing_declared(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    pytester.makepyfile(test_service=SERVICE_TESTS)
    database = tmp_path / "plugin.db"

    result = pytester.runpytest_subprocess(
        "-s", "-p", "no:cacheprovider", f"--melange-backend=sqlite:///{database}"
    )

    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*BACKEND SQLiteBackend*"])
    [elapsed] = [line for line in result.outlines if "ELAPSED" in line]
    assert float(elapsed.split("ELAPSED")[1]) >= 0.6  # real delays on a real backend
    backend = SQLiteBackend(str(database))
    try:
        for queue in ("plugin-billing", "plugin-billing-dlq"):
            with pytest.raises(QueueNotFoundError):
                backend.get_queue(queue)
        with pytest.raises(TopicNotFoundError):
            backend.get_topic("plugin-orders")
    finally:
        backend.close_connection()


def test_the_ini_option_names_the_backend_too(pytester: pytest.Pytester, tmp_path: Path) -> None:
    pytester.makeini(f"[pytest]\nmelange_backend = sqlite:///{tmp_path / 'ini.db'}\n")
    pytester.makepyfile(
        test_url="""
def test_url(melange_backend_url, melange_backend):
    assert melange_backend_url.startswith("sqlite:///")
    assert type(melange_backend).__name__ == "SQLiteBackend"
"""
    )
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_a_suites_own_backend_and_harness_fixtures_are_left_alone(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(
        """
import pytest

@pytest.fixture
def backend():
    return "the suite's backend"

@pytest.fixture
def harness():
    return "the suite's harness"
"""
    )
    pytester.makepyfile(
        test_own="""
def test_own(backend, harness, melange_harness):
    assert backend == "the suite's backend"
    assert harness == "the suite's harness"
    assert melange_harness.backend is not None
"""
    )
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_no_melange_disables_the_plugin(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_off="def test_off(melange_harness):\n    pass\n")

    result = pytester.runpytest_subprocess("-p", "no:melange", "-p", "no:cacheprovider")

    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'melange_harness' not found*"])


def test_a_queue_that_existed_before_the_test_is_kept(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    database = tmp_path / "shared.db"
    backend = SQLiteBackend(str(database))
    backend.declare_queue("plugin-billing")
    backend.close_connection()
    pytester.makepyfile(test_service=SERVICE_TESTS)

    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", f"--melange-backend=sqlite:///{database}", "-k", "payment"
    )

    result.assert_outcomes(passed=1)
    backend = SQLiteBackend(str(database))
    try:
        backend.get_queue("plugin-billing")  # not the test's: still there
        with pytest.raises(QueueNotFoundError):
            backend.get_queue("plugin-billing-dlq")
    finally:
        backend.close_connection()
