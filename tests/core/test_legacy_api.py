"""Behaviours code written against the 7.2.0 release relies on, beyond the names and import
paths (see docs/migrating.md): the registry's module function ``sort`` on binding pairs, and
``store(key, value, expire=...)`` on the deduplication caches."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from melange.deduplication.cache import InMemoryCache, NullCache
from melange.deduplication.sql_cache import SQLDeduplicationCache
from melange.serializers import JsonSerializer, PickleSerializer
from melange.serializers.registry import sort


class Animal:
    pass


class Dog(Animal):
    pass


class Puppy(Dog):
    pass


class Unrelated:
    pass


# -- serializers.registry.sort ---------------------------------------------------------------


def test_sort_orders_type_serializer_pairs_most_specific_type_first() -> None:
    pairs = [(Animal, JsonSerializer), (Puppy, PickleSerializer), (Dog, JsonSerializer)]

    assert sort(pairs) == [
        (Puppy, PickleSerializer),
        (Dog, JsonSerializer),
        (Animal, JsonSerializer),
    ]


def test_sort_returns_each_pair_as_it_was_given() -> None:
    json_pair = (Animal, JsonSerializer())
    dog_pair = (Dog, PickleSerializer())

    result = sort([json_pair, dog_pair])

    assert result[0] is dog_pair and result[1] is json_pair


def test_sort_still_takes_bare_classes_and_keeps_unrelated_ones_in_order() -> None:
    assert sort([Unrelated, Animal, Puppy]) == [Unrelated, Puppy, Animal]


def test_sort_keeps_two_pairs_of_the_same_class() -> None:
    first, second = (Dog, JsonSerializer), (Dog, PickleSerializer)

    assert sort([first, (Animal, JsonSerializer), second]) == [
        first,
        second,
        (Animal, JsonSerializer),
    ]


@pytest.mark.parametrize("item", ["Dog", (1, JsonSerializer), ()])
def test_sort_names_an_item_that_is_neither_a_class_nor_a_pair(item: Any) -> None:
    with pytest.raises(TypeError, match="classes or \\(class, serializer\\) pairs"):
        sort([Dog, item])


# -- DeduplicationCache.store(key, value, expire) ----------------------------------------------


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_in_memory_store_with_expire_forgets_that_key_after_it() -> None:
    clock = Clock(100.0)
    cache = InMemoryCache(clock=clock)

    cache.store("short", "done", expire=5)
    cache.store("forever", "done")
    clock.now += 5.5

    assert cache.get("short") is None
    assert cache.get("forever") == "done"


def test_in_memory_store_expire_overrides_the_cache_default_for_that_key() -> None:
    clock = Clock(100.0)
    cache = InMemoryCache(expire=1, clock=clock)

    cache.store("long", "done", expire=60)
    cache.store("default", "done")
    clock.now += 2

    assert cache.get("long") == "done"
    assert cache.get("default") is None


def test_null_cache_takes_expire_and_remembers_nothing() -> None:
    cache = NullCache()

    cache.store("key", "done", expire=10)

    assert cache.get("key") is None


def test_sql_store_with_expire_forgets_that_key_after_it(tmp_path: Path) -> None:
    clock = Clock(1_700_000_000.0)
    cache = SQLDeduplicationCache(str(tmp_path / "dedup.sqlite3"), clock=clock)
    try:
        cache.store("short", "done", expire=3)
        cache.store("kept", "done")
        clock.now += 3.5

        assert cache.get("short") is None
        assert cache.get("kept") == "done"
    finally:
        cache.close()


@pytest.mark.parametrize("expire", [0, -1, math.nan, math.inf, "10", True])
def test_store_refuses_an_expire_that_is_not_a_positive_number(expire: Any) -> None:
    with pytest.raises(ValueError, match="expire must be a positive number"):
        InMemoryCache().store("key", "done", expire=expire)
