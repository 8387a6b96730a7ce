"""typing's class-building names without importing typing (about 15 ms of a short command).

``from ttrpc.lighttyping import Generic, NamedTuple, TypeVar``: the type checker sees
typing's own names; at run time they are stand-ins that build the same classes cheaply.

- ``NamedTuple``: the class syntax (fields as annotations, trailing defaults, methods,
  docstring) makes a tuple subclass shaped like ``collections.namedtuple``'s: ``_fields``,
  ``_field_defaults``, fields read by C getters, ``_make``, ``_replace``, ``_asdict``,
  the same ``repr``, ``__match_args__``, pickling. ``tuple.__new__(Cls, values)`` builds
  one without the keyword-argument ``__new__``, as with namedtuple.
- ``Generic[...]`` as a base adds nothing at run time; ``TypeVar(name)`` is a placeholder.

Users keep their annotations unevaluated (``from __future__ import annotations``).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Generic as Generic
    from typing import NamedTuple as NamedTuple
    from typing import TypeVar as TypeVar
else:
    try:
        from _collections import _tuplegetter
    except ImportError:  # not CPython
        from _operator import itemgetter

        def _tuplegetter(index, doc):
            return property(itemgetter(index), doc=doc)

    _new = tuple.__new__
    _RESERVED = frozenset(("__new__", "__init__", "__slots__", "__getnewargs__", "_fields",
                           "_field_defaults", "_make", "_replace", "_asdict"))

    def _repr(self):
        return f"{self.__class__.__name__}({', '.join(f'{n}={v!r}' for n, v in zip(self._fields, self))})"

    def _make(cls, iterable):
        result = _new(cls, iterable)
        if len(result) != len(cls._fields):
            raise TypeError(f"Expected {len(cls._fields)} arguments, got {len(result)}")
        return result

    def _replace(self, /, **changes):
        result = self._make([changes.pop(f, v) for f, v in zip(self._fields, self)])
        if changes:
            raise ValueError(f"Got unexpected field names: {list(changes)!r}")
        return result

    def _asdict(self):
        return dict(zip(self._fields, self))

    def _getnewargs(self):
        return tuple(self)

    def _record(typename, fields, ns):
        """A tuple subclass named ``typename`` with ``fields``; defaults and other attributes
        (methods, docstring, module) from the class namespace ``ns``."""
        fields = tuple(fields)
        for f in fields:
            if not f.isidentifier() or f.startswith("_"):
                raise ValueError(f"{typename}: invalid field name {f!r}")
        defaults = {f: ns[f] for f in fields if f in ns}
        if list(defaults) != list(fields[len(fields) - len(defaults):]):
            raise TypeError(f"{typename}: a field without a default follows one with a default")
        args = ", ".join(fields)
        new = eval(f"lambda _cls, {args}: _new(_cls, ({args}{',' if len(fields) == 1 else ''}))",
                   {"_new": _new})
        new.__name__ = "__new__"
        new.__qualname__ = f"{typename}.__new__"
        new.__defaults__ = tuple(defaults.values()) or None
        body = {
            "__doc__": f"{typename}({args})",
            "__slots__": (),
            "_fields": fields,
            "_field_defaults": defaults,
            "__new__": new,
            "__match_args__": fields,
            "__repr__": _repr,
            "__getnewargs__": _getnewargs,
            "_make": classmethod(_make),
            "_replace": _replace,
            "_asdict": _asdict,
        }
        for i, f in enumerate(fields):
            body[f] = _tuplegetter(i, f"Alias for field number {i}")
        for key, value in ns.items():
            if key in _RESERVED:
                raise AttributeError(f"Cannot overwrite NamedTuple attribute {key}")
            if key not in defaults:
                body[key] = value
        return type(typename, (tuple,), body)

    class _NamedTupleMeta(type):
        def __new__(mcls, typename, bases, ns):
            return _record(typename, ns.get("__annotations__", {}), ns)

    _NamedTupleBase = type.__new__(_NamedTupleMeta, "NamedTuple", (), {})

    def NamedTuple(typename, fields=(), /):
        """The functional form: ``NamedTuple("Point", [("x", int), ("y", int)])``."""
        return _record(typename, (name for name, _ in fields), {"__module__": "ttrpc.lighttyping"})

    NamedTuple.__mro_entries__ = lambda bases: (_NamedTupleBase,)

    class Generic:
        """``class C(Generic[T])`` at run time: a plain base class."""

        __slots__ = ()

        def __class_getitem__(cls, params):
            return cls

    def TypeVar(name, *constraints, **options):
        return name
