"""Every payload store keeps, returns, removes and purges payloads the same way."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from melange.claimcheck import (
    DirectoryPayloadStore,
    PayloadMissingError,
    PayloadStore,
    PayloadStoreError,
    PayloadUnreadableError,
    SQLPayloadStore,
)
from melange.claimcheck.store import new_key

STORES = ["directory", "sqlite", "postgresql", "s3"]


@pytest.fixture(params=STORES)
def store(
    request: pytest.FixtureRequest, make_store: Callable[[str], PayloadStore]
) -> PayloadStore:
    return make_store(request.param)


def test_a_payload_comes_back_byte_for_byte(store: PayloadStore) -> None:
    key = new_key()
    data = os.urandom(3 * 1024 * 1024) + "é\x00".encode()
    store.put(key, data)
    assert store.get(key) == data


def test_a_missing_payload_raises_payload_missing(store: PayloadStore) -> None:
    with pytest.raises(PayloadMissingError):
        store.get(new_key())


def test_delete_removes_and_is_idempotent(store: PayloadStore) -> None:
    key = new_key()
    store.put(key, b"x")
    store.delete(key)
    store.delete(key)
    with pytest.raises(PayloadMissingError):
        store.get(key)


def test_purge_removes_only_what_was_stored_before(store: PayloadStore) -> None:
    old, new = new_key(), new_key()
    store.put(old, b"old")
    time.sleep(1.1)
    # A whole second: S3 lists modification times truncated to the second.
    boundary = float(int(time.time()))
    store.put(new, b"new")
    assert store.purge(boundary) == 1
    with pytest.raises(PayloadMissingError):
        store.get(old)
    assert store.get(new) == b"new"


@pytest.mark.parametrize("key", ["../etc/passwd", "a/b", "", ".hidden", "x" * 200, "a..b"])
def test_a_key_from_a_header_never_names_another_place(store: PayloadStore, key: str) -> None:
    with pytest.raises(PayloadUnreadableError):
        store.get(key)


def test_directory_store_reports_a_directory_gone(tmp_path: Path) -> None:
    store = DirectoryPayloadStore(tmp_path / "payloads")
    (tmp_path / "payloads").rmdir()
    (tmp_path / "payloads").write_text("a file where the directory was")
    with pytest.raises(PayloadStoreError):
        store.put(new_key(), b"x")
    with pytest.raises(PayloadStoreError):
        store.get(new_key())


def test_sql_store_repr_never_shows_the_connection_string() -> None:
    store = SQLPayloadStore("sqlite:///:memory:")
    assert "memory" not in repr(store) and "sqlite" in repr(store)
    with pytest.raises(Exception, match="plain SQL identifier"):
        SQLPayloadStore(":memory:", table="x; drop")
