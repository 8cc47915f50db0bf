"""A small stand-in for ``dataclasses`` for the types read-only commands load.

``vmm list`` is run often (by prompts and scripts) and its cost is mostly imports: the
``dataclasses`` module pulls in ``inspect`` and builds each class by compiling generated code,
together ~8 ms of a ~35 ms command. ``Record`` gives the same surface for what vmm needs —
keyword/positional ``__init__`` with defaults and ``field(default_factory=...)``, ``__eq__``,
``__repr__``, ``to_dict()``, ``replace()``, ``fields()`` — without either. ``dataclass_transform``
lets mypy check constructors exactly as it does for dataclasses.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, ClassVar, Self, TypeVar, dataclass_transform

    T = TypeVar("T")
else:

    def dataclass_transform(**_kwargs):
        return lambda obj: obj


class _Factory:
    __slots__ = ("make",)

    def __init__(self, make: Callable[[], Any]):
        self.make = make


def field(*, default_factory: Callable[[], T]) -> T:
    """A mutable default: ``tags: list[str] = field(default_factory=list)``."""
    return _Factory(default_factory)  # type: ignore[return-value]


@dataclass_transform(field_specifiers=(field,))
class Record:
    _record_fields: ClassVar[tuple[str, ...]] = ()
    _record_defaults: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        names: list[str] = []
        defaults: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            for name, annotation in klass.__dict__.get("__annotations__", {}).items():
                if name.startswith("_") or str(annotation).startswith("ClassVar"):
                    continue
                if name not in names:
                    names.append(name)
                if name in klass.__dict__:
                    defaults[name] = klass.__dict__[name]
                elif name in defaults and klass is cls:
                    del defaults[name]
        seen_default = False
        for name in names:
            if name in defaults:
                seen_default = True
            elif seen_default:
                raise TypeError(f"{cls.__name__}: field {name!r} without a default follows one with")
        cls._record_fields = tuple(names)
        cls._record_defaults = defaults

    def __init__(self, *args: Any, **kwargs: Any):
        names = self._record_fields
        if len(args) > len(names):
            raise TypeError(f"{type(self).__name__} takes {len(names)} fields, got {len(args)}")
        values = dict(zip(names, args, strict=False))
        for key, value in kwargs.items():
            if key not in names:
                raise TypeError(f"{type(self).__name__} has no field {key!r}")
            if key in values:
                raise TypeError(f"{type(self).__name__} got {key!r} twice")
            values[key] = value
        defaults = self._record_defaults
        for name in names:
            if name in values:
                value = values[name]
            elif name in defaults:
                value = defaults[name]
                if isinstance(value, _Factory):
                    value = value.make()
            else:
                raise TypeError(f"{type(self).__name__} is missing field {name!r}")
            object.__setattr__(self, name, value)

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        return cls._record_fields

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self._record_fields)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Record)
        return self._values() == other._values()

    __hash__ = None  # type: ignore[assignment]  # mutable, like a plain dataclass

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in self._record_fields)
        return f"{type(self).__name__}({inner})"

    def to_dict(self) -> dict[str, Any]:
        """Like ``dataclasses.asdict``: nested records and lists of them become dicts."""
        return {name: _plain(getattr(self, name)) for name in self._record_fields}

    def replace(self, **changes: Any) -> Self:
        values = {name: getattr(self, name) for name in self._record_fields}
        values.update(changes)
        return type(self)(**values)


class FrozenRecord(Record):
    """A hashable record whose fields cannot be reassigned."""

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen")

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(self._values())


def _plain(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class Value:
    """Base of the small frozen value classes on a start's path (vmm.network's facts, guest
    files), in place of frozen dataclasses (importing ``dataclasses`` and building each class
    costs every ``vmm start`` milliseconds): equality,
    hash, repr and pickling from ``__slots__`` (the fields, in ``__init__``'s order), set once
    in ``__init__`` through ``_init``; assigning or deleting a field afterwards raises."""

    __slots__: tuple[str, ...] = ()

    def _init(self, *values: object) -> None:
        for name, value in zip(self.__slots__, values, strict=True):
            object.__setattr__(self, name, value)

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Value)
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={v!r}" for n, v in zip(self.__slots__, self._values(), strict=True))
        return f"{type(self).__name__}({inner})"

    def __reduce__(self) -> tuple[type, tuple[Any, ...]]:
        return type(self), self._values()

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r} ({type(self).__name__} is frozen)")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r} ({type(self).__name__} is frozen)")
