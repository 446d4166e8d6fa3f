"""Avatar studio latency: p50/p95 of single-avatar and grid-of-8 requests over HTTP on loopback,
beside the pyfunc REST path (`mlflow models serve`) for the same generator.

    python bench/studio_latency.py [--generator models/generator.pt] [--requests 200] [--no-rest]

The studio runs as `moepipe studio --model GENERATOR` in a subprocess on a free loopback port,
as a user would start it. Requests are sequential GETs (urllib, one connection each, as
bench/generate_throughput.py's REST client does):

  avatar        /api/avatar.png for a fresh random seed each time (nothing kept from before)
  grid of 8     /api/grid.png?n=8 for a fresh random seed
  page flow     what the page asks on a change: avatar of seed s, then the grid of s .. s+7
                (the avatar's pass drew the grid's first rows; see moepipe/studio/drawing.py)
  in-process    the studio's own drawing call for one fresh avatar, no HTTP (render + PNG), in a
                worker thread as the server makes it

Then the pyfunc REST path: `rest_latency` of bench/generate_throughput.py on the generator saved
as the registry step logs it, one avatar per request. Goals (measured, not tested): avatar
p50 <= 30 ms, p95 <= 60 ms; grid of 8 p50 <= 100 ms. The machine may be shared: the load average
before and after says how busy the other cores were.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from generate_throughput import _free_port, rest_latency, save_local_pyfunc, wait_until_up  # noqa: E402 - after sys.path

from moepipe.generate.avatar import AvatarModel  # noqa: E402 - imported after sys.path points at the checkout
from moepipe.studio.drawing import Drawer  # noqa: E402 - imported after sys.path points at the checkout

IN_PROCESS = "in-process avatar (render + PNG, no HTTP)"
GOALS = {"avatar": (30.0, 60.0), "grid of 8": (100.0, None)}  # p50, p95 ms


def percentiles(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {"p50": ordered[len(ordered) // 2], "p95": ordered[int(0.95 * (len(ordered) - 1))],
            "mean": statistics.fmean(ordered), "n": len(ordered)}


def fetch(url: str) -> float:
    """Milliseconds from sending the GET to having the whole PNG body."""
    sent = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as reply:
        body = reply.read()
    elapsed = (time.perf_counter() - sent) * 1000
    assert body.startswith(b"\x89PNG"), f"{url}: not a PNG"
    return elapsed


def start_studio(generator: Path, startup_timeout: float = 180.0) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    command = [sys.executable, "-m", "moepipe", "studio", "--model", str(generator), "--port", str(port)]
    server = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              start_new_session=True, env={**os.environ, "MOEPIPE_QUIET": "1"})
    base = f"http://127.0.0.1:{port}"
    wait_until_up(server, f"{base}/api/model", "moepipe studio", startup_timeout, pause=0.3)
    return server, base


def stop(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def measure(runs: dict[str, Callable[[int], float]], seeds: dict[str, list[int]]) -> dict[str, dict[str, float]]:
    """Percentiles of each run over its seeds, the runs taking turns request by request.

    Taking turns spreads the noise of a shared machine evenly over the runs, so their ratios
    hold even when the absolute numbers wander.
    """
    for name, run in runs.items():  # warm-up (seeds not used again below)
        for seed in seeds[name][:5]:
            run(seed)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(5, min(len(s) for s in seeds.values())):
        for name, run in runs.items():
            times[name].append(run(seeds[name][i]))
    return {name: percentiles(found) for name, found in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--generator", type=Path, default=ROOT / "models" / "generator.pt")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--attributes", default="pink_hair,twintails")
    parser.add_argument("--no-rest", action="store_true", help="skip the mlflow models serve comparison")
    args = parser.parse_args()
    if not args.generator.is_file():
        raise SystemExit(f"{args.generator}: no such generator file (run `dvc repro` or pass --generator)")
    avatars = AvatarModel.load(args.generator)
    tags = [t for t in args.attributes.split(",") if t in avatars.attributes]
    query = f"attributes={','.join(tags)}&truncation=0.8"
    rng = random.Random(0)

    def fresh() -> list[int]:  # random seeds far apart: no request finds rows drawn for another
        return [rng.randrange(0, 2**40) * 64 for _ in range(args.requests + 5)]

    print(f"cpus {os.cpu_count()}, load average before {os.getloadavg()[0]:.2f}; {args.generator} "
          f"({avatars.meta.get('arch')}, {avatars.resolution} px), attributes {','.join(tags) or 'none'}, "
          f"{args.requests} requests per row")
    drawer = Drawer(avatars, str(args.generator))
    # The server draws in a worker thread of its pool, so this does too: torch calls made on the
    # main thread measured several times slower than the same calls in a worker on a busy 2-core machine.
    worker = ThreadPoolExecutor(1)

    def in_process(seed: int) -> float:
        began = time.perf_counter()
        worker.submit(drawer.avatar, seed, tags, 0.8).result()
        return (time.perf_counter() - began) * 1000

    server, base = start_studio(args.generator)
    try:
        runs = {
            "avatar": lambda s: fetch(f"{base}/api/avatar.png?seed={s}&{query}"),
            "grid of 8": lambda s: fetch(f"{base}/api/grid.png?seed={s}&n=8&{query}"),
            "page flow: avatar + grid of 8": lambda s: (fetch(f"{base}/api/avatar.png?seed={s}&{query}")
                                                        + fetch(f"{base}/api/grid.png?seed={s}&n=8&{query}")),
            IN_PROCESS: in_process,
        }
        results = measure(runs, {name: fresh() for name in runs})
    finally:
        stop(server)
    for name, row in results.items():
        goal = GOALS.get(name)
        verdict = ""
        if goal:
            met = row["p50"] <= goal[0] and (goal[1] is None or row["p95"] <= goal[1])
            verdict = (f"  goal p50 <= {goal[0]:g} ms" + (f", p95 <= {goal[1]:g} ms" if goal[1] else "")
                       + (": met" if met else ": NOT met"))
        print(f"studio {name:<44} p50 {row['p50']:6.1f} ms  p95 {row['p95']:6.1f} ms  "
              f"mean {row['mean']:6.1f} ms{verdict}")
    http = results["avatar"]["p50"] - results[IN_PROCESS]["p50"]
    print(f"HTTP and the server's share of a single avatar's p50: {http:.1f} ms")
    if not args.no_rest:
        with tempfile.TemporaryDirectory() as folder:
            uri = str(save_local_pyfunc(args.generator, Path(folder)))
            rest = rest_latency(uri, args.requests, ",".join(tags))
        print(f"pyfunc REST (mlflow models serve) single avatar          p50 {rest['p50_ms']:6.1f} ms  "
              f"p95 {rest['p95_ms']:6.1f} ms  mean {rest['mean_ms']:6.1f} ms (server start {rest['startup_s']:.0f} s)")
        print(f"studio / REST, single avatar: p50 {results['avatar']['p50'] / rest['p50_ms']:.2f}x, "
              f"p95 {results['avatar']['p95'] / rest['p95_ms']:.2f}x; grid of 8 vs 8 REST requests' p50: "
              f"{results['grid of 8']['p50'] / (8 * rest['p50_ms']):.2f}x")
    print(f"load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
