"""vfio_manager.record: the package's value classes behave like frozen dataclasses.

The package replaced ``dataclasses.dataclass`` with ``record`` because creating a dataclass
compiles six methods with ``exec`` (1.5 ms each class natively, ~40 ms in the TCG guest), and
every command creates 10 to 30 of them before it reads sysfs. These tests pin the behaviour
the package relies on, so that a cheaper class never means a different one.
"""

from __future__ import annotations

import copy
import pickle
from typing import ClassVar, Optional

import pytest

from vfio_manager.record import FrozenRecordError, field, record, replace


@record
class Point:
    x: int
    y: int
    label: str = "p"
    tags: list[str] = field(default_factory=list)
    note: Optional[str] = field(default=None, compare=False, repr=False)


@record(order=True)
class Version:
    major: int
    minor: int = 0


@record(frozen=False)
class Counter:
    name: str
    hits: int = 0


@record
class Named:
    name: str
    note: Optional[str] = field(default=None, compare=False)


@record
class Child(Point):
    z: int = 0


@record
class Checked:
    value: int
    seen: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.value < 0:
            raise ValueError("negative")


def test_positional_keyword_and_defaults() -> None:
    p = Point(1, y=2)
    assert (p.x, p.y, p.label, p.tags, p.note) == (1, 2, "p", [], None)
    assert Point(1, 2, "q").label == "q"


def test_each_instance_gets_its_own_factory_value() -> None:
    a, b = Point(1, 2), Point(1, 2)
    a.tags.append("t")
    assert b.tags == []


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((1,), {}, "missing"),
        ((1, 2, "l", [], None, 9), {}, "positional"),
        ((1, 2), {"colour": "red"}, "unexpected"),
        ((1, 2), {"x": 3}, "x"),
    ],
)
def test_wrong_arguments_are_type_errors(
    args: tuple[object, ...], kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(TypeError, match=message):
        Point(*args, **kwargs)  # type: ignore[arg-type]


def test_frozen_refuses_assignment_and_deletion() -> None:
    p = Point(1, 2)
    with pytest.raises(FrozenRecordError):
        p.x = 5  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del p.x
    assert p.x == 1


def test_equality_and_hash_follow_compared_fields_and_class() -> None:
    assert Point(1, 2, note="a") == Point(1, 2, note="b")
    assert hash(Named("n", note="a")) == hash(Named("n", note="b"))
    assert Named("n") != Named("m")
    assert Point(1, 2) != Point(1, 3)
    assert Point(1, 2) != Child(1, 2)
    assert Point(1, 2) != (1, 2, "p", [])  # type: ignore[comparison-overlap]
    assert len({Version(1), Version(1), Version(2)}) == 2


def test_list_field_makes_hash_fail_like_a_dataclass() -> None:
    with pytest.raises(TypeError):
        hash(Point(1, 2, tags=["unhashable"]))
    assert hash(Point(1, 2, tags=[]).__class__) is not None


def test_repr_names_fields_and_hides_repr_false() -> None:
    assert repr(Point(1, 2, note="secret")) == "Point(x=1, y=2, label='p', tags=[])"


def test_order() -> None:
    assert sorted([Version(2), Version(1, 5), Version(1)]) == [
        Version(1),
        Version(1, 5),
        Version(2),
    ]
    assert Version(1) <= Version(1) < Version(1, 1)
    assert Version(3) >= Version(2) > Version(1)
    with pytest.raises(TypeError):
        _ = Point(1, 2) < Point(1, 3)  # type: ignore[operator]


def test_mutable_record_assigns_and_is_unhashable() -> None:
    c = Counter("a")
    c.hits += 1
    assert c == Counter("a", 1)
    with pytest.raises(TypeError):
        hash(c)


def test_subclass_extends_fields() -> None:
    c = Child(1, 2, z=3)
    assert (c.x, c.y, c.label, c.z) == (1, 2, "p", 3)
    assert repr(c) == "Child(x=1, y=2, label='p', tags=[], z=3)"


def test_post_init_runs() -> None:
    with pytest.raises(ValueError, match="negative"):
        Checked(-1)
    assert Checked(1).value == 1


def test_replace_keeps_other_fields_and_checks_names() -> None:
    p = Point(1, 2, tags=["t"], note="n")
    q = replace(p, y=5)
    assert (q.x, q.y, q.tags, q.note) == (1, 5, ["t"], "n")
    assert p.y == 2
    with pytest.raises(TypeError, match="unexpected"):
        replace(p, colour="red")


def test_copy_and_pickle_round_trip() -> None:
    p = Point(1, 2, tags=["t"])
    assert copy.copy(p) == p
    assert copy.deepcopy(p) == p
    assert pickle.loads(pickle.dumps(p))  # noqa: S301 == p
    assert pickle.loads(pickle.dumps(Version(1, 2)))  # noqa: S301 == Version(1, 2)


def test_class_variables_are_not_fields() -> None:
    @record
    class Tally:
        unit: ClassVar[str] = "writes"
        count: int = 0

    assert Tally(3).count == 3
    assert Tally.unit == "writes"
    assert repr(Tally(3)).endswith(".Tally(count=3)")  # qualname, as a dataclass shows it


def test_an_unhashable_default_is_refused_like_a_dataclass() -> None:
    with pytest.raises(ValueError, match="default_factory"):

        @record
        class Bad:
            seen: list[int] = []  # noqa: RUF012 - the mistake under test
