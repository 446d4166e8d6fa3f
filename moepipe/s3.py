"""S3 endpoint probing and transfer-failure wording shared by the DVC remote, the MLflow artifact
store and the dev stack.

A bottom-level module: it imports nothing from moepipe, so `moepipe.remote`, `moepipe.registry`
and `moepipe.stack` can all use it without depending on one another.
"""

from __future__ import annotations

TIMEOUT_S = 3.0  # default timeout of a probe, connect and read each
REGION = "us-east-1"  # region of the S3 clients; S3-compatible stores (SeaweedFS) accept any


def probe_s3_endpoint(endpoint: str | None, timeout_s: float = TIMEOUT_S) -> str | None:
    """None if something answers S3 requests at `endpoint` (None: AWS S3), else why not.

    Sends one unsigned ListBuckets: no keys needed and none sent. An S3 error (AccessDenied) is an
    answer; whether the keys and buckets are right is left to the real request to report."""
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    config = Config(signature_version=UNSIGNED, connect_timeout=timeout_s, read_timeout=timeout_s,
                    retries={"total_max_attempts": 1, "mode": "standard"}, s3={"addressing_style": "path"})
    client = boto3.client("s3", endpoint_url=endpoint, region_name=REGION, config=config)
    try:
        client.list_buckets()
    except ClientError:
        return None
    except (BotoCoreError, OSError) as error:
        return s3_transport_reason(error)
    return None


def s3_transport_reason(error: Exception) -> str:
    """Why a botocore request got no S3 answer, in a few words."""
    from botocore.exceptions import ConnectTimeoutError, ReadTimeoutError

    if isinstance(error, (ConnectTimeoutError, ReadTimeoutError)):
        return "no answer (timed out)"
    detail = str(getattr(error, "kwargs", {}).get("error", error))
    return "connection refused" if "refused" in detail.lower() else f"cannot connect ({detail})"
