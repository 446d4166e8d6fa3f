"""Health probes of the stack's servers, with short timeouts and messages that name the URL.

`require_mlflow` / `require_prefect` / `require_s3` are the client helpers: call one before
talking to a server, and an unreachable server ends in one actionable line instead of a hang or
a retry loop deep inside a client library. The `probe_*` functions return None when healthy,
else the reason, for `moepipe stack status`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import httpx

from moepipe.errors import UserError
from moepipe.s3 import REGION, TIMEOUT_S, s3_transport_reason


class Unreachable(UserError):
    """A server that the configuration points at does not answer (or answers wrongly)."""


def _reason(error: Exception) -> str:
    if isinstance(error, httpx.ConnectError):
        text = str(error).lower()
        return "connection refused" if "refused" in text else f"cannot connect ({error})"
    if isinstance(error, httpx.TimeoutException):
        return "no answer (timed out)"
    return str(error) or type(error).__name__


def probe_http(url: str, expect: str | None = None, timeout_s: float = TIMEOUT_S) -> str | None:
    """None if GET url answers 200 (and contains `expect`), else why not."""
    try:
        response = httpx.get(url, timeout=timeout_s, follow_redirects=False, trust_env=False)
    except (httpx.HTTPError, OSError) as error:
        return _reason(error)
    if response.status_code != 200:
        return f"HTTP {response.status_code}"
    if expect is not None and expect not in response.text:
        return f"unexpected answer {response.text[:80]!r}"
    return None


def probe_mlflow(tracking_uri: str, timeout_s: float = TIMEOUT_S) -> str | None:
    return probe_http(tracking_uri.rstrip("/") + "/health", "OK", timeout_s)


def probe_prefect(api_url: str, timeout_s: float = TIMEOUT_S) -> str | None:
    return probe_http(api_url.rstrip("/") + "/health", "true", timeout_s)


def probe_s3(endpoint: str | None, access_key: str, secret_key: str, buckets: Sequence[str] = (),
             timeout_s: float = TIMEOUT_S) -> str | None:
    """None if the S3 endpoint accepts the keys and holds every bucket in `buckets`."""
    from botocore.exceptions import BotoCoreError, ClientError

    client = s3_client(endpoint, access_key, secret_key, timeout_s, read_timeout_s=timeout_s)
    try:
        names = {bucket["Name"] for bucket in client.list_buckets().get("Buckets", [])}
    except ClientError as error:
        return f"S3 error {error.response.get('Error', {}).get('Code', '?')}"
    except (BotoCoreError, OSError) as error:
        return s3_transport_reason(error)
    missing = [bucket for bucket in buckets if bucket not in names]
    return f"bucket(s) missing: {', '.join(missing)}" if missing else None


def s3_client(endpoint: str | None, access_key: str, secret_key: str, timeout_s: float = TIMEOUT_S,
              read_timeout_s: float = 60.0, region: str | None = None):
    """A boto3 S3 client for an S3-compatible endpoint (path-style addressing, no retries);
    endpoint None means AWS S3 itself."""
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=timeout_s, read_timeout=read_timeout_s,
                    retries={"total_max_attempts": 1, "mode": "standard"}, s3={"addressing_style": "path"})
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=access_key,
                        aws_secret_access_key=secret_key, region_name=region or REGION, config=config)


def _require(what: str, url: str, reason: str | None, hint: str) -> None:
    if reason is not None:
        raise Unreachable(f"{what} at {url} is unreachable: {reason} ({hint})")


def require_mlflow(tracking_uri: str, timeout_s: float = TIMEOUT_S) -> None:
    """Raise Unreachable unless the MLflow tracking server answers; local stores always pass."""
    if tracking_uri.startswith(("http://", "https://")):
        _require("MLflow tracking server", tracking_uri, probe_mlflow(tracking_uri, timeout_s),
                 "start it with `moepipe stack up` or fix MLFLOW_TRACKING_URI")


def require_prefect(api_url: str, timeout_s: float = TIMEOUT_S) -> None:
    """Raise Unreachable unless the Prefect API answers."""
    _require("Prefect API", api_url, probe_prefect(api_url, timeout_s),
             "start it with `moepipe stack up` or fix PREFECT_API_URL")


def require_s3(endpoint: str, access_key: str, secret_key: str, buckets: Sequence[str] = (),
               timeout_s: float = TIMEOUT_S) -> None:
    _require("S3 endpoint", endpoint, probe_s3(endpoint, access_key, secret_key, buckets, timeout_s),
             "start it with `moepipe stack up` or fix AWS_ENDPOINT_URL and the AWS_* keys")


def probe_environment(env: Mapping[str, str], timeout_s: float = TIMEOUT_S) -> dict[str, tuple[str, str | None]]:
    """Probe the servers that an environment (os.environ, a stack's env file) points at.

    Returns {name: (url, None or reason)} for MLflow, Prefect and S3, where configured."""
    results: dict[str, tuple[str, str | None]] = {}
    tracking_uri = env.get("MLFLOW_TRACKING_URI", "")
    if tracking_uri.startswith(("http://", "https://")):
        results["mlflow"] = (tracking_uri, probe_mlflow(tracking_uri, timeout_s))
    if env.get("PREFECT_API_URL"):
        results["prefect"] = (env["PREFECT_API_URL"], probe_prefect(env["PREFECT_API_URL"], timeout_s))
    endpoint = env.get("AWS_ENDPOINT_URL") or env.get("MLFLOW_S3_ENDPOINT_URL")
    if endpoint and env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        results["s3"] = (endpoint, probe_s3(endpoint, env["AWS_ACCESS_KEY_ID"],
                                            env["AWS_SECRET_ACCESS_KEY"], (), timeout_s))
    return results
