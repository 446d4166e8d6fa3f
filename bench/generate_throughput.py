"""Generation throughput: avatars/s of AvatarModel at batch 64 on CPU, and REST latency.

    python bench/generate_throughput.py [--avatars 1024] [--batch 64] [--threads N]
                                        [--rest] [--rest-model URI|DIR] [--rest-requests 200]

Models: (a) the classic-size DCGAN (64 px, width 64, z 100) conditioned on the default 33-tag
vocabulary, untrained (speed does not depend on the weights); (b) the repo's trained default
generator, models/generator.pt, when it exists. Each is timed through three paths:

  render  latents(seeds) + AvatarModel.render → uint8 arrays (what evaluate and generate do)
  encode  PNG with tEXt chunks + base64 of ready images, one per avatar
  served  both: what the pyfunc's predict does per row, minus pandas and HTTP

The machine may be shared, so all paths take turns batch by batch and each reports its median
round (and best); the load average before and after says how busy the other cores were.
Goal: ≥ 500 avatars/s for the 64 px DCGAN through `render`.

`--rest` measures p50/p95 latency of single-avatar requests to `mlflow models serve` on
loopback (`rest_latency`): the model is `--rest-model` (models:/moe-generator@champion or a
runs:/ URI, found through MLFLOW_TRACKING_URI, or a saved model folder), or else --generator
saved to a temp folder as the registry step logs it (moepipe/registry/pyfunc.py, models from code).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from moepipe.config import Params  # noqa: E402 - imported after sys.path points at the checkout
from moepipe.generate.avatar import AvatarModel  # noqa: E402 - imported after sys.path points at the checkout
from moepipe.generate.pictures import avatar_text, png_bytes  # noqa: E402 - imported after sys.path points at the checkout
from moepipe.models import build_models  # noqa: E402 - imported after sys.path points at the checkout

GOAL = 500.0  # avatars/s, 64 px DCGAN, render path


def classic_dcgan() -> AvatarModel:
    """The pytorch/examples-size DCGAN (64 px, width 64, z 100), conditional on the default tags."""
    labels = Params().labels
    torch.manual_seed(0)
    generator, _ = build_models("dcgan", 64, len(labels.vocabulary), width=64, block="transposed")
    meta = {"arch": "dcgan", "resolution": 64, "label_dim": len(labels.vocabulary),
            "model_kwargs": {"width": 64, "z_dim": 100, "block": "transposed"}, "vocabulary": labels.vocabulary,
            "groups": {name: group.model_dump() for name, group in labels.groups.items()}}
    return AvatarModel(generator, meta)


def typical_tags(avatars: AvatarModel) -> list[str]:
    """One tag of each single-choice group (labels cost nothing, but requests carry some)."""
    return [g["tags"][0] for g in avatars.groups.values() if not g.get("multi") and g.get("tags")
            and g["tags"][0] in avatars.attributes]


def _encode(images: np.ndarray, seeds: list[int], tags: list[str]) -> list[str]:
    """One base64 PNG per avatar with the tEXt chunks the pyfunc writes."""
    provenance = {"model_name": "moe-generator", "model_version": "1"}
    return [base64.b64encode(png_bytes(image, avatar_text("models:/moe-generator/1", s, tags, tags, 0.7,
                                                          provenance))).decode("ascii")
            for image, s in zip(images, seeds)]


def paths(avatars: AvatarModel, tags: list[str], batch: int) -> dict[str, Callable[[list[int]], int]]:
    """render: seeds → uint8; encode: PNG + base64 of ready images; served: both."""
    ready = avatars.render(avatars.latents(range(batch)), [tags] * batch, 0.7)

    def render(seeds: list[int]) -> int:
        return len(avatars.render(avatars.latents(seeds), [tags] * len(seeds), 0.7))

    def encode(seeds: list[int]) -> int:
        return len(_encode(ready[:len(seeds)], seeds, tags))

    def served(seeds: list[int]) -> int:
        return len(_encode(avatars.render(avatars.latents(seeds), [tags] * len(seeds), 0.7), seeds, tags))

    return {"render": render, "encode": encode, "served": served}


def measure(runs: dict[str, Callable[[list[int]], int]], avatars: int, batch: int) -> dict[str, dict[str, float]]:
    """Median and best avatars/s of each run over rounds of one batch, the runs taking turns.

    Taking turns batch by batch spreads the noise of a shared machine evenly over the runs,
    so their ratios hold even when the absolute numbers wander.
    """
    for run in runs.values():  # warm-up
        run(list(range(batch)))
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for start in range(0, avatars, batch):
        seeds = list(range(start, start + batch))
        for name, run in runs.items():
            began = time.perf_counter()
            count = run(seeds)
            rates[name].append(count / (time.perf_counter() - began))
    return {name: {"median": statistics.median(r), "best": max(r), "rounds": len(r)} for name, r in rates.items()}


# -- REST latency -------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def save_local_pyfunc(generator: Path, folder: Path) -> Path:
    """generator.pt (+ directions.npz beside it) as an unregistered pyfunc model folder."""
    import mlflow.pyfunc

    from moepipe.registry.pyfunc import model_code, package_dir, requirements, signature

    artifacts = {"generator": str(generator)}
    if generator.with_name("directions.npz").is_file():
        artifacts["directions"] = str(generator.with_name("directions.npz"))
    target = folder / "model"
    # As the registry step logs it (moepipe/registry/tracking.py), minus the registration details.
    mlflow.pyfunc.save_model(str(target), python_model=str(model_code()), artifacts=artifacts,
                             code_paths=[str(package_dir())], signature=signature(), pip_requirements=requirements())
    return target


def wait_until_up(server: subprocess.Popen, url: str, what: str, startup_timeout: float, pause: float = 0.5) -> None:
    """Poll `url` until it answers 200; a RuntimeError if `server` exits first or time runs out."""
    began = time.perf_counter()
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"{what} exited: {server.stderr.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        if time.perf_counter() - began > startup_timeout:
            raise RuntimeError(f"{what} did not answer {url} in time")
        time.sleep(pause)


def rest_latency(model_uri: str, requests: int = 200, attributes: str = "",
                 startup_timeout: float = 180.0) -> dict[str, float]:
    """p50/p95/mean ms of single-avatar POSTs to `mlflow models serve -m model_uri` on loopback.

    Starts the server (--env-manager local, 1 worker), waits for /ping, sends `requests`
    sequential one-row requests after 5 warm-up ones, then stops the server it started.
    """
    port = _free_port()
    # The server execs `uvicorn` by name: put this interpreter's scripts folder first on PATH.
    env = {**os.environ, "MOEPIPE_QUIET": "1",
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "-h", "127.0.0.1", "-p", str(port),
         "--env-manager", "local", "-w", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        began = time.perf_counter()
        wait_until_up(server, f"{base}/ping", "mlflow models serve", startup_timeout)
        startup = time.perf_counter() - began

        def post(seed: int) -> float:
            body = json.dumps({"dataframe_split": {"columns": ["seed", "attributes", "truncation"],
                                                   "data": [[seed, attributes, 0.7]]}}).encode()
            request = urllib.request.Request(f"{base}/invocations", body, {"Content-Type": "application/json"})
            sent = time.perf_counter()
            with urllib.request.urlopen(request, timeout=60) as reply:
                answer = json.loads(reply.read())
            elapsed = time.perf_counter() - sent
            image = base64.b64decode(answer["predictions"][0]["image"])
            assert image.startswith(b"\x89PNG"), "the server did not answer with a PNG"
            return elapsed * 1000

        for seed in range(5):
            post(seed)
        times = sorted(post(seed) for seed in range(5, 5 + requests))
        return {"p50_ms": times[len(times) // 2], "p95_ms": times[int(0.95 * (len(times) - 1))],
                "mean_ms": statistics.fmean(times), "requests": requests, "startup_s": startup}
    finally:
        # The server (and the uvicorn it execs) runs in a session of its own: end that group only.
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--avatars", type=int, default=1024, help="avatars per path (after warm-up)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--generator", type=Path, default=ROOT / "models" / "generator.pt")
    parser.add_argument("--rest", action="store_true", help="also measure REST latency (starts a server)")
    parser.add_argument("--rest-model", default=None, help="model URI or folder to serve [default: save one]")
    parser.add_argument("--rest-requests", type=int, default=200)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"cpus {os.cpu_count()}, torch threads {torch.get_num_threads()}, torch {torch.__version__}, "
          f"load average before {os.getloadavg()[0]:.2f}; batch {args.batch}, {args.avatars} avatars per path")

    models = {"dcgan-64 w64 (classic, untrained)": classic_dcgan()}
    if args.generator.is_file():
        trained = AvatarModel.load(args.generator, args.generator.with_name("directions.npz"))
        kwargs = ", ".join(f"{k} {v}" for k, v in trained.meta.get("model_kwargs", {}).items())
        models[f"{args.generator.relative_to(ROOT) if args.generator.is_relative_to(ROOT) else args.generator} "
               f"({trained.meta.get('arch')}, {trained.resolution} px, {kwargs})"] = trained
    runs = {(name, path): run for name, avatars in models.items()
            for path, run in paths(avatars, typical_tags(avatars), args.batch).items()}
    results = measure(runs, args.avatars, args.batch)
    for (name, path), rate in results.items():
        print(f"{name:<58} {path:<7} {rate['median']:8.0f} avatars/s (best round {rate['best']:.0f})")
    classic = next(iter(models))
    render, served = results[(classic, "render")]["median"], results[(classic, "served")]["median"]
    verdict = "met" if render >= GOAL else "NOT met"
    encode = results[(classic, "encode")]["median"]
    print(f"goal ≥ {GOAL:.0f} avatars/s for the 64 px DCGAN (render): {verdict} ({render:.0f}); "
          f"with PNG + base64 ({1000 / encode:.2f} ms per avatar) {served:.0f}/s, {served / render:.0%} of render")
    if len(models) > 1:
        other = list(models)[1]
        print(f"trained default vs classic, render: {results[(other, 'render')]['median'] / render:.2f}x")
    print(f"load average after {os.getloadavg()[0]:.2f}")

    if args.rest:
        with tempfile.TemporaryDirectory() as folder:
            uri = args.rest_model
            if uri is None:
                source = args.generator if args.generator.is_file() else None
                if source is None:
                    raise SystemExit("--rest needs --rest-model or an existing --generator file")
                uri = str(save_local_pyfunc(source, Path(folder)))
            latency = rest_latency(uri, args.rest_requests)
        print(f"REST {uri}: single-avatar p50 {latency['p50_ms']:.1f} ms, p95 {latency['p95_ms']:.1f} ms, "
              f"mean {latency['mean_ms']:.1f} ms over {latency['requests']} requests "
              f"(server start {latency['startup_s']:.0f} s)")


if __name__ == "__main__":
    main()
