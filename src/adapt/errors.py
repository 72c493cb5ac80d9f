"""The one exception type for bad user input: the CLI prints its message as one line and exits 2."""


class AdaptError(Exception):
    """A problem the user can fix (bad recipe, missing file, bad data). The message names it and the fix."""
