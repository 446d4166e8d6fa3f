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
        _fail(str(error), error.exit_code)
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
        from moepipe.scrape.stage import scrape as run_scrape

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
        from moepipe.preprocess.stage import preprocess as run_preprocess

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


@app.command()
def directions(
    params: ParamsOption = Path("params.yaml"),
    model: Annotated[Path, typer.Option(help="generator.pt from `moepipe train`")] = Path("models/generator.pt"),
    classifier: Annotated[Path, typer.Option(help="attribute classifier that labels the samples")] = Path(
        "models/classifier.pt"),
    out: Annotated[Path, typer.Option(help="edit directions file (.npz)")] = Path("models/directions.npz"),
    samples: Annotated[int, typer.Option(help="generated avatars to fit the boundaries on")] = 2000,
) -> None:
    """Learn attribute-edit directions in z space for an unconditional generator (InterFaceGAN).

    A conditional generator takes attributes as labels; it gets a file with no directions.
    """
    def action(p: Params) -> str:
        from moepipe.evaluate.directions import directions_stage

        return str(directions_stage(model, classifier, out, samples, p.seed))

    _run(action, params)


@app.command()
def generate(
    model: Annotated[str, typer.Option(
        help="generator.pt, or an MLflow model URI: models:/moe-generator@champion, models:/NAME/VERSION, "
             "runs:/RUN_ID/PATH")] = "models/generator.pt",
    directions: Annotated[Path | None, typer.Option(
        help="edit directions for an unconditional model (default: directions.npz beside a generator.pt)")] = None,
    attributes: Annotated[str, typer.Option(
        help="comma-separated tags, e.g. blue_hair,smile; a conditional model draws the groups left out "
             "from its training data's label frequencies, fixed by each avatar's seed")] = "",
    n: Annotated[int, typer.Option("--n", "-n", help="avatars (with --vary: rows) to draw; avatar i uses "
                                                      "seed SEED + i")] = 16,
    seed: Annotated[int, typer.Option(help="seed of the first avatar")] = 0,
    truncation: Annotated[float, typer.Option(help="psi: 1 = full variety, toward 0 = more typical")] = 1.0,
    out: Annotated[Path | None, typer.Option(
        help="PNG to write the grid (or strip) to (default: avatars.png, unless --singles is given)")] = None,
    columns: Annotated[int, typer.Option(help="avatars per grid row")] = 8,
    singles: Annotated[Path | None, typer.Option(help="also write one PNG per avatar into this folder")] = None,
    interpolate: Annotated[int | None, typer.Option(
        help="draw an interpolation strip from SEED to this seed instead of a grid", metavar="SEED_B")] = None,
    steps: Annotated[int, typer.Option(help="avatars in the interpolation strip")] = 8,
    vary: Annotated[str | None, typer.Option(
        help="an attribute group, e.g. hairstyle: one grid row per seed, one column per value of the group, "
             "all other attributes fixed along a row (conditional models)", metavar="GROUP")] = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Draw avatars with chosen attributes from a generator file or a registered MLflow model.

    A grid of seeds SEED, SEED+1, ...; a strip (--interpolate); or a group swept per seed (--vary).
    Groups the attributes leave out are drawn from the model's label prior, fixed by the seed.
    Every PNG carries tEXt: model, seed, attributes (as asked), drawn_attributes, truncation.
    MLflow URIs use MLFLOW_TRACKING_URI, else register.tracking_uri from PARAMS.
    """
    try:
        from moepipe.generate.avatar import is_model_uri, open_avatars, write_pictures

        tracking_uri = os.environ.get("MLFLOW_TRACKING_URI")
        if is_model_uri(model) and not tracking_uri:
            tracking_uri = (load_params(params) if Path(params).is_file() else Params()).registry.tracking_uri
        avatars = open_avatars(model, directions, tracking_uri)
        summary = write_pictures(avatars, model, out=out, singles=singles, n=n, seed=seed, attributes=attributes,
                                 truncation=truncation, columns=columns, interpolate_to=interpolate, steps=steps,
                                 vary=vary)
    except UserError as error:
        _fail(str(error), error.exit_code)
    typer.echo(summary)


@app.command("classifier")
def classifier_command(
    params: ParamsOption = Path("params.yaml"),
    prepared: Annotated[Path, typer.Option(help="prepared folder from `moepipe preprocess`")] = Path("data/prepared"),
    out: Annotated[Path, typer.Option(help="classifier file to write; its JSON report goes beside it")] = Path(
        "models/classifier.pt"),
    reports: Annotated[Path | None, typer.Option(
        help="also copy the report here as classifier.json, for `dvc metrics`")] = None,
) -> None:
    """Train the attribute classifier whose features score generators in `moepipe evaluate`.

    Trains on the train split of PREPARED (evaluate.classifier params) and reports held-out
    accuracy per attribute group on the val split, next to always guessing the commonest value.
    """
    def action(p: Params) -> str:
        _require_dir(prepared, "prepared data")
        import shutil

        from moepipe.evaluate.stage import classifier_stage, report_path

        report = classifier_stage(p.evaluate, p.seed, prepared, out)
        if reports is not None:
            reports.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(report_path(out), reports / "classifier.json")
        scored = {k: v for k, v in report["accuracy"].items() if v is not None}
        baseline = [v for k, v in report["baseline"].items() if k in scored and v is not None]
        overall = "n/a (empty val split)" if report["overall"] is None else (
            f"{report['overall']:.2f} (commonest value {sum(baseline) / max(1, len(baseline)):.2f})")
        visible, hidden = report.get("accuracy_visible", {}), report.get("hidden_by", {})
        groups = ", ".join(f"{name} {value:.2f}" + (f" ({visible[name]:.2f} unless {'/'.join(hidden[name])})"
                                                     if name in visible and name in hidden else "")
                           for name, value in scored.items())
        return (f"classifier: held-out accuracy {overall}{'; ' + groups if groups else ''}; "
                f"{report['epochs']} epochs in {report['train_seconds']:.0f} s → {out}")

    _run(action, params)


@app.command("evaluate")
def evaluate_command(
    params: ParamsOption = Path("params.yaml"),
    prepared: Annotated[Path, typer.Option(help="prepared folder; its val split is the real set")] = Path(
        "data/prepared"),
    model: Annotated[Path, typer.Option(help="generator.pt from `moepipe train`")] = Path("models/generator.pt"),
    classifier: Annotated[Path, typer.Option(help="attribute classifier from `moepipe classifier`")] = Path(
        "models/classifier.pt"),
    out: Annotated[Path, typer.Option(help="folder for metrics.json and the pictures")] = Path("reports/evaluate"),
) -> None:
    """Score a generator against the held-out real images; write metrics.json and pictures to OUT.

    In the attribute classifier's feature space: Fréchet distance (fd), KID, precision/recall;
    for conditional models, control accuracy (does the avatar show the attributes asked for?).
    Standard FID too when evaluate.inception_weights names a local Inception weights file.
    Pictures: samples.png, sweep.png (one row per attribute group), interpolation.png.
    """
    def action(p: Params) -> str:
        _require_dir(prepared, "prepared data")
        from moepipe.evaluate.stage import evaluate as run_evaluate

        metrics = run_evaluate(p.evaluate, p.seed, prepared, model, classifier, out)
        parts = [f"fd {metrics['fd']:.4g}", f"kid {metrics['kid']:.3g}", f"precision {metrics['precision']:.2f}",
                 f"recall {metrics['recall']:.2f}"]
        if "control_accuracy" in metrics:
            parts.append(f"control {metrics['control_accuracy']:.2f}")
        if "fid" in metrics:
            parts.append(f"fid {metrics['fid']:.4g}")
        return f"evaluate: {', '.join(parts)} ({metrics['n_fake']} fakes vs {metrics['n_real']} val images) → {out}"

    _run(action, params)


@app.command("register")
def register_command(
    params: ParamsOption = Path("params.yaml"),
    model: Annotated[Path, typer.Option(help="generator.pt from `moepipe train`")] = Path("models/generator.pt"),
    metrics: Annotated[Path, typer.Option(help="metrics.json from `moepipe evaluate`")] = Path(
        "reports/evaluate/metrics.json"),
    evaluate_dir: Annotated[Path, typer.Option(help="evaluation pictures (*.png) to log")] = Path("reports/evaluate"),
    train_reports: Annotated[Path, typer.Option(help="training curves (metrics.csv) and samples/")] = Path(
        "reports/train"),
    classifier: Annotated[Path, typer.Option(help="attribute classifier to ship with the model, if it exists")] = Path(
        "models/classifier.pt"),
    directions: Annotated[Path, typer.Option(help="attribute edit directions to ship, if they exist")] = Path(
        "models/directions.npz"),
    report: Annotated[Path, typer.Option(help="the decision, as JSON")] = Path("reports/register.json"),
) -> None:
    """Log the generator to MLflow as a version of register.model_name and decide its alias.

    The version becomes `champion` if it passes register.gates and beats the current champion's
    register.primary_metric by more than register.min_improvement; else `challenger`. Registering
    the same generator.pt again only re-checks that decision. Tracking store: $MLFLOW_TRACKING_URI,
    else register.tracking_uri (default: sqlite:///mlflow.db with artifacts in mlartifacts/).
    """
    def action(p: Params) -> str:
        # Fail within seconds, not minutes of retries, when a tracking server is down; and keep
        # MLflow's INFO lines and progress bars for --verbose.
        verbose = logging.getLogger().level <= logging.DEBUG
        for name, value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1"), ("MLFLOW_HTTP_REQUEST_TIMEOUT", "20"),
                            ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
                            ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", str(verbose).lower()),
                            ("MLFLOW_LOGGING_LEVEL", "INFO" if verbose else "WARNING")):
            os.environ.setdefault(name, value)
        import mlflow  # noqa: F401 - configures its loggers on first import

        from moepipe.registry.register import register, summary_line

        logging.getLogger("mlflow").setLevel(logging.INFO if verbose else logging.WARNING)
        result = register(
            p.registry, os.environ.get("MLFLOW_TRACKING_URI") or p.registry.tracking_uri, generator=model,
            metrics_json=metrics, evaluate_dir=evaluate_dir, train_reports=train_reports,
            classifier=classifier if classifier.is_file() else None,
            directions=directions if directions.is_file() else None, params=p, out_report=report)
        return summary_line(result)

    _run(action, params)


from moepipe.stack.cli import stack_app  # noqa: E402 - sub-app, kept next to where it is added

app.add_typer(stack_app, name="stack")

remote_app = typer.Typer(name="remote", no_args_is_help=True, help=(
    "`dvc push` / `dvc pull` that first check the remote's S3 endpoint answers; a failure ends in one "
    "line naming the endpoint and exit status 75 (try again later)."))
app.add_typer(remote_app, name="remote")
TargetsArgument = Annotated[list[str] | None, typer.Argument(help="DVC targets (default: everything)")]
RemoteOption = Annotated[str | None, typer.Option("--remote", "-r", help="DVC remote (default: the default one)")]
JobsOption = Annotated[int | None, typer.Option("--jobs", "-j", min=1, help="parallel transfers")]
RepoOption = Annotated[Path, typer.Option(help="the DVC project")]


def _transfer(action: str, targets: list[str] | None, remote: str | None, jobs: int | None, repo: Path) -> None:
    from moepipe.remote import transfer

    try:
        typer.echo(transfer(repo, action, remote, targets or (), jobs))
    except UserError as error:
        _fail(str(error), error.exit_code)


@remote_app.command("push")
def remote_push(targets: TargetsArgument = None, remote: RemoteOption = None, jobs: JobsOption = None,
                repo: RepoOption = Path(".")) -> None:
    """Push cached outputs to the DVC remote (a retry sends only what has not arrived)."""
    _transfer("push", targets, remote, jobs, repo)


@remote_app.command("pull")
def remote_pull(targets: TargetsArgument = None, remote: RemoteOption = None, jobs: JobsOption = None,
                repo: RepoOption = Path(".")) -> None:
    """Pull outputs from the DVC remote into the cache and the workspace."""
    _transfer("pull", targets, remote, jobs, repo)


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
