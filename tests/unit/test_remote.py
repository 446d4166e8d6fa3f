"""The pieces behind one-line S3 failures, without servers: which endpoint a DVC remote uses, DVC's
stderr condensed, the watch that stops a transfer, and register's artifact-store diagnosis."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from moepipe.errors import EX_TEMPFAIL, TransientError, UserError, error_line
from moepipe.remote import (
    EndpointWatch,
    ProcessRun,
    Remote,
    closing_line,
    dvc_reason,
    failure_line,
    preflight,
    remote_name,
    resolve,
    transfer_reason,
    wait_watched,
)


@pytest.fixture
def dead_endpoint() -> str:
    with socket.socket() as probe:  # bound, then closed: nothing listens there
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def test_the_endpoint_comes_from_the_remote_else_the_environment(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    (tmp_path / ".dvc" / "config").write_text(
        "[core]\n    no_scm = true\n    remote = store\n['remote \"store\"']\n    url = s3://bucket/prefix\n"
        "['remote \"pinned\"']\n    url = s3://other\n    endpointurl = http://127.0.0.1:9000\n"
        "['remote \"folder\"']\n    url = /srv/dvc\n")
    environ = {"AWS_ENDPOINT_URL": "http://127.0.0.1:8333"}
    assert resolve(tmp_path, environ=environ) == Remote("store", "s3://bucket/prefix", "http://127.0.0.1:8333")
    assert resolve(tmp_path, "store", {}) == Remote("store", "s3://bucket/prefix", None)  # AWS S3 itself
    assert resolve(tmp_path, "pinned", environ).endpoint == "http://127.0.0.1:9000"
    assert resolve(tmp_path, "folder", environ).endpoint is None
    with pytest.raises(Exception, match=r"no DVC remote named 'nope' \(configured: folder, pinned, store\)"):
        resolve(tmp_path, "nope", environ)
    # The flows ask for the name only: None where no default is set, a UserError for an unknown one.
    assert remote_name(tmp_path) == "store" and remote_name(tmp_path, "pinned") == "pinned"
    with pytest.raises(UserError, match=r"^no DVC remote named 'nope'"):
        remote_name(tmp_path, "nope")
    (tmp_path / ".dvc" / "config").write_text("[core]\n    no_scm = true\n")
    assert remote_name(tmp_path) is None
    with pytest.raises(UserError, match="no default DVC remote"):
        resolve(tmp_path)
    with pytest.raises(UserError, match=r"^cannot open the DVC project at "):
        remote_name(tmp_path / "nowhere")


def test_dvc_failures_condense_to_one_line_naming_the_endpoint() -> None:
    stderr = ['ERROR: unexpected error - Could not connect to the endpoint URL: "http://127.0.0.1:8333/b"', "",
              "Having any troubles? Hit us up at https://dvc.org/support, we are always happy to help!"]
    assert dvc_reason(stderr, 255) == 'Could not connect to the endpoint URL: "http://127.0.0.1:8333/b"'
    assert dvc_reason([], -15) == "dvc exited with status -15"
    remote = Remote("s3store", "s3://b/store", "http://127.0.0.1:8333")
    assert failure_line(remote, stderr, 255) == (
        'S3 endpoint http://127.0.0.1:8333 (remote s3store, s3://b/store): Could not connect to the endpoint URL: '
        '"http://127.0.0.1:8333/b"; objects that arrived are complete, run it again to transfer the rest')
    failed = ProcessRun(["dvc", "push"], 255, ["Collecting"], stderr, 1.0)
    assert transfer_reason(remote, failed) == failure_line(remote, stderr, 255)
    stopped = ProcessRun(["dvc", "push"], -15, [], [], 1.0, stopped="became unreachable")
    assert transfer_reason(remote, stopped) == "became unreachable"  # the watch's reason wins
    done = ProcessRun(["dvc", "push"], 0, ["Collecting", "3 files pushed", ""], [], 1.0)
    assert transfer_reason(remote, done) is None and closing_line(done) == "3 files pushed"


def test_the_error_line_and_the_retry_status_are_defined_once() -> None:
    assert error_line("bad params") == "moepipe: error: bad params"
    assert TransientError.exit_code == EX_TEMPFAIL == 75 and UserError.exit_code == 1


def test_preflight_and_watch_name_a_dead_endpoint(dead_endpoint: str) -> None:
    remote = Remote("s3store", "s3://b/store", dead_endpoint)
    with pytest.raises(TransientError, match=rf"^S3 endpoint {dead_endpoint} \(remote s3store, s3://b/store\) "
                                             "is unreachable: connection refused; nothing was transferred"):
        preflight(remote)
    preflight(Remote("folder", "/srv/dvc"))  # not S3: DVC speaks for itself

    watch = EndpointWatch(remote, interval_s=0, misses=2)
    assert watch() is None  # one miss may be a blip
    assert watch() == (f"S3 endpoint {dead_endpoint} (remote s3store, s3://b/store) became unreachable during "
                       "the transfer: connection refused; objects that arrived are complete, run it again to "
                       "transfer the rest")


def test_a_watched_process_is_stopped_when_the_watch_says_so() -> None:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    calls = iter([None, None, "gone"])
    began = time.monotonic()
    assert wait_watched(process, lambda: next(calls), poll_s=0.1) == "gone"
    assert process.poll() is not None and time.monotonic() - began < 10
    quick = subprocess.Popen([sys.executable, "-c", "pass"])
    assert wait_watched(quick, lambda: "never asked", poll_s=5) is None and quick.returncode == 0


def test_register_names_the_artifact_store_that_is_down(dead_endpoint: str) -> None:
    from mlflow.exceptions import MlflowException

    from moepipe.registry.tracking import artifact_store_failure

    server = "http://127.0.0.1:5000"
    error = MlflowException(f"API request to {server}/api/2.0/mlflow-artifacts/artifacts/1/r/artifacts/a.png failed "
                            "with exception ... (Caused by ResponseError('too many 500 error responses'))")
    failure = artifact_store_failure(error, server, {"MLFLOW_S3_ENDPOINT_URL": dead_endpoint})
    assert str(failure) == (f"MLflow server {server} could not store artifacts: its artifact store, S3 endpoint "
                            f"{dead_endpoint}, is unreachable: connection refused; no model version was completed; "
                            "run register again once it is back")
    assert failure.exit_code == 75
    assert str(artifact_store_failure(error, server, {})).startswith(
        f"MLflow server {server} could not store artifacts (HTTP 500); its artifact store (S3) may be down")
    assert artifact_store_failure(MlflowException("RESOURCE_DOES_NOT_EXIST: no such run"), server, {}) is None
    assert artifact_store_failure(ValueError("a bug"), server, {}) is None
