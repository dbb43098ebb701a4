"""The one exception type for mistakes a user can fix.

The CLI turns a `UserError` into a single line on stderr and exit code 2; anything else is a bug and
keeps its traceback. Messages name the wrong value and what is allowed:
`augment.cutout.size must be in 1..32, got 40`.
"""


class UserError(ValueError):
    """Bad input: a recipe, key, value, path or file the user can fix."""
