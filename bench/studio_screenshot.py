"""A screenshot of the avatar studio (docs/studio.png), taken with headless Debian Chromium.

    python bench/studio_screenshot.py [--model URI|PATH] [--out docs/studio.png] [--seed 7]
                                      [--attributes pink_hair,twintails,smile]

The model defaults to the registry's champion (models:/moe-generator@champion at the tracking
URI of params.yaml / $MLFLOW_TRACKING_URI) when it can be loaded, so the lineage panel has
something to say. Otherwise models/generator.pt, the default pipeline's trained model, is
registered with its own evaluation (reports/evaluate/metrics.json, dvc.lock, reports/) into a
throwaway store by the real register stage and shown as that store's champion; without those
reports the file itself is shown. The studio runs in this process on a free loopback port; the
browser is /usr/bin/chromium driven by Playwright (the same path as tests/e2e/test_studio_browser.py).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from moepipe.config import tracking_uri  # noqa: E402 - imported after sys.path points at the checkout
from moepipe.errors import UserError  # noqa: E402 - imported after sys.path points at the checkout
from moepipe.studio.server import default_model, serving  # noqa: E402 - imported after sys.path points at the checkout
from moepipe.studio.state import ModelHolder  # noqa: E402 - imported after sys.path points at the checkout

CHROMIUM = Path("/usr/bin/chromium")
IMAGES_LOADED = """() => document.body.dataset.ready === "true" && [...document.images]
    .filter((img) => !img.closest("[hidden]"))
    .every((img) => img.complete && img.naturalWidth > 0 && !img.classList.contains("loading"))"""


def register_default_model(params: Path, store: Path) -> str:
    """Register models/generator.pt and its evaluation into a sqlite store in `store`; its tracking URI."""
    from moepipe.config import load_params
    from moepipe.registry.register import register

    uri = f"sqlite:///{store / 'mlflow.db'}"
    loaded = load_params(params)
    cfg = loaded.registry.model_copy(update={"artifact_location": str(store / "mlartifacts")})
    register(cfg, uri, generator=ROOT / "models/generator.pt", metrics_json=ROOT / "reports/evaluate/metrics.json",
             evaluate_dir=ROOT / "reports/evaluate", train_reports=ROOT / "reports/train",
             classifier=ROOT / "models/classifier.pt", directions=ROOT / "models/directions.npz",
             dvc_lock=ROOT / "dvc.lock", data_reports=ROOT / "reports",
             curated_manifest=ROOT / "data/curated/manifest.jsonl", params=loaded, out_report=store / "register.json")
    return uri


def open_model(model: str | None, params: Path, scratch: Path) -> ModelHolder:
    """`model`; else the champion; else models/generator.pt registered into a scratch store; else the file."""
    uri = tracking_uri(params)
    if model is not None:
        return ModelHolder(model, tracking_uri=uri, poll_seconds=3600).open()
    try:
        return ModelHolder(default_model(params), tracking_uri=uri, poll_seconds=3600).open()
    except UserError as error:
        print(f"the registry's champion cannot be shown ({error})")
    if (ROOT / "models/generator.pt").is_file() and (ROOT / "reports/evaluate/metrics.json").is_file():
        print("registering models/generator.pt with its evaluation into a throwaway store")
        store = register_default_model(params, scratch)
        return ModelHolder(default_model(params), tracking_uri=store, poll_seconds=3600).open()
    print("using the file models/generator.pt")
    return ModelHolder(str(ROOT / "models/generator.pt"), poll_seconds=3600).open()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "studio.png")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--seed-b", type=int, default=42)
    parser.add_argument("--attributes", default="pink_hair,twintails,smile")
    parser.add_argument("--truncation", type=float, default=0.8)
    parser.add_argument("--width", type=int, default=1440)
    args = parser.parse_args()
    if not CHROMIUM.is_file():
        raise SystemExit(f"{CHROMIUM} is missing: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    scratch = Path(tempfile.mkdtemp(prefix="studio-screenshot-"))
    holder = open_model(args.model, args.params, scratch)
    state = urlencode({"seed": args.seed, "t": args.truncation, "a": args.attributes, "vary": "hairstyle",
                       "b": args.seed_b, "steps": 8})
    with serving(holder, poll=False) as base, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        page = browser.new_page(viewport={"width": args.width, "height": 900}, device_scale_factor=1)
        page.goto(f"{base}/#{state}")
        page.wait_for_function(IMAGES_LOADED, timeout=60_000)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.out), full_page=True)
        browser.close()
    shutil.rmtree(scratch, ignore_errors=True)
    print(f"wrote {args.out} ({holder.model}, version {holder.version})")


if __name__ == "__main__":
    main()
