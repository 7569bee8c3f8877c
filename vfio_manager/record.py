"""Value classes that cost nothing to create: ``@record`` instead of ``@dataclass``.

Why not ``dataclasses``: creating one frozen dataclass compiles six methods with ``exec``,
about 1.5 ms per class natively and 30 to 45 ms in the project's TCG guest. Every command
creates 10 (``status``) to 30 (``bind-all``) value classes before it reads sysfs, so the
stdlib decorator alone was a third of the gap to the import floor (issue 12). ``record``
builds the same methods as closures over the field list: no source, no ``exec``, no
``inspect``. It implements exactly what the package uses: frozen (the default) or mutable
instances, defaults and ``field(default_factory=...)``, ``compare=False`` and
``repr=False``, ``order=True``, ``__post_init__``, and ``replace``.

``typing.dataclass_transform`` tells mypy that a record is checked like a dataclass
(constructor signature, frozen attributes, field order).
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Optional, TypeVar, overload

if TYPE_CHECKING:
    from typing_extensions import dataclass_transform
else:  # only the type checker reads it; typing has it from Python 3.11 on

    def dataclass_transform(**_: Any) -> Callable[[Any], Any]:
        return lambda decorated: decorated


__all__ = ["FrozenRecordError", "field", "record", "replace"]

_T = TypeVar("_T")
_MISSING: Any = object()


class FrozenRecordError(AttributeError):
    """Assignment to, or deletion of, a field of a frozen record."""


class _Field:
    """What ``field()`` returns at class creation; replaced by the default on the class."""

    __slots__ = ("compare", "default", "default_factory", "name", "repr")

    def __init__(
        self, default: Any, default_factory: Any, compare: bool, repr: bool, name: str = ""
    ) -> None:
        self.default = default
        self.default_factory = default_factory
        self.compare = compare
        self.repr = repr
        self.name = name


@overload
def field(*, default: _T, compare: bool = True, repr: bool = True) -> _T: ...
@overload
def field(*, default_factory: Callable[[], _T], compare: bool = True, repr: bool = True) -> _T: ...
@overload
def field(*, compare: bool = True, repr: bool = True) -> Any: ...
def field(
    *,
    default: Any = _MISSING,
    default_factory: Any = _MISSING,
    compare: bool = True,
    repr: bool = True,
) -> Any:
    """A field with a default factory, or left out of comparison or of ``repr``."""
    if default is not _MISSING and default_factory is not _MISSING:
        raise ValueError("a field takes a default or a default_factory, not both")
    return _Field(default, default_factory, compare, repr)


def _own_fields(cls: type) -> list[_Field]:
    """The fields a class body declares, in order; ``ClassVar`` annotations are not fields."""
    found = []
    annotations: dict[str, Any] = cls.__dict__.get("__annotations__", {})  # noqa: RUF063 - own only
    for name, annotation in annotations.items():
        if _is_class_var(annotation):
            continue
        value = cls.__dict__.get(name, _MISSING)
        spec = value if isinstance(value, _Field) else _Field(value, _MISSING, True, True)
        if spec.default is not _MISSING and type(spec.default).__hash__ is None:
            raise ValueError(f"{cls.__qualname__}.{name}: mutable default, use default_factory")
        spec.name = name
        if spec.default is _MISSING:
            if name in cls.__dict__:
                delattr(cls, name)
        else:
            setattr(cls, name, spec.default)
        found.append(spec)
    return found


def _is_class_var(annotation: Any) -> bool:
    if isinstance(annotation, str):  # postponed annotations (from __future__ import annotations)
        return annotation.startswith(("ClassVar", "typing.ClassVar"))
    return annotation is ClassVar or getattr(annotation, "__origin__", None) is ClassVar


def _fields(cls: type) -> tuple[_Field, ...]:
    """Inherited record fields, then the class's own; no default-less field after a default."""
    inherited: list[_Field] = []
    for base in reversed(cls.__mro__[1:]):
        inherited.extend(getattr(base, "__record_fields__", ()))
    fields = {f.name: f for f in inherited}
    fields.update((f.name, f) for f in _own_fields(cls))
    seen_default = False
    for spec in fields.values():
        has_default = spec.default is not _MISSING or spec.default_factory is not _MISSING
        if seen_default and not has_default:
            raise TypeError(f"{cls.__qualname__}.{spec.name}: no default after a field with one")
        seen_default = seen_default or has_default
    return tuple(fields.values())


def _build(cls: type, frozen: bool, order: bool) -> type:
    specs = _fields(cls)
    methods = _methods(cls.__qualname__, specs, getattr(cls, "__post_init__", None))
    key = methods.pop("key")
    if frozen:
        methods["__hash__"] = lambda self: hash(key(self))
        methods["__setattr__"] = _refuse_assignment
        methods["__delattr__"] = _refuse_deletion
    elif cls.__dict__.get("__hash__") is None:
        methods["__hash__"] = None  # mutable and compared by value: unhashable
    if order:
        methods.update(_ordering(key))
    for name, method in methods.items():
        if name not in cls.__dict__ or (name == "__hash__" and cls.__dict__[name] is None):
            if method is not None:
                method.__qualname__ = f"{cls.__qualname__}.{name}"
            setattr(cls, name, method)
    cls.__record_fields__ = specs  # type: ignore[attr-defined]
    return cls


