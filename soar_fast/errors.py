"""The one base of the errors the product raises on purpose.

A `UserError` is something the user fixes from its message alone (a config value, a model folder, a
data file, scorer weights, an output path that already exists): the CLI prints it as one line and
exits with its `exit_code` (2: usage/config, 1: a failed run). Any other exception is a bug and keeps
its traceback. Imports nothing, so every layer may raise one.
"""

from __future__ import annotations


class UserError(Exception):
    exit_code = 1


class OutputExistsError(UserError):
    """A command would overwrite something already there; the message names the path and the way out."""

    exit_code = 2
