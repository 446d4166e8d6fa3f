"""The local stack (SeaweedFS S3, MLflow server, Prefect server + process worker) on free loopback
ports in a temporary state dir, started once per test session and stopped at its end.

    def test_something(local_stack):
        stack, env = local_stack          # or local_stack.stack / local_stack.env
        subprocess.run([...], env={**os.environ, **env})

`env` holds the client variables of the stack's env file (moepipe.stack.ENV_NAMES):
MLFLOW_TRACKING_URI, PREFECT_API_URL, AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ... Tests that stop or
kill services must bring them back with `stack.up()` before they return.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import NamedTuple

import pytest

from moepipe.stack import Ports, Stack, StackError


class RunningStack(NamedTuple):
    stack: Stack
    env: dict[str, str]


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    state = tmp_path_factory.mktemp("stack")
    began = time.monotonic()
    for attempt in range(3):
        stack = Stack(state, Ports.free(), prefect_ui=False)
        try:
            reports = stack.up()
            break
        except StackError as error:  # a free port taken by someone else in the meantime
            stack.down()
            if "already in use" not in str(error) or attempt == 2:
                raise
        except BaseException:
            stack.down()
            raise
    print(f"\nlocal stack up in {time.monotonic() - began:.1f} s: "
          + ", ".join(f"{r.name} {r.seconds:.1f} s" for r in reports if r.seconds is not None))
    try:
        yield RunningStack(stack, stack.env())
    finally:
        stack.down()
