"""User-facing errors: the CLI prints their message as one line and exits non-zero."""

ERROR_PREFIX = "moepipe: error:"  # starts the one stderr line of a user error; the flows look for it
# sysexits.h EX_TEMPFAIL, "try again later": the exit status of a TransientError, which the flows
# retry even when the command also printed an error line.
EX_TEMPFAIL = 75


def error_line(message: str) -> str:
    """The line the CLI prints on stderr for a user error: `moepipe: error: MESSAGE`."""
    return f"{ERROR_PREFIX} {message}"


class UserError(Exception):
    """A mistake or condition the user can act on (bad params, missing input, unreachable server)."""

    exit_code = 1


class TransientError(UserError):
    """A condition that may clear by itself (a source or server down for now): worth a retry.

    The CLI exits with EX_TEMPFAIL (75, "try again later"), which the Prefect flows retry with
    backoff; other user errors exit 1 and are never retried.
    """

    exit_code = EX_TEMPFAIL


# Query parameters whose values are credentials (compared lower-cased).
SECRET_PARAMS = frozenset({"api_key", "apikey", "key", "password", "token", "access_token"})


def redact(url: object) -> str:
    """The URL or URI fit for messages, logs and reports: its password (scheme://user:password@host)
    and the values of credential-like query parameters (api_key=, token=, ...) become ***.

    Works on the text, so it never fails, even on a URL too broken for urllib (a bad port, say).
    """
    from urllib.parse import parse_qsl, urlencode

    base, question, rest = str(url).partition("?")
    scheme, slashes, after = base.partition("://")
    if slashes:
        netloc, slash, path = after.partition("/")
        userinfo, at, host = netloc.rpartition("@")  # the last @: a stray one in a password stays hidden
        if at and ":" in userinfo:
            base = f"{scheme}://{userinfo.partition(':')[0]}:***@{host}{slash}{path}"
    if not question:
        return base
    query, hash_mark, fragment = rest.partition("#")
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(key.lower() in SECRET_PARAMS for key, _ in pairs):
        query = urlencode([(key, "***" if key.lower() in SECRET_PARAMS else value) for key, value in pairs],
                          safe="*")
    return base + question + query + hash_mark + fragment
