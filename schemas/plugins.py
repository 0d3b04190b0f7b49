"""The one plug-in registry every extension point uses.

A plug-in is a class in its kind's package (scorers, checks, sources, conditioning modes,
codecs, shard writers) that sets its name attribute; defining the subclass registers it
(`Registry.add`, called from the base class's `__init_subclass__`), and `Registry.classes()`
imports every module of the package first, so a new plug-in is one new file there — or a
class defined anywhere before the build runs (a test file, a user's own module).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def _where(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


_REGISTRIES: list[Registry[Any]] = []  # every registry made (a registry of registries)


def outside_plugins(names: Iterable[str] | None = None) -> tuple[type, ...]:
    """The registered plug-in classes defined outside their kind's package (a user's module,
    a test file) — of those registered under one of `names` (the names a recipe gives), or
    all with None. Work that runs in other processes carries them with it (see
    `register_carried`), so a worker finds them by name as the driver did."""
    wanted = None if names is None else set(names)
    return tuple(
        cls
        for registry in _REGISTRIES
        for name, cls in registry._classes.items()
        if not cls.__module__.startswith(registry.package + ".")
        and (wanted is None or name in wanted)
    )


def register_carried(classes: tuple[type, ...]) -> None:
    """Register plug-in classes that arrived in a worker process with its work. A class
    pickled by value is re-created before its attributes are set, so the registering
    `__init_subclass__` saw no name then; run it again now (it resolves to the kind's base
    class, which adds the class to its registry)."""
    for cls in classes:
        cls.__init_subclass__()


class Registry(Generic[T]):
    """The plug-ins of one kind by name.

    `kind` names them in errors ("scorer", "source format"); `package` is imported module by
    module on the first `classes()`; `attribute` is the class attribute holding the name
    (`name`; `format` for sources); `order` sorts `classes()` (default: by name).
    """

    def __init__(
        self,
        kind: str,
        package: str,
        attribute: str = "name",
        order: Callable[[tuple[str, type[T]]], Any] | None = None,
    ):
        self.kind = kind
        self.package = package
        self.attribute = attribute
        self._order = order or (lambda item: item[0])
        self._classes: dict[str, type[T]] = {}
        self._imported = False
        _REGISTRIES.append(self)

    def add(self, cls: type[T]) -> None:
        """Register `cls` under its own name attribute; a class without one of its own is an
        abstract intermediate and is skipped. One name, one class (re-defining the same
        class, as a re-imported module does, replaces it)."""
        name = cls.__dict__.get(self.attribute)
        if name is None:
            return
        known = self._classes.get(name)
        if known is not None and _where(known) != _where(cls):
            raise TypeError(f"{self.kind} name {name!r} is taken by {_where(known)}")
        self._classes[name] = cls

    def classes(self) -> dict[str, type[T]]:
        """Every registered plug-in by name, in order, after importing each module of the
        package (once per process)."""
        if not self._imported:
            package = importlib.import_module(self.package)
            for module in pkgutil.iter_modules(package.__path__):
                importlib.import_module(f"{package.__name__}.{module.name}")
            self._imported = True
        return dict(sorted(self._classes.items(), key=self._order))

    def get(self, name: str) -> type[T] | None:
        """The plug-in registered as `name` (importing the package if it is not yet known)."""
        return self._classes.get(name) or self.classes().get(name)

    def remove(self, name: str) -> None:
        """Forget the plug-in `name` (a test's own plug-in, once the test is done)."""
        self._classes.pop(name, None)
