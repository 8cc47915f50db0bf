from __future__ import annotations

import pytest

from vmm.record import FrozenRecord, Record, field

pytestmark = pytest.mark.unit


class Inner(Record):
    a: int
    b: str = "x"


class Outer(Record):
    name: str
    items: list[Inner] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)


class Ref(FrozenRecord):
    pid: int
    start: int


def test_init_defaults_and_factories() -> None:
    o1, o2 = Outer("n"), Outer(name="m")
    o1.tags.append("t")
    assert o2.tags == []  # the factory makes a fresh list each time
    assert Inner(1).b == "x" and Inner(1, "y").b == "y" and Inner(a=2, b="z").a == 2
    assert Outer.fields() == ("name", "items", "tags")


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [((), {}, "missing field 'a'"), ((1, "y", 3), {}, "takes 2"), ((1,), {"c": 2}, "no field 'c'"),
     ((1,), {"a": 2}, "twice")],
)
def test_init_errors(args: tuple[object, ...], kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(TypeError, match=message):
        Inner(*args, **kwargs)  # type: ignore[arg-type]


def test_eq_repr_dict_replace() -> None:
    o = Outer("n", [Inner(1)], ["t"])
    assert o == Outer("n", [Inner(1)], ["t"]) and o != Outer("n")
    assert repr(Inner(1)) == "Inner(a=1, b='x')"
    assert o.to_dict() == {"name": "n", "items": [{"a": 1, "b": "x"}], "tags": ["t"]}
    assert o.replace(name="m").name == "m" and o.name == "n"


def test_frozen() -> None:
    r = Ref(1, 2)
    with pytest.raises(AttributeError):
        r.pid = 3  # type: ignore[misc]
    assert hash(r) == hash(Ref(1, 2)) and {r: 1}[Ref(1, 2)] == 1


def test_field_order_rule() -> None:
    with pytest.raises(TypeError, match="without a default"):

        class Bad(Record):
            a: int = 1
            b: int
