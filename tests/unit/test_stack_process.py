"""moepipe.stack without servers: process records, stopping exactly what was started, ports,
secrets on disk, and the committed DVC remote."""

from __future__ import annotations

import configparser
import dataclasses
import os
import signal
import time
from pathlib import Path

import pytest

from moepipe.errors import UserError
from moepipe.stack import DVC_REMOTE, DVC_REMOTE_URL, ENV_NAMES, Ports
from moepipe.stack.cli import _ports
from moepipe.stack.layout import StateDir, client_env, port_in_use, read_env_file, write_env_file
from moepipe.stack.process import ProcessRecord, group_members, is_running, launch, start_identity, stop
from moepipe.stack.service import Credentials

ROOT = Path(__file__).resolve().parents[2]


def start(tmp_path: Path, script: str) -> ProcessRecord:
    return launch("probe", ["/bin/sh", "-c", script], dict(os.environ), tmp_path / "probe.log", tmp_path)


def wait_gone(pids: list[int], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(start_identity(pid) for pid in pids):
            return True
        time.sleep(0.05)
    return False


def test_record_survives_a_reload_and_stop_ends_the_whole_group(tmp_path):
    record = start(tmp_path, "sleep 30 & sleep 30; wait")
    time.sleep(0.3)
    assert ProcessRecord.load(tmp_path, "probe") == record
    assert int((tmp_path / "probe.pid").read_text()) == record.pid
    members = group_members(record.pid)
    assert len(members) == 3 and is_running(record)  # the shell and both sleeps

    assert stop(record, grace_s=5) is True
    assert wait_gone(members, 0.5) and not is_running(record)
    assert stop(record) is False  # a second stop is harmless


def test_a_recycled_pid_is_never_signalled(tmp_path):
    record = start(tmp_path, "sleep 30")
    impostor = dataclasses.replace(record, identity=record.identity + "0")  # same pid, other process
    try:
        assert not is_running(impostor)
        assert stop(impostor) is False
        assert is_running(record)
    finally:
        stop(record)


def test_sigterm_ignored_means_sigkill_after_the_grace_period(tmp_path):
    record = start(tmp_path, "trap '' TERM; sleep 30 & wait; sleep 30")
    time.sleep(0.3)
    began = time.monotonic()
    assert stop(record, grace_s=0.5) is True
    assert 0.4 < time.monotonic() - began < 4
    assert not group_members(record.pid)


def test_orphans_of_a_dead_leader_are_still_stopped(tmp_path):
    record = start(tmp_path, "sleep 30 & exit 0")
    time.sleep(0.3)
    orphans = group_members(record.pid)
    assert orphans and record.pid not in orphans
    assert stop(record, grace_s=2) is True
    assert wait_gone(orphans)


def test_default_signals_are_restored_for_services(tmp_path):
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in a shell's background job
    try:
        record = start(tmp_path, "sleep 30")
    finally:
        signal.signal(signal.SIGINT, previous)
    time.sleep(0.2)
    os.killpg(record.pid, signal.SIGINT)
    assert wait_gone([record.pid], 3)
    stop(record)


def test_ports_are_validated_and_free_ports_are_free():
    with pytest.raises(ValueError, match="used more than once: \\[5000\\]"):
        Ports(s3=5000)
    with pytest.raises(ValueError, match="admin: must be at most 55535"):
        Ports(admin=60000)
    with pytest.raises(ValueError, match="unknown port name"):
        Ports().with_overrides({"minio": 9000})
    free = Ports.free()
    assert free.admin_grpc == free.admin + 10000
    assert not any(port_in_use(port) for port in [*dataclasses.astuple(free), free.admin_grpc])
    assert set(Ports().of("seaweedfs").values()) == {8333, 9333, 9340, 8888, 23646, 18333, 19333, 19340, 18888,
                                                     33646}


def test_cli_port_options():
    assert _ports(Ports(), None, None, None, []) is None  # nothing asked: keep recorded ports
    assert _ports(Ports(), 9000, None, 4300, ["master=9444"]) == Ports(s3=9000, prefect=4300, master=9444)
    with pytest.raises(UserError, match="--port master: expected NAME=NUMBER"):
        _ports(Ports(), None, None, None, ["master"])
    with pytest.raises(UserError, match="ports: unknown port name"):
        _ports(Ports(), None, None, None, ["minio=9000"])


def test_env_file_and_keys_are_private_and_reused(tmp_path):
    state = StateDir(tmp_path / "stack")
    state.create()
    keys = Credentials.load_or_create(state)
    assert Credentials.load_or_create(state) == keys
    assert len(keys.access_key) == 20 and len(keys.secret_key) == 40
    env = client_env(Ports(), keys.access_key, keys.secret_key)
    write_env_file(state.env_file, env)
    for path in (state.env_file, state.credentials):
        assert path.stat().st_mode & 0o777 == 0o600
    assert state.root.stat().st_mode & 0o777 == 0o700
    assert read_env_file(state.env_file) == env and tuple(env) == ENV_NAMES
    assert env["AWS_ENDPOINT_URL"] == env["MLFLOW_S3_ENDPOINT_URL"] == "http://127.0.0.1:8333"
    assert not list(state.root.glob("*.tmp"))


def test_committed_dvc_remote_has_no_endpoint_and_no_keys():
    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc" / "config")
    assert config["core"]["remote"] == DVC_REMOTE
    [section] = [name for name in config.sections() if name.strip("'") == f'remote "{DVC_REMOTE}"']
    remote = config[section]
    assert remote["url"] == DVC_REMOTE_URL
    # endpointurl and keys come from the environment or config.local. The timeouts are set because
    # dvc-s3 passes unset ones to botocore as None, "no timeout": a push could then wait forever
    # for an S3 server that went away in the middle of a request.
    assert set(remote) == {"url", "connect_timeout", "read_timeout"}
    assert 0 < float(remote["connect_timeout"]) <= 30 and 0 < float(remote["read_timeout"]) <= 120


def test_start_up_failures_name_the_service_and_its_log(tmp_path):
    from moepipe.stack.service import ServiceSpec
    from moepipe.stack.stack import Stack, StackError

    stack = Stack(tmp_path / "stack")
    stack.state.create()
    hangs = ServiceSpec("mlflow", ["/bin/sh", "-c", "echo starting; sleep 30"], dict(os.environ),
                        "http://127.0.0.1:9", lambda: "connection refused", start_timeout_s=1.0)
    started: list[ProcessRecord] = []
    began = time.monotonic()
    with pytest.raises(StackError, match=r"^mlflow did not become healthy at http://127.0.0.1:9 within 1 s "
                                         r"\(connection refused\); see /.*/logs/mlflow.log$"):
        stack._start([hangs], started)
    assert time.monotonic() - began < 3
    assert stop(started[0]) is True

    dies = ServiceSpec("prefect-server", ["/bin/sh", "-c", "echo 'address already in use' >&2; exit 3"],
                       dict(os.environ), "http://127.0.0.1:9/api", lambda: "connection refused", 30.0)
    with pytest.raises(StackError, match=r"^prefect-server exited during start-up with status 3; see "
                                         r"/.*/logs/prefect-server.log; last line: address already in use$"):
        stack._start([dies], [])
