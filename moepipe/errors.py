"""User-facing errors: the CLI prints their message as one line and exits non-zero."""


class UserError(Exception):
    """A mistake or condition the user can act on (bad params, missing input, unreachable server)."""
