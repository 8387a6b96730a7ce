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
defines itself are kept, ``__match_args__`` and an explicit ``__hash__`` (``None`` too) as
dataclasses keeps them. Not built: ``__dataclass_fields__``, so ``dataclasses.fields``,
``replace``, ``asdict`` and ``is_dataclass`` do not take these classes: a type that needs them
stays a real dataclass. Users keep their annotations unevaluated (``from __future__ import
annotations``).

What it does not build it refuses, so a class never means one thing to mypy (which checks it
as a dataclass) and another at run time: a base class with annotations (inherited fields),
``ClassVar``, ``InitVar`` and ``KW_ONLY`` annotations, a ``field()`` without an annotation and
a class's own ``__setattr__``/``__delattr__`` are a TypeError; an unhashable default (a list,
dict or set: dataclasses' test) a ValueError, as dataclasses raises it.
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

    _SPECIAL = {"ClassVar", "InitVar", "KW_ONLY", "_KW_ONLY_TYPE"}

    def _special(annotation):
        """Whether an annotation is ClassVar, InitVar or KW_ONLY: by name in a string one
        (``ClassVar[int]``, ``dataclasses.InitVar[str]``), else as the object shows itself."""
        if isinstance(annotation, str):
            names = {annotation.split("[", 1)[0].strip().rsplit(".", 1)[-1]}
        else:
            names = {getattr(annotation, "__qualname__", None), type(annotation).__name__}
        return bool(names & _SPECIAL)

    def _check(cls, annotations):
        where = cls.__qualname__
        for base in cls.__mro__[1:-1]:
            if base.__dict__.get("__annotations__"):
                raise TypeError(f"{where}: frozen.dataclass does not inherit fields ({base.__qualname__} has "
                                "annotations): use dataclasses")
        for n, annotation in annotations.items():
            if _special(annotation):
                raise TypeError(f"{where}.{n}: frozen.dataclass takes no ClassVar, InitVar or KW_ONLY: "
                                "use dataclasses")
            d = cls.__dict__.get(n)  # None: no default
            if not isinstance(d, _Factory) and d.__class__.__hash__ is None:
                raise ValueError(f"mutable default {type(d)} for field {n} is not allowed: use default_factory")
        for n, value in cls.__dict__.items():
            if isinstance(value, _Factory) and n not in annotations:
                raise TypeError(f"{n!r} is a field but has no type annotation")
        for n in ("__setattr__", "__delattr__"):
            if n in cls.__dict__:
                raise TypeError(f"Cannot overwrite attribute {n} in class {cls.__name__}")

    def _build(cls):
        annotations = cls.__dict__.get("__annotations__", {})
        _check(cls, annotations)
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

        own = cls.__dict__
        made = {"__init__": init, "__repr__": __repr__, "__eq__": __eq__, "__setattr__": __setattr__,
                "__delattr__": __delattr__}
        # a class that defines __eq__ gets __hash__ = None from Python: not an explicit one
        if "__hash__" not in own or (own["__hash__"] is None and "__eq__" in own):
            made["__hash__"] = __hash__
        for key, value in made.items():
            if key not in own or key == "__hash__":
                value.__qualname__ = f"{cls.__qualname__}.{key}"
                setattr(cls, key, value)
        if "__match_args__" not in own:
            cls.__match_args__ = names
        return cls

    def dataclass(cls=None, /, *, frozen=False):
        if not frozen:
            raise TypeError("frozen.dataclass builds frozen classes only")
        return _build if cls is None else _build(cls)
