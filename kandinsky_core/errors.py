"""The one exception type the core raises for bad input, so callers can tell it from a crash."""


class KandinskyError(ValueError):
    """Bad input to kandinsky_core: the message names the problem and the fix."""


class Cancelled(Exception):
    """A run stopped because its per-step callback returned False."""
