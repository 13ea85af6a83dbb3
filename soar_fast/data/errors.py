"""The one exception type of the data package: a bad input, named by its place."""

from __future__ import annotations

from soar_fast.errors import UserError


class DataError(UserError):
    """A bad data input. The message is one line that starts with the place: `file:line` or the
    image path (STYLE.md rule 4), so the CLI prints it as is and exits non-zero."""
