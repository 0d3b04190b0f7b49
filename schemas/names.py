"""Names of files inside a build, a store prefix or a tar: relative, '/'-separated, contained.

Every name that arrives from outside this process (an object-store listing, a tar member, a
manifest's `files`, a `LATEST` pointer) is one of these before it becomes part of a path.
`storage.store.inside` joins a checked name to a local root and checks the result once more
after symlinks are resolved.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a file name inside a folder, or None when it can.

    Refused: empty names, absolute names, empty segments (`a//b`), `.` and `..` segments,
    backslashes (a separator elsewhere), and control characters.
    """
    if not name:
        return "empty name"
    if name.startswith("/"):
        return "absolute name"
    if "\\" in name:
        return "backslash in name"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "control character in name"
    for segment in name.split("/"):
        if segment == "":
            return "empty path segment"
        if segment in (".", ".."):
            return f"{segment!r} path segment"
    return None


def check_name(name: str) -> str:
    """`name` unchanged when it is a safe relative name; ValueError naming the problem."""
    problem = name_problem(name)
    if problem is not None:
        raise ValueError(f"{name!r}: {problem} (names must stay inside their folder)")
    return name


RelativeName = Annotated[str, AfterValidator(check_name)]
