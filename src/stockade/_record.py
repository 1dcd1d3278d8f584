"""Record classes: what ``dataclasses`` gives, without its start-up cost.

``@dataclass`` compiles source text for every method of every class (about
0.5-1 ms per class here) and imports ``inspect`` (several ms): the command
line paid some 20 ms for the two dozen records on its path before it
started anything.  :func:`record` builds the same behaviour from shared
functions that read the class's field list, so defining a class costs
microseconds and a module that defines records imports nothing heavy.

What it supports is what stockade uses: fields from annotations, in order,
with defaults or ``field(default_factory=..., compare=..., repr=...)``;
keyword or positional construction; ``__repr__``, ``__eq__`` (same class
only), ``__hash__`` when frozen, ordering with ``order=True``, frozen
instances (assignment raises ``FrozenInstanceError``, an AttributeError),
``__match_args__``, and :func:`replace` and :func:`fields`.  Type checkers
see a dataclass (PEP 681).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from typing import dataclass_transform
else:

    def dataclass_transform(**_kwargs: Any) -> Callable[[Any], Any]:
        return lambda f: f


_T = TypeVar("_T")
_CLASS_VAR = ("ClassVar", "typing.ClassVar")


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class FrozenInstanceError(AttributeError):
    """Assigning to a field of a frozen record."""


class Field:
    """One field of a record (see :func:`fields`)."""

    __slots__ = ("compare", "default", "default_factory", "name", "repr")

    def __init__(
        self, default: Any, default_factory: Any, compare: bool, repr: bool, name: str = ""
    ) -> None:
        self.name = name
        self.default = default
        self.default_factory = default_factory
        self.compare = compare
        self.repr = repr


def field(
    *,
    default: Any = MISSING,
    default_factory: Callable[[], Any] | Any = MISSING,
    compare: bool = True,
    repr: bool = True,
) -> Any:
    """A field with a default factory or without comparison or repr."""
    return Field(default, default_factory, compare, repr)


def fields(cls_or_record: Any) -> tuple[Field, ...]:
    """The fields of a record class or instance, in order."""
    found: tuple[Field, ...] = cls_or_record.__record_fields__
    return found


def replace(obj: _T, /, **changes: Any) -> _T:
    """A copy of record *obj* with some fields changed."""
    cls = type(obj)
    names: frozenset[str] = cls.__record_names__  # type: ignore[attr-defined]
    if not names.issuperset(changes):
        bad = sorted(set(changes) - names)[0]
        raise TypeError(f"{cls.__name__} has no field {bad!r}")
    # Every field is set already: copy them, as __init__ would store them.
    new = object.__new__(cls)
    state = new.__dict__
    state.update(obj.__dict__)
    state.update(changes)
    return new


@dataclass_transform(field_specifiers=(field, Field))
def record(*, frozen: bool = False, order: bool = False) -> Callable[[type[_T]], type[_T]]:
    """Make a class a record of its annotated fields (see the module)."""

    def make(cls: type[_T]) -> type[_T]:
        own: list[Field] = []
        # Not inspect.get_annotations: importing inspect is what this avoids.
        annotations = cls.__dict__.get("__annotations__", {})  # noqa: RUF063
        for name, annotation in annotations.items():
            if isinstance(annotation, str) and annotation.startswith(_CLASS_VAR):
                continue
            value = cls.__dict__.get(name, MISSING)
            f = value if isinstance(value, Field) else Field(value, MISSING, True, True)
            f.name = name
            if isinstance(value, Field):
                # Like dataclasses: a plain default stays a class attribute.
                if f.default is MISSING:
                    delattr(cls, name)
                else:
                    setattr(cls, name, f.default)
            own.append(f)
        inherited: tuple[Field, ...] = getattr(cls, "__record_fields__", ())
        all_fields = (*inherited, *own)
        names = tuple(f.name for f in all_fields)
        compared = tuple(f.name for f in all_fields if f.compare)
        shown = tuple(f.name for f in all_fields if f.repr)
        methods: dict[str, Any] = {
            "__record_fields__": all_fields,
            "__record_names__": frozenset(names),
            "__match_args__": names,
            "__init__": _make_init(cls.__qualname__, all_fields),
            "__repr__": _make_repr(shown),
            "__eq__": _make_eq(compared),
            # As dataclasses: equal records hash alike only if immutable.
            "__hash__": _make_hash(compared) if frozen else None,
        }
        if frozen:
            methods["__setattr__"] = _frozen_setattr
            methods["__delattr__"] = _frozen_delattr
        if order:
            methods.update(_order_methods(compared))
        for name, method in methods.items():
            setattr(cls, name, method)
        return cls

    return make


def _make_init(qualname: str, all_fields: tuple[Field, ...]) -> Any:
    names = [f.name for f in all_fields]
    known = frozenset(names)
    spec = [(f.name, f.default, f.default_factory) for f in all_fields]

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if args:
            if len(args) > len(names):
                raise TypeError(f"{qualname}() takes {len(names)} positional arguments")
            for name, value in zip(names, args, strict=False):
                if name in kwargs:
                    raise TypeError(f"{qualname}() got multiple values for argument {name!r}")
                kwargs[name] = value
        if not known.issuperset(kwargs):
            bad = sorted(set(kwargs) - known)[0]
            raise TypeError(f"{qualname}() got an unexpected keyword argument {bad!r}")
        # Straight into the instance's dict: a frozen record's __setattr__
        # refuses, as the one dataclasses writes does.
        state = self.__dict__
        for name, default, factory in spec:
            if name in kwargs:
                state[name] = kwargs[name]
            elif default is not MISSING:
                state[name] = default
            elif factory is not MISSING:
                state[name] = factory()
            else:
                raise TypeError(f"{qualname}() missing required argument {name!r}")
        post = getattr(self, "__post_init__", None)
        if post is not None:
            post()

    return __init__


def _make_repr(shown: tuple[str, ...]) -> Any:
    def __repr__(self: Any) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in shown)
        return f"{type(self).__qualname__}({inner})"

    return __repr__


def _make_eq(compared: tuple[str, ...]) -> Any:
    def __eq__(self: Any, other: Any) -> Any:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return _key(self, compared) == _key(other, compared)

    return __eq__


def _make_hash(compared: tuple[str, ...]) -> Any:
    def __hash__(self: Any) -> int:
        return hash(_key(self, compared))

    return __hash__


def _frozen_setattr(self: Any, name: str, value: Any) -> None:
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _frozen_delattr(self: Any, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete field {name!r}")


def _key(obj: Any, names: tuple[str, ...]) -> tuple[Any, ...]:
    return tuple(getattr(obj, n) for n in names)


def _order_methods(compared: tuple[str, ...]) -> dict[str, Any]:
    def compare(op: Callable[[Any, Any], bool]) -> Any:
        def method(self: Any, other: Any) -> Any:
            if other.__class__ is not self.__class__:
                return NotImplemented
            return op(_key(self, compared), _key(other, compared))

        return method

    return {
        "__lt__": compare(lambda a, b: a < b),
        "__le__": compare(lambda a, b: a <= b),
        "__gt__": compare(lambda a, b: a > b),
        "__ge__": compare(lambda a, b: a >= b),
    }
