"""`moepipe stack up|down|status|check`: argument parsing around moepipe.stack.Stack."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from moepipe.errors import UserError, error_line
from moepipe.stack.layout import Ports

stack_app = typer.Typer(
    name="stack",
    help="The local stack on 127.0.0.1: SeaweedFS S3 (default port 8333), MLflow server (5000), "
    "Prefect server (4200) and a process worker on pool moepipe-process. State, logs, pid files "
    "and generated keys live in --state-dir; `up` writes <state-dir>/env for clients.",
    no_args_is_help=True,
)

StateDirOption = Annotated[Path, typer.Option("--state-dir", help="data, logs, pid files and keys of the stack")]


def _fail(message: str) -> None:
    typer.echo(error_line(message), err=True)
    raise typer.Exit(1)


def _ports(base: Ports, s3: int | None, mlflow: int | None, prefect: int | None,
           named: list[str]) -> Ports | None:
    overrides: dict[str, int] = {}
    for item in named:
        name, _, value = item.partition("=")
        if not value.strip().isdigit():
            raise UserError(f"--port {item}: expected NAME=NUMBER, NAME one of {', '.join(Ports.names())}")
        overrides[name.strip().replace("-", "_")] = int(value)
    for name, value in (("s3", s3), ("mlflow", mlflow), ("prefect", prefect)):
        if value is not None:
            overrides[name] = value
    if not overrides:
        return None
    try:
        return base.with_overrides(overrides)
    except ValueError as error:
        raise UserError(f"ports: {error}") from None


@stack_app.command()
def up(
    state_dir: StateDirOption = Path(".stack"),
    s3_port: Annotated[int | None, typer.Option(help="S3 gateway port (default 8333)")] = None,
    mlflow_port: Annotated[int | None, typer.Option(help="MLflow server port (default 5000)")] = None,
    prefect_port: Annotated[int | None, typer.Option(help="Prefect server port (default 4200)")] = None,
    port: Annotated[list[str], typer.Option(
        "--port", help="any port as NAME=N, repeatable; names: " + ", ".join(Ports.names()) +
        " (SeaweedFS defaults: master 9333, volume 9340, filer 8888, admin 23646; gRPC = HTTP + 10000, "
        "and the admin gRPC port is always admin + 10000)",
    )] = [],  # noqa: B006 - typer needs a literal default
    prefect_ui: Annotated[bool, typer.Option(help="serve the Prefect dashboard")] = True,
) -> None:
    """Start every service that is not running (idempotent) and write <state-dir>/env."""
    from moepipe.stack.stack import Stack

    try:
        ports = _ports(Stack(state_dir).ports, s3_port, mlflow_port, prefect_port, port)
        stack = Stack(state_dir, ports, prefect_ui=prefect_ui)
        reports = stack.up()
    except UserError as error:
        _fail(str(error))
    except KeyboardInterrupt:
        _fail("interrupted; the services this `up` had started were stopped again")
    for report in reports:
        typer.echo(report.line())
    typer.echo(f"client environment: set -a; . {_shown(stack.state.env_file)}; set +a")


@stack_app.command()
def down(state_dir: StateDirOption = Path(".stack")) -> None:
    """Stop the processes that `up` started (SIGTERM, then SIGKILL); harmless if none run."""
    from moepipe.stack.stack import Stack

    for report in Stack(state_dir).down():
        typer.echo(report.line())


@stack_app.command()
def status(state_dir: StateDirOption = Path(".stack")) -> None:
    """One line per service; exit status 1 if any is down."""
    from moepipe.stack.stack import Stack

    try:
        reports = Stack(state_dir).status()
    except UserError as error:
        _fail(str(error))
    for report in reports:
        typer.echo(report.line())
    if not all(report.ok for report in reports):
        raise typer.Exit(1)


@stack_app.command()
def check(
    env_file: Annotated[Path | None, typer.Option(
        help="read the servers from this env file (e.g. .stack/env) instead of the environment")] = None,
) -> None:
    """Check that the servers in MLFLOW_TRACKING_URI, PREFECT_API_URL, AWS_ENDPOINT_URL answer.

    Works for any deployment, not just the local stack; exit status 1 if one does not answer.
    """
    from moepipe.stack.health import probe_environment
    from moepipe.stack.layout import read_env_file

    try:
        env = read_env_file(env_file) if env_file is not None else dict(os.environ)
    except OSError as error:
        _fail(f"{env_file}: {error.strerror}")
    results = probe_environment(env)
    if not results:
        _fail("none of MLFLOW_TRACKING_URI (http), PREFECT_API_URL, AWS_ENDPOINT_URL (+ keys) is set")
    failed = False
    for name, (url, reason) in results.items():
        if reason is None:
            typer.echo(f"{name:<8} ok           {url}")
        else:
            failed = True
            answered = reason.startswith(("HTTP ", "S3 error", "unexpected answer"))
            typer.echo(f"{name:<8} {'error' if answered else 'unreachable':<12} {url}: {reason}")
    if failed:
        raise typer.Exit(1)


@stack_app.command("create-buckets")
def create_buckets(
    wait: Annotated[float, typer.Option(help="seconds to wait for the S3 endpoint to answer")] = 0.0,
) -> None:
    """Create the buckets moepipe-dvc and moepipe-mlflow where missing, on the S3 endpoint in
    AWS_ENDPOINT_URL (AWS S3 itself if unset) with the keys in AWS_ACCESS_KEY_ID/SECRET_ACCESS_KEY."""
    import time

    from moepipe.stack.health import probe_s3
    from moepipe.stack.layout import REGION
    from moepipe.stack.seaweedfs import ensure_buckets
    from moepipe.stack.service import Credentials

    endpoint = os.environ.get("AWS_ENDPOINT_URL") or None
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not key or not secret:
        _fail("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL unless on AWS S3)")
    region = os.environ.get("AWS_DEFAULT_REGION") or REGION
    deadline = time.monotonic() + wait
    while (reason := probe_s3(endpoint, key, secret)) is not None and time.monotonic() < deadline:
        time.sleep(1.0)
    if reason is not None:
        _fail(f"S3 endpoint {endpoint or 'AWS S3'} is unreachable: {reason}")
    try:
        created = ensure_buckets(endpoint, Credentials(key, secret), region)
    except UserError as error:
        _fail(str(error))
    typer.echo(f"buckets created: {', '.join(created)}" if created else "buckets already exist")


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
