"""`moepipe studio`: open the model, bind the address, serve the app with uvicorn until Ctrl-C."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from moepipe.config import load_params
from moepipe.config import tracking_uri as config_tracking_uri
from moepipe.errors import UserError
from moepipe.studio.app import create_app
from moepipe.studio.state import DEFAULT_POLL_SECONDS, ModelHolder

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8765


def default_model(params: Path) -> str:
    """models:/<register.model_name>@champion, the model applications load."""
    name = load_params(params).registry.model_name if Path(params).is_file() else "moe-generator"
    return f"models:/{name}@champion"


def listen(host: str, port: int) -> socket.socket:
    """A bound, listening TCP socket; a UserError naming the address when it cannot be had."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port must be in 0..65535 (got {port})")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as error:
        raise UserError(f"--host {host}: cannot resolve ({error.strerror})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as error:
        sock.close()
        hint = "; pick another --port" if error.errno in (98, 48) else ""  # EADDRINUSE on Linux, macOS
        raise UserError(f"cannot listen on {host}:{port}: {error.strerror or error}{hint}") from None
    sock.set_inheritable(True)
    return sock


def run_studio(model: str | None = None, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
               params: Path = Path("params.yaml"), poll_seconds: float = DEFAULT_POLL_SECONDS,
               directions: Path | None = None, echo: Callable[[str], None] = print) -> str:
    """Serve the studio on host:port until interrupted; returns a one-line summary when it stops."""
    import uvicorn

    model = model or default_model(params)
    tracking = config_tracking_uri(params)
    holder = ModelHolder(model, tracking_uri=tracking, poll_seconds=poll_seconds, directions=directions).open()
    sock = listen(host, port)
    bound_port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    answering = (f"{holder.name} v{holder.version}" if holder.version is not None else model)
    following = f", following {model} every {poll_seconds:g} s" if holder.registered else ""
    echo(f"studio: http://{shown}:{bound_port}/ draws with {answering}{following}; API docs at /docs; Ctrl-C stops")
    server = uvicorn.Server(uvicorn.Config(create_app(holder), log_level="warning", access_log=False))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return f"studio: stopped (last answered with {holder.name} v{holder.version})" if holder.version is not None \
        else "studio: stopped"


@contextlib.contextmanager
def serving(holder: ModelHolder, host: str = DEFAULT_HOST, port: int = 0, poll: bool = True) -> Iterator[str]:
    """Serve the studio of an opened `holder` from a background thread; yields its base URL.

    For benchmarks, tests and screenshots: port 0 takes a free port. The server (and the alias
    polling, with `poll`) stops when the block ends.
    """
    import uvicorn

    sock = listen(host, port)
    server = uvicorn.Server(uvicorn.Config(create_app(holder, poll=poll), log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="studio-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError("the studio server did not start")
        time.sleep(0.02)
    shown = f"[{host}]" if ":" in host else host
    try:
        yield f"http://{shown}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
