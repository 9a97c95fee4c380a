"""Attaching the original implementation's names to this project's classes."""

from __future__ import annotations


def attach(target: type, source: type) -> type:
    """Copies the attributes defined in ``source``'s body onto ``target``; returns ``target``.

    ``source`` is a plain class that only groups what exists for compatibility (methods,
    properties, class attributes). A name that ``target``'s own body defines is never replaced:
    compatibility adds to a class, it does not change what the class computes.

    Raises:
        TypeError: ``target`` already defines one of ``source``'s names.
    """
    names = [name for name in vars(source) if not (name.startswith("__") and name.endswith("__"))]
    clashes = sorted(set(names) & set(vars(target)))
    if clashes:
        raise TypeError(f"{target.__name__} already defines {clashes}; {source.__name__} would replace them.")
    for name in names:
        setattr(target, name, vars(source)[name])
    return target
