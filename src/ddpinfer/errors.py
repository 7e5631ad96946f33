"""The one base class for errors a user can act on.

Every such error (bad configuration, bad input, a set-up that cannot work) derives from
``UserError``: the entry point reports it as one line naming the rank, with exit code 2, and the
preflight passes it to the other ranks. Anything else is a bug or an environment failure and
keeps its traceback.
"""


class UserError(ValueError):
    """A problem the user can fix; the message says what was seen and what to change."""


class InputError(UserError):
    """An input file or one of its records cannot be used; the message names file and line."""
