"""Exception types shared across FlexAvatar.

:class:`InvalidInputError` is the one exception type for bad *user input* (a photo that is not an
image, an empty or undecodable video, ...). Its message is meant to be shown to the user as is, so
it always says which file, what is wrong with it and what to do about it. Programming errors (a
float frame passed where uint8 is required, ...) stay ``ValueError`` / ``TypeError``.
"""

from __future__ import annotations

import os
from pathlib import Path


class InvalidInputError(ValueError):
    """Bad user input; ``str(error)`` names the file, what is wrong and what to do.

    Subclasses ``ValueError`` so callers that already catch ``ValueError`` keep working.
    """


def require_file(path: str | os.PathLike, what: str, hint: str) -> Path:
    """``path`` as a Path when it is an existing, non-empty regular file; else InvalidInputError.

    what: the kind of input for the message ("photo", "video"); hint: what to do ("upload a
    JPEG or PNG photo"). Shared by photo and video loading so both say it the same way.
    """
    p = Path(path)
    if not p.exists():
        raise InvalidInputError(f"{what} {p.name!r} was not found (looked at {p}); {hint}.")
    if not p.is_file():
        raise InvalidInputError(f"{what} {p.name!r} is not a file ({p}); {hint}.")
    if p.stat().st_size == 0:
        raise InvalidInputError(f"{what} {p.name!r} is empty (0 bytes), the upload probably failed; {hint} again.")
    return p
