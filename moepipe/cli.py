"""The `moepipe` command: one subcommand per pipeline stage, each a thin call of a stage function.

User mistakes end in one line on stderr and exit status 1; bugs keep their traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from moepipe.config import Params, load_params
from moepipe.errors import UserError, error_line

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
    typer.echo(error_line(message), err=True)
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

        return run_scrape(p.scrape, out, reports=reports).summary

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

        return run_curate(p.curate, p.labels, list(p.scrape.ratings), raw, out, reports=reports,
                          exclude=p.scrape.exclude).summary

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

        return run_preprocess(p.preprocess, p.labels, p.seed, curated, out, reports=reports).summary

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

        return run_train(p.train, p.seed, prepared, out, reports=reports).summary

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

        return directions_stage(model, classifier, out, samples, p.seed).summary

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
        from moepipe.generate.loading import open_avatars
        from moepipe.generate.pictures import write_pictures

        avatars = open_avatars(model, directions, params=params)
        summary = write_pictures(avatars, model, out=out, singles=singles, n=n, seed=seed, attributes=attributes,
                                 truncation=truncation, columns=columns, interpolate_to=interpolate, steps=steps,
                                 vary=vary)
    except UserError as error:
        _fail(str(error), error.exit_code)
    typer.echo(summary)


@app.command()
def studio(
    model: Annotated[str | None, typer.Option(
        help="models:/NAME@ALIAS (followed while the studio runs), models:/NAME/VERSION, runs:/..., or a "
             "generator.pt (default: models:/<register.model_name>@champion)")] = None,
    host: Annotated[str, typer.Option(help="address to listen on (loopback unless told otherwise)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (0: any free one)")] = 8765,
    poll_seconds: Annotated[float, typer.Option(
        help="how often to check the registry alias and swap in the version it points to")] = 30.0,
    directions: Annotated[Path | None, typer.Option(
        help="edit directions for an unconditional model (default: directions.npz beside a generator.pt)")] = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Serve the avatar studio: a web page (and JSON/PNG API, docs at /docs) on the champion model.

    Pick attributes, re-roll seeds, move truncation, see eight variations, one avatar in every value
    of a group, interpolations (PNG strip and GIF), champion vs challenger, and the lineage of the
    version that draws. MLflow URIs use MLFLOW_TRACKING_URI, else register.tracking_uri from PARAMS.
    """
    try:
        from moepipe.studio.server import run_studio

        summary = run_studio(model, host=host, port=port, params=params, poll_seconds=poll_seconds,
                             directions=directions, echo=typer.echo)
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
        from moepipe.evaluate.classifier_stage import classifier_stage

        return classifier_stage(p.evaluate, p.seed, prepared, out, reports=reports).summary

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

        return run_evaluate(p.evaluate, p.seed, prepared, model, classifier, out).summary

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
        from moepipe.registry.register import register_stage

        return register_stage(p, generator=model, metrics_json=metrics, evaluate_dir=evaluate_dir,
                              train_reports=train_reports, classifier=classifier, directions=directions,
                              out_report=report).summary

    _run(action, params)


@app.command("lineage")
def lineage_command(
    target: Annotated[str, typer.Argument(
        help="an avatar PNG drawn by a registered model, models:/NAME/VERSION, models:/NAME@ALIAS, or a "
             "generator file")],
    params: ParamsOption = Path("params.yaml"),
    repo: Annotated[Path, typer.Option(help="the DVC project whose cache (else its remote) holds the data")] = Path(
        "."),
    limit: Annotated[int, typer.Option(min=0, help="posts to list (0: all); the total is always given")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="print the chain as JSON")] = False,
) -> None:
    """Trace TARGET back: model version → MLflow run → data version (DVC md5s) → the source posts.

    The posts (source, post id, split, rating, artists, licence, URLs) are read from data/curated's
    manifest at the hash the run recorded, from the DVC cache or remote, not from the working tree.
    MLflow store: MLFLOW_TRACKING_URI, else register.tracking_uri from PARAMS.
    """
    try:
        from moepipe.config import tracking_uri
        from moepipe.registry.lineage import lineage_command as run_lineage
        from moepipe.remote import ObjectStore

        with ObjectStore(repo) as read:
            text = run_lineage(target, tracking_uri(params), read, limit=limit, as_json=as_json)
    except UserError as error:
        _fail(str(error), error.exit_code)
    typer.echo(text)


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
