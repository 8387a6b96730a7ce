"""``@dataclass(frozen=True)`` without importing dataclasses (through inspect, ast, enum and
re, about 25 ms), for value types on a ``moor`` command's path: transfer/oci.py's (`moor
images ls` parses manifests to size images) and the sandbox pod options `moor sandbox run`
sends (services/sandbox/podconfig.py).

``from moorage.frozen import dataclass, field``: the type checker sees dataclasses' own names; at
run time ``dataclass(frozen=True)`` builds what dataclasses builds for a class whose fields are
its annotations (trailing ones with defaults, a mutable one as ``field(default_factory=...)``):
``__init__`` with the same parameters, defaults and factories, ``__repr__``, ``__eq__`` (same
class, fields in order, else NotImplemented), ``__hash__`` of the fields, ``__match_args__``,
and ``dataclasses.FrozenInstanceError`` on assigning or deleting a field. Methods the class
defines itself are kept. Not built: ``__dataclass_fields__``, so ``dataclasses.fields``,
``replace``, ``asdict`` and ``is_dataclass`` do not take these classes: a type that needs them
stays a real dataclass. Users keep their annotations unevaluated (``from __future__ import
annotations``).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from dataclasses import dataclass as dataclass
    from dataclasses import field as field
else:

    class _Factory:
        __slots__ = ("make",)

        def __init__(self, make):
            self.make = make

    class _HasFactory:
        def __repr__(self):
            return "<factory>"

    _HAS_FACTORY = _HasFactory()

    def field(*, default_factory):
        return _Factory(default_factory)

    def _frozen_error(name, verb):
        from dataclasses import FrozenInstanceError

        return FrozenInstanceError(f"cannot {verb} field {name!r}")

    def _build(cls):
        annotations = cls.__dict__.get("__annotations__", {})
        names = tuple(annotations)
        defaults = {n: cls.__dict__[n] for n in names if n in cls.__dict__}
        if list(defaults) != list(names[len(names) - len(defaults):]):
            raise TypeError(f"{cls.__name__}: a field without a default follows one with a default")
        env = {"_object_setattr": object.__setattr__, "_HAS_FACTORY": _HAS_FACTORY}
        params, body = [], []
        for n in names:
            d = defaults.get(n)
            if n not in defaults:
                params.append(n)
                body.append(f"_object_setattr(self, {n!r}, {n})")
            elif isinstance(d, _Factory):
                env[f"_make_{n}"] = d.make
                params.append(f"{n}=_HAS_FACTORY")
                body.append(f"_object_setattr(self, {n!r}, _make_{n}() if {n} is _HAS_FACTORY else {n})")
                delattr(cls, n)
            else:
                env[f"_dflt_{n}"] = d
                params.append(f"{n}=_dflt_{n}")
                body.append(f"_object_setattr(self, {n!r}, {n})")
        src = f"def __init__(self, {', '.join(params)}):\n    " + ("\n    ".join(body) or "pass")
        exec(src, env)  # noqa: S102 - built from annotation names, as dataclasses does
        init = env["__init__"]
        init.__annotations__ = {**annotations, "return": None}

        def __repr__(self):
            return f"{self.__class__.__qualname__}({', '.join(f'{n}={getattr(self, n)!r}' for n in names)})"

        def __eq__(self, other):
            if other.__class__ is self.__class__:
                return tuple(getattr(self, n) for n in names) == tuple(getattr(other, n) for n in names)
            return NotImplemented

        def __hash__(self):
            return hash(tuple(getattr(self, n) for n in names))

        def __setattr__(self, name, value):
            if type(self) is cls or name in names:
                raise _frozen_error(name, "assign to")
            super(cls, self).__setattr__(name, value)

        def __delattr__(self, name):
            if type(self) is cls or name in names:
                raise _frozen_error(name, "delete")
            super(cls, self).__delattr__(name)

        made = {"__init__": init, "__repr__": __repr__, "__eq__": __eq__, "__hash__": __hash__,
                "__setattr__": __setattr__, "__delattr__": __delattr__}
        for key, value in made.items():
            if cls.__dict__.get(key) is None:
                value.__qualname__ = f"{cls.__qualname__}.{key}"
                setattr(cls, key, value)
        cls.__match_args__ = names
        return cls

    def dataclass(cls=None, /, *, frozen=False):
        if not frozen:
            raise TypeError("frozen.dataclass builds frozen classes only")
        return _build if cls is None else _build(cls)
