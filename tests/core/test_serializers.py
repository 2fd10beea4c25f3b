"""Serializers and the registry: ids, manifests, and how one is chosen."""

import base64
import pickle
import typing
from dataclasses import dataclass

import pytest

from melange.exceptions import (
    ConfigurationError,
    NoSerializerFoundError,
    SerializationError,
    UnknownSerializerError,
)
from melange.serializers import JsonSerializer, PickleSerializer, Serializer, SerializerRegistry
from melange.serializers.registry import sort


@dataclass
class Animal:
    name: str


@dataclass
class Dog(Animal):
    pass


class Upper(Serializer[str]):
    """A custom serializer: strings, upper-cased on the wire."""

    def identifier(self) -> int:
        return 41

    def manifest(self, data: str) -> str:
        return "upper"

    def serialize(self, data: str) -> str:
        return data.upper()

    def deserialize(self, data: str, manifest: str | None = None) -> str:
        return data.lower()


def test_json_serializer_has_id_1_and_manifest_json() -> None:
    s = JsonSerializer()
    assert s.identifier() == 1
    assert s.manifest({"a": 1}) == "json"
    assert s.deserialize(s.serialize({"a": [1, "é"]})) == {"a": [1, "é"]}


def test_json_serializer_names_the_type_it_cannot_serialize() -> None:
    with pytest.raises(SerializationError, match="Animal"):
        JsonSerializer().serialize(Animal("cat"))


def test_json_serializer_rejects_invalid_json_clearly() -> None:
    with pytest.raises(SerializationError, match="not valid JSON"):
        JsonSerializer().deserialize("{nope")


@pytest.mark.parametrize(
    "body", ['{"a": 1}', ' {"a": 1}', '{"a": 1}\n', '\r\n {"a": 1} \t'], ids=repr
)
def test_json_serializer_reads_a_document_whatever_whitespace_surrounds_it(body: str) -> None:
    # Bodies written by other programs often end with a newline.
    assert JsonSerializer().deserialize(body) == {"a": 1}


@pytest.mark.parametrize(
    "body", ["", "  ", '{"a": 1} x', '{"a": 1}{"b": 2}', "1 2", '{"a":'], ids=repr
)
def test_json_serializer_refuses_anything_but_one_document(body: str) -> None:
    with pytest.raises(SerializationError, match="not valid JSON"):
        JsonSerializer().deserialize(body)


def test_pickle_serializer_uses_qualname_and_base64_body() -> None:
    s = PickleSerializer()
    assert s.identifier() == 2
    dog = Dog("rex")
    assert s.manifest(dog) == "Dog"
    body = s.serialize(dog)
    assert pickle.loads(base64.b64decode(body)) == dog
    assert s.deserialize(body) == dog


def test_pickle_serializer_reports_garbage_as_serialization_error() -> None:
    with pytest.raises(SerializationError):
        PickleSerializer().deserialize("!!! not base64 !!!")


def test_registry_from_single_instance_uses_it_for_everything() -> None:
    registry = SerializerRegistry.coerce(PickleSerializer())
    assert isinstance(registry.find_serializer_for({"a": 1}), PickleSerializer)
    assert isinstance(registry.find_serializer_for(Dog("x")), PickleSerializer)


def test_registry_from_list_picks_by_bound_types() -> None:
    registry = SerializerRegistry.coerce([JsonSerializer(), PickleSerializer()])
    assert isinstance(registry.find_serializer_for({"a": 1}), JsonSerializer)
    assert isinstance(registry.find_serializer_for([1, 2]), JsonSerializer)
    assert isinstance(registry.find_serializer_for(Dog("x")), PickleSerializer)


def test_registry_config_dict_in_the_released_form() -> None:
    registry = SerializerRegistry(
        {
            "serializers": {"json": JsonSerializer, "pickle": PickleSerializer},
            "serializer_bindings": {typing.Dict: "json", Animal: "pickle"},  # noqa: UP006
            "default": "json",
        }
    )
    assert isinstance(registry.find_serializer_for({"a": 1}), JsonSerializer)
    # The most specific bound base class wins.
    assert isinstance(registry.find_serializer_for(Dog("x")), PickleSerializer)
    # Anything else falls back to the default.
    assert isinstance(registry.find_serializer_for([1]), JsonSerializer)


def test_registry_without_binding_or_default_raises() -> None:
    registry = SerializerRegistry(
        {"serializers": {"json": JsonSerializer}, "serializer_bindings": {dict: "json"}}
    )
    with pytest.raises(NoSerializerFoundError, match="Dog"):
        registry.find_serializer_for(Dog("x"))


def test_registry_config_errors_name_the_problem() -> None:
    with pytest.raises(ConfigurationError, match="'nope'"):
        SerializerRegistry({"serializers": {"json": JsonSerializer}, "default": "nope"})
    with pytest.raises(ConfigurationError, match="'missing'"):
        SerializerRegistry({"serializers": {}, "serializer_bindings": {dict: "missing"}})
    with pytest.raises(ConfigurationError, match="unknown serializer settings"):
        SerializerRegistry({"serialisers": {}})


def test_registry_rejects_two_serializers_sharing_an_id() -> None:
    class Other(Upper):
        def identifier(self) -> int:
            return 1

    with pytest.raises(ConfigurationError, match="share the identifier 1"):
        SerializerRegistry.coerce([JsonSerializer(), Other()])


def test_registry_decodes_strictly_by_serializer_id() -> None:
    registry = SerializerRegistry.coerce([JsonSerializer(), Upper()])
    assert registry.deserialize("HELLO", 41, "upper") == "hello"
    assert registry.deserialize('"x"', 1) == "x"
    with pytest.raises(UnknownSerializerError, match="serializer id 2"):
        registry.deserialize(PickleSerializer().serialize(Dog("x")), 2)
    with pytest.raises(UnknownSerializerError, match="no serializer id"):
        registry.deserialize('"x"', None)


def test_registry_wraps_custom_serializer_failures() -> None:
    class Broken(Upper):
        def deserialize(self, data: str, manifest: str | None = None) -> str:
            raise KeyError("field")

    registry = SerializerRegistry.coerce(Broken())
    with pytest.raises(SerializationError, match="Broken failed to deserialize"):
        registry.deserialize("x", 41)


def test_coerce_rejects_things_that_are_not_serializers() -> None:
    with pytest.raises(ConfigurationError, match="Serializer"):
        SerializerRegistry.coerce(42)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="list of Serializer"):
        SerializerRegistry.coerce([JsonSerializer, "x"])  # type: ignore[list-item]


def test_sort_puts_subclasses_before_their_bases() -> None:
    ordered = sort([object, Animal, dict, Dog])
    assert ordered.index(Dog) < ordered.index(Animal) < ordered.index(object)
    assert ordered.index(dict) < ordered.index(object)