def _methods(
    qualname: str, specs: tuple[_Field, ...], post_init: Optional[Callable[[Any], None]]
) -> dict[str, Any]:
    """``__init__``, ``__eq__``, ``__repr__`` and the comparison key, as closures (no ``exec``)."""
    names = tuple(f.name for f in specs)
    count = len(names)
    defaults = {f.name: f.default for f in specs if f.default is not _MISSING}
    factories = {f.name: f.default_factory for f in specs if f.default_factory is not _MISSING}
    compared = tuple(f.name for f in specs if f.compare)
    shown = tuple(f.name for f in specs if f.repr)

    accepted_after = [frozenset(names[given:]) for given in range(count + 1)]
    made_by_factory = tuple(factories.items())

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        # Dictionary updates, which run in C, rather than a Python loop over the fields:
        # a node of 4,096 functions creates tens of thousands of records.
        given = len(args)
        if given > count:
            raise TypeError(f"{qualname}() takes {count} positional arguments, {given} given")
        values = self.__dict__
        values.update(defaults)
        if given:
            values.update(zip(names, args))
        if kwargs:
            if not kwargs.keys() <= accepted_after[given]:
                wrong = ", ".join(sorted(kwargs.keys() - accepted_after[given]))
                raise TypeError(f"{qualname}() got unexpected or repeated {wrong}")
            values.update(kwargs)
        for name, factory in made_by_factory:
            if name not in values:
                values[name] = factory()
        if len(values) < count:
            missing = ", ".join(repr(name) for name in names if name not in values)
            raise TypeError(f"{qualname}() missing required argument {missing}")
        if post_init is not None:
            post_init(self)

    key: Callable[[Any], tuple[Any, ...]]
    if len(compared) > 1:
        key = operator.attrgetter(*compared)
    elif compared:
        only = compared[0]
        key = lambda self: (self.__dict__[only],)  # noqa: E731 - one-field key
    else:
        key = lambda self: ()  # noqa: E731 - nothing compared

    def __eq__(self: Any, other: object) -> Any:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return key(self) == key(other)

    def __repr__(self: Any) -> str:
        values = self.__dict__
        inner = ", ".join([f"{name}={values[name]!r}" for name in shown])
        return f"{self.__class__.__qualname__}({inner})"

    return {"__init__": __init__, "__eq__": __eq__, "__repr__": __repr__, "key": key}


def _ordering(key: Callable[[Any], tuple[Any, ...]]) -> dict[str, Callable[[Any, Any], Any]]:
    def compare(
        test: Callable[[tuple[Any, ...], tuple[Any, ...]], bool],
    ) -> Callable[[Any, Any], Any]:
        def method(self: Any, other: Any) -> Any:
            if other.__class__ is not self.__class__:
                return NotImplemented
            return test(key(self), key(other))

        return method

    return {
        "__lt__": compare(lambda a, b: a < b),
        "__le__": compare(lambda a, b: a <= b),
        "__gt__": compare(lambda a, b: a > b),
        "__ge__": compare(lambda a, b: a >= b),
    }


def _refuse_assignment(self: Any, name: str, value: Any) -> None:
    raise FrozenRecordError(f"cannot assign to field {name!r} of a frozen {type(self).__name__}")


def _refuse_deletion(self: Any, name: str) -> None:
    raise FrozenRecordError(f"cannot delete field {name!r} of a frozen {type(self).__name__}")


@overload
def record(cls: type[_T], /) -> type[_T]: ...
@overload
def record(*, frozen: bool = True, order: bool = False) -> Callable[[type[_T]], type[_T]]: ...
@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def record(cls: Optional[type[_T]] = None, /, *, frozen: bool = True, order: bool = False) -> Any:
    """Make ``cls`` a value class: ``@record``, ``@record(order=True)`` or ``(frozen=False)``."""
    if cls is not None:
        return _build(cls, frozen=True, order=False)
    return lambda inner: _build(inner, frozen=frozen, order=order)


def replace(obj: _T, /, **changes: Any) -> _T:
    """A copy of the record ``obj`` with ``changes`` applied, built through its constructor."""
    names = [f.name for f in type(obj).__record_fields__]  # type: ignore[attr-defined]
    unknown = set(changes) - set(names)
    if unknown:
        raise TypeError(
            f"{type(obj).__name__} got unexpected field(s) {', '.join(sorted(unknown))}"
        )
    values = obj.__dict__
    return type(obj)(**{name: changes.get(name, values[name]) for name in names})
