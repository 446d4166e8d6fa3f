"""The `moepipe` command: one subcommand per pipeline stage, each a thin call of a stage function.

User mistakes end in one line on stderr and exit status 1; bugs keep their traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Callable

import typer

from moepipe.config import Params, load_params
from moepipe.errors import UserError

app = typer.Typer(
    name="moepipe",
    help="Build generators of cute chibi avatars: scrape → curate → preprocess (→ train, evaluate, "
    "register). Each stage reads params.yaml and writes only files; `dvc repro` runs them all.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ParamsOption = Annotated[
    Path, typer.Option("--params", "-p", help="params.yaml to read (validated before any work)")
]


def _fail(message: str, status: int = 1) -> None:
    typer.echo(f"moepipe: error: {message}", err=True)
    raise typer.Exit(status)


def _run(action: Callable[[Params], str], params_path: Path) -> None:
    """Load params, run a stage, print its one-line summary; turn user errors into one line."""
    try:
        params = load_params(params_path)
        summary = action(params)
    except UserError as error:
        _fail(str(error))
    except KeyboardInterrupt:
        _fail("interrupted; outputs written so far are complete and a re-run resumes", 130)
    typer.echo(summary)


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


ReportsOption = Annotated[
    Path | None,
    typer.Option(help="also copy the stage's report (and pictures) here, for `dvc metrics` / `dvc plots`"),
]


def _publish(out: Path, reports: Path | None, stage: str, report_name: str = "report.json") -> None:
    """Copy a stage's report and PNGs out of its (DVC-cached) output folder into `reports`."""
    if reports is None:
        return
    import shutil

    reports.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out / report_name, reports / f"{stage}.json")
    for picture in sorted(out.glob("*.png")):
        shutil.copyfile(picture, reports / f"{stage}_{picture.name}")


def _require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise UserError(f"{what} folder not found: {path}")


@app.command()
def scrape(
    params: ParamsOption = Path("params.yaml"),
    out: Annotated[Path, typer.Option(help="raw data folder (images + manifest.jsonl)")] = Path("data/raw"),
    reports: ReportsOption = None,
) -> None:
    """Collect candidate images from scrape.sources into OUT; re-running resumes."""
    def action(p: Params) -> str:
        from moepipe.scrape import scrape as run_scrape

        report = run_scrape(p.scrape, out)
        _publish(out, reports, "scrape")
        return (f"scrape: kept {report.kept}, already had {report.already_done}, rejected "
                f"{sum(report.rejected.values())}, failed {sum(report.failed.values())} → {out}")

    _run(action, params)


@app.command()
def curate(
    params: ParamsOption = Path("params.yaml"),
    raw: Annotated[Path, typer.Option(help="raw data folder from `moepipe scrape`")] = Path("data/raw"),
    out: Annotated[Path, typer.Option(help="curated folder (portrait crops + labels)")] = Path("data/curated"),
    reports: ReportsOption = None,
) -> None:
    """Filter, deduplicate, crop and label the raw images into OUT."""
    def action(p: Params) -> str:
        _require_dir(raw, "raw data")
        from moepipe.curate import curate as run_curate

        report = run_curate(p.curate, p.labels, list(p.scrape.ratings), raw, out)
        _publish(out, reports, "curate")
        data = report.to_json() if hasattr(report, "to_json") else dict(report)
        return f"curate: kept {data['kept']} of {data['input']}, rejected {data['rejected_total']} → {out}"

    _run(action, params)


@app.command()
def preprocess(
    params: ParamsOption = Path("params.yaml"),
    curated: Annotated[Path, typer.Option(help="curated folder from `moepipe curate`")] = Path("data/curated"),
    out: Annotated[Path, typer.Option(help="prepared folder (packed arrays)")] = Path("data/prepared"),
    reports: ReportsOption = None,
) -> None:
    """Resize, split and pack the curated images into uint8 arrays in OUT."""
    def action(p: Params) -> str:
        _require_dir(curated, "curated data")
        from moepipe.preprocess import preprocess as run_preprocess

        stats = run_preprocess(p.preprocess, p.labels, p.seed, curated, out)
        _publish(out, reports, "preprocess", "stats.json")
        counts = stats["images"]
        return f"preprocess: {counts['train']} train, {counts['val']} val at {p.preprocess.resolution} px → {out}"

    _run(action, params)


@app.command()
def train(
    params: ParamsOption = Path("params.yaml"),
    prepared: Annotated[Path, typer.Option(help="prepared folder from `moepipe preprocess`")] = Path("data/prepared"),
    out: Annotated[Path, typer.Option(help="model folder: generator.pt and checkpoints/")] = Path("models"),
    reports: Annotated[Path | None, typer.Option(help="training curves (metrics.csv) and sample grids")] = Path(
        "reports/train"),
) -> None:
    """Train the GAN on PREPARED; resumes from the newest matching checkpoint in OUT/checkpoints.

    Runs on CUDA when available (bf16 autocast, channels_last), else on CPU. For several GPUs or
    hosts, launch through torchrun: `torchrun --nproc_per_node 4 -m moepipe train ...`.
    """

    def action(p: Params) -> str:
        _require_dir(prepared, "prepared data")
        from moepipe.train.loop import train as run_train

        result = run_train(p.train, p.seed, prepared, out, reports=reports)
        last = result.last
        losses = f", D {last['loss_d']:.3f} G {last['loss_g']:.3f}" if last else ""
        return (f"train: {result.steps} steps ({result.kimg:.1f} kimg, resumed at {result.resumed_from}) "
                f"in {result.seconds:.0f} s, {result.images_per_s:.0f} img/s{losses} → {out / 'generator.pt'}")

    _run(action, params)


@app.command("check-params")
def check_params(params: ParamsOption = Path("params.yaml")) -> None:
    """Validate params.yaml and exit; prints nothing but errors."""
    _run(lambda p: f"{params}: ok", params)


def main() -> None:
    if os.environ.get("MOEPIPE_TRACEBACK") == "1":
        app()
        return
    try:
        app()
    except BrokenPipeError:
        sys.exit(1)


if __name__ == "__main__":
    main()
