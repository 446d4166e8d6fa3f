"""Opt-outs (scrape.exclude): the file format, what each entry matches, and the scrape and curate
stages dropping (and counting) what the list names, also from a folder an earlier run filled."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from moepipe.config import CurateConfig, DirtRates, LabelsConfig, ScrapeConfig, SyntheticSource, UrlsSource
from moepipe.curate import curate
from moepipe.errors import UserError
from moepipe.exclude import Entry, load_exclusions, parse_exclusions
from moepipe.manifest import read_jsonl
from moepipe.scrape.sources.danbooru import booru_post
from moepipe.scrape.sources.urls import iter_posts as url_posts
from moepipe.scrape.stage import scrape

ROOT = Path(__file__).resolve().parents[2]
MD5 = "0123456789abcdef0123456789abcdef"
SHA = "ab" * 32


# -- the file format -------------------------------------------------------------------------
def test_every_kind_parses_and_comments_and_blank_lines_are_skipped() -> None:
    text = ("# asked by the artist, 2024-05-01\n"
            "\n"
            "post:danbooru:123\n"
            "  url:https://cdn.example.com/alice/*   # inline note\n"
            "ARTIST:Alice Example\n"
            f"md5:{MD5.upper()}\n"
            f"sha256:{SHA}\n"
            "post:folder:art/a:b.png\n")
    found = parse_exclusions(text, "exclude.txt")
    assert len(found) == 6
    assert found.posts[("danbooru", "123")] == Entry("post", "danbooru:123", 3, "exclude.txt")
    assert ("folder", "art/a:b.png") in found.posts  # only the first colon after the source splits
    assert [str(entry) for entry in found.urls] == ["url:https://cdn.example.com/alice/*"]
    assert found.urls[0].where == "exclude.txt:4"
    assert found.hashes[("md5", MD5)].line == 6  # hex is compared in lower case


@pytest.mark.parametrize(("line", "message"), [
    ("pots:danbooru:1", "exclude.txt:2: 'pots:danbooru:1' is no opt-out entry; start it with one of post:, url:"),
    ("danbooru 123", "exclude.txt:2: 'danbooru 123' is no opt-out entry"),
    ("url:", "exclude.txt:2: url: needs a value"),
    ("post:danbooru", "exclude.txt:2: post: needs <source>:<post_id> (got 'danbooru')"),
    ("post::12", "exclude.txt:2: post: needs <source>:<post_id>"),
    ("md5:abc", "exclude.txt:2: md5: needs 32 hex digits (got 'abc')"),
    (f"sha256:{'g' * 64}", "exclude.txt:2: sha256: needs 64 hex digits"),
    (f"sha256:{MD5}", "exclude.txt:2: sha256: needs 64 hex digits"),
])
def test_a_malformed_line_is_one_line_naming_file_and_line(line: str, message: str) -> None:
    with pytest.raises(UserError) as caught:
        parse_exclusions(f"post:danbooru:1\n{line}\n", "exclude.txt")
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_no_list_matches_nothing_and_a_named_list_must_exist(tmp_path: Path) -> None:
    empty = load_exclusions(None)
    assert not empty and empty.match({"source": "danbooru", "post_id": "1", "md5": MD5}) is None
    with pytest.raises(UserError, match=r"^scrape.exclude: .*nope.txt: no such file$"):
        load_exclusions(tmp_path / "nope.txt")


def test_the_committed_list_is_the_one_params_yaml_names_and_is_valid() -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    assert params["scrape"]["exclude"] == "exclude.txt"
    assert ScrapeConfig(exclude="exclude.txt").exclude == Path("exclude.txt")
    assert len(load_exclusions(ROOT / "exclude.txt")) == 0  # comments only: it excludes nothing yet


# -- matching --------------------------------------------------------------------------------
LIST = parse_exclusions("\n".join([
    "post:danbooru:123", "url:https://cdn.example.com/alice/*", "artist:Alice Example",
    f"md5:{MD5}", f"sha256:{SHA}"]), "exclude.txt")


def record(**fields: object) -> dict[str, object]:
    return {"source": "danbooru", "post_id": "7", "url": "https://cdn.example.com/bob/1.png", "tags": ["smile"],
            "md5": "f" * 32, "sha256": "f" * 64, **fields}


@pytest.mark.parametrize(("fields", "entry"), [
    ({"post_id": 123}, "post:danbooru:123"),  # ids compare as text, whatever the manifest stored
    ({"url": "https://cdn.example.com/alice/1.png"}, "url:https://cdn.example.com/alice/*"),
    ({"final_url": "https://cdn.example.com/alice/x.jpg"}, "url:https://cdn.example.com/alice/*"),
    ({"source_url": "https://cdn.example.com/alice/orig"}, "url:https://cdn.example.com/alice/*"),
    ({"artists": ["someone", "alice_example"]}, "artist:Alice Example"),
    ({"artist": "ALICE  example"}, "artist:Alice Example"),
    ({"tags": ["smile", "artist:alice_example"]}, "artist:Alice Example"),
    ({"md5": MD5.upper()}, f"md5:{MD5}"),
    ({"sha256": SHA}, f"sha256:{SHA}"),
    ({"md5": None, "raw_md5": MD5}, f"md5:{MD5}"),  # a curated record keeps the raw file's hashes
    ({"raw_sha256": SHA}, f"sha256:{SHA}"),
])
def test_each_kind_matches_its_fields(fields: dict, entry: str) -> None:
    assert str(LIST.match(record(**fields))) == entry


@pytest.mark.parametrize("fields", [
    {},
    {"source": "gelbooru", "post_id": "123"},  # the same id at another source is another post
    {"url": "https://cdn.example.com/ALICE/1.png"},  # URL patterns are case-sensitive
    {"url": None, "tags": ["alice_example"]},  # a plain tag is no artist: Danbooru mixes them in
    {"artist": "alice"},
    {"file": f"images/{SHA}.png"},  # hashes are read from md5/sha256 fields only
])
def test_what_no_entry_names_is_kept(fields: dict) -> None:
    assert LIST.match(record(**fields)) is None


def test_booru_posts_carry_their_artists_and_url_lists_their_credit_columns(tmp_path: Path) -> None:
    post = booru_post("danbooru", "https://danbooru.example", {
        "id": 5, "file_url": "/data/x.png", "md5": MD5, "tag_string": "alice_example smile",
        "tag_string_artist": "alice_example", "rating": "g", "source": "https://art.example/alice/5"}, "tag_string")
    assert post is not None and post.extra["artists"] == ["alice_example"]
    assert str(LIST.match({"source": post.source, "post_id": post.post_id, **post.extra})) == "artist:Alice Example"
    assert booru_post("g", "https://g.example", {"id": 6, "file_url": "x.png"}, "tags").extra["artists"] is None
    listing = tmp_path / "urls.csv"
    listing.write_text("url,artist,license\nhttps://a.example/1.png,Alice Example,CC-BY-4.0\nhttps://a.example/2.png,,\n")
    posts = list(url_posts(UrlsSource(kind="urls", path=listing)))
    assert [p.extra for p in posts] == [{"artist": "Alice Example", "license": "CC-BY-4.0"}, {}]


# -- the stages ------------------------------------------------------------------------------
CLEAN = DirtRates(duplicate=0, near_duplicate=0, tiny=0, monochrome=0, non_avatar=0, truncated=0, corrupt=0)


def gallery(limit: int = 8, **settings: object) -> ScrapeConfig:
    return ScrapeConfig(sources=[SyntheticSource(kind="synthetic", limit=limit, seed=5, dirt=CLEAN)],
                        **settings)


def test_a_scrape_rerun_drops_stored_posts_an_entry_names_and_counts_them(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    first = scrape(gallery(), raw)
    assert first.kept == 8 and first.excluded == 0 and "excluded" not in first.summary
    stored = {r["post_id"]: r for r in read_jsonl(raw / "manifest.jsonl")}
    opt_out = tmp_path / "exclude.txt"
    opt_out.write_text(f"# opt-outs\npost:synthetic:2\nsha256:{stored['5']['sha256']}  # the same picture anywhere\n")

    again = scrape(gallery(exclude=opt_out), raw)
    kept = {r["post_id"] for r in read_jsonl(raw / "manifest.jsonl")}
    assert kept == set(stored) - {"2", "5"}
    for post_id in ("2", "5"):
        assert not (raw / stored[post_id]["file"]).exists()
    assert len(list((raw / "images").iterdir())) == 6
    report = json.loads((raw / "report.json").read_text())
    assert (report["excluded"], report["excluded_removed"], report["kept"]) == (2, 2, 0)
    assert report["by_source"]["synthetic"]["excluded"] == 2 and again.summary.endswith(f"excluded 2 → {raw}")

    third = scrape(gallery(exclude=opt_out), raw)  # listed again: excluded again, nothing left to remove
    assert (third.excluded, third.excluded_removed, third.kept, third.already_done) == (2, 0, 0, 6)

    opt_out.write_text("# withdrawn\n")  # an entry removed: the posts come back
    back = scrape(gallery(exclude=opt_out), raw)
    assert (back.kept, back.excluded) == (2, 0) and len(read_jsonl(raw / "manifest.jsonl")) == 8


def test_a_post_named_by_its_bytes_is_never_stored(tmp_path: Path) -> None:
    scrape(gallery(limit=3), tmp_path / "probe")
    sha = {r["post_id"]: r["sha256"] for r in read_jsonl(tmp_path / "probe/manifest.jsonl")}["1"]
    opt_out = tmp_path / "exclude.txt"
    opt_out.write_text(f"sha256:{sha}\n")
    report = scrape(gallery(limit=3, exclude=opt_out), tmp_path / "raw")
    assert (report.kept, report.excluded, report.excluded_removed) == (2, 1, 0)
    assert {r["post_id"] for r in read_jsonl(tmp_path / "raw/manifest.jsonl")} == {"0", "2"}
    assert not list((tmp_path / "raw/images").glob(f"{sha}.*"))


def test_curate_rejects_what_the_list_names_in_an_older_raw_folder(tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "curated"
    scrape(gallery(), raw)  # before the entries existed
    records = {r["post_id"]: r for r in read_jsonl(raw / "manifest.jsonl")}
    opt_out = tmp_path / "exclude.txt"
    opt_out.write_text(f"post:synthetic:1\nmd5:{hashlib.md5((raw / records['4']['file']).read_bytes()).hexdigest()}\n")
    cfg = CurateConfig(workers=1, output_size=64, contact_sheet_max=16)
    plain = curate(cfg, LabelsConfig(), ["general"], raw, tmp_path / "plain")
    report = curate(cfg, LabelsConfig(), ["general"], raw, out, exclude=opt_out)
    assert plain.rejected["excluded"] == 0 and {"1", "4"} <= {r["post_id"] for r in read_jsonl(tmp_path / "plain/manifest.jsonl")}
    assert report.kept == plain.kept - 2
    assert report.rejected["excluded"] == 2
    assert json.loads((out / "report.json").read_text())["rejected"]["excluded"] == 2
    kept = {r["post_id"] for r in read_jsonl(out / "manifest.jsonl")}
    assert not kept & {"1", "4"}
    why = {r["post_id"]: r for r in read_jsonl(out / "rejects.jsonl") if r["reason"] == "excluded"}
    assert why["1"]["detail"] == f"post:synthetic:1 ({opt_out}:1)" and why["4"]["detail"].startswith("md5:")
    assert len(list((out / "images").iterdir())) == report.kept  # never examined, so no crop of them
