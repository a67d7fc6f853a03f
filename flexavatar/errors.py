"""Exception types shared across FlexAvatar.

:class:`InvalidInputError` is the one exception type for bad *user input* (a photo that is not an
image, an empty or undecodable video, ...). Its message is meant to be shown to the user as is, so
it always says which file, what is wrong with it and what to do about it. Programming errors (a
float frame passed where uint8 is required, ...) stay ``ValueError`` / ``TypeError``.
"""

from __future__ import annotations


class InvalidInputError(ValueError):
    """Bad user input; ``str(error)`` names the file, what is wrong and what to do.

    Subclasses ``ValueError`` so callers that already catch ``ValueError`` keep working.
    """
