"""User-facing errors: the CLI prints their message as one line and exits non-zero."""


class UserError(Exception):
    """A mistake or condition the user can act on (bad params, missing input, unreachable server)."""

    exit_code = 1


class TransientError(UserError):
    """A condition that may clear by itself (a source or server down for now): worth a retry.

    The CLI exits with 75 (sysexits EX_TEMPFAIL, "try again later"), which the Prefect flows
    retry with backoff; other user errors exit 1 and are never retried.
    """

    exit_code = 75
