"""Sources without a network: scripted API pages, URL lists and folders in tmp_path."""

from __future__ import annotations

import hashlib
import io
import json
import logging
from typing import Any

import pytest
from PIL import Image

from moepipe.config import DanbooruSource, FolderSource, GelbooruSource, UrlsSource
from moepipe.errors import UserError
from moepipe.scrape.sources import danbooru, folder, gelbooru, iter_source, urls


class ScriptedFetcher:
    """Answers get_json from a list of pages and records every call's URL and params."""

    def __init__(self, pages: list[Any]) -> None:
        self.pages = list(pages)
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def get_json(self, url: str, params: dict[str, Any] | None = None) -> Any:
        self.calls.append((url, dict(params or {})))
        return self.pages.pop(0) if self.pages else []

    def get_image(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("sources must not download images")


def dan_post(post_id: int, rating: str = "g", file_url: str | None = "auto", **extra: Any) -> dict[str, Any]:
    record = {"id": post_id, "md5": f"{post_id:032x}", "rating": rating, "tag_string": "chibi 1girl smile",
              "score": 3, "created_at": "2024-05-01T00:00:00.000+09:00", "source": "https://pixiv.example/1"}
    if file_url == "auto":
        file_url = f"https://cdn.donmai.us/original/{post_id}.png"
    if file_url is not None:
        record["file_url"] = file_url
    record.update(extra)
    return record


def dan_cfg(**kwargs: Any) -> DanbooruSource:
    return DanbooruSource(kind="danbooru", url="https://booru.example", **kwargs)


def png_bytes(colour: tuple[int, int, int] = (200, 100, 50)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return buffer.getvalue()


# -- danbooru ---------------------------------------------------------------------------------

def test_danbooru_walks_pages_with_the_id_cursor() -> None:
    pages = [[dan_post(i) for i in range(20, 13, -1)], [dan_post(i) for i in range(13, 9, -1)], []]
    fetcher = ScriptedFetcher(pages)
    posts = list(danbooru.iter_posts(dan_cfg(tags="chibi solo", page_size=7, limit=100), fetcher))
    assert [p.post_id for p in posts] == [str(i) for i in range(20, 9, -1)]
    assert [url for url, _ in fetcher.calls] == ["https://booru.example/posts.json"] * 3
    assert [params for _, params in fetcher.calls] == [
        {"tags": "chibi solo", "limit": 7},
        {"tags": "chibi solo", "limit": 7, "page": "b14"},
        {"tags": "chibi solo", "limit": 7, "page": "b10"},
    ]


def test_danbooru_asks_only_for_what_the_limit_leaves() -> None:
    fetcher = ScriptedFetcher([[dan_post(i) for i in (9, 8, 7)], [dan_post(i) for i in (6, 5)], [dan_post(4)]])
    posts = list(danbooru.iter_posts(dan_cfg(page_size=3, limit=5), fetcher))
    assert [p.post_id for p in posts] == ["9", "8", "7", "6", "5"]
    assert [params for _, params in fetcher.calls] == [{"limit": 3}, {"limit": 2, "page": "b7"}]


def test_danbooru_skips_posts_without_a_file_and_counts_them(caplog: pytest.LogCaptureFixture) -> None:
    page = [dan_post(9), dan_post(8, file_url=None, md5=None), dan_post(7, file_url=""), dan_post(6)]
    fetcher = ScriptedFetcher([page, [dan_post(5)], []])
    with caplog.at_level(logging.INFO, logger="moepipe.scrape.sources.danbooru"):
        posts = list(danbooru.iter_posts(dan_cfg(page_size=4, limit=3), fetcher))
    assert [p.post_id for p in posts] == ["9", "6", "5"]
    assert fetcher.calls[1][1] == {"limit": 1, "page": "b6"}  # the cursor passes skipped posts too
    assert "skipped 2 posts without a downloadable file" in caplog.text


def test_danbooru_post_fields_and_relative_urls() -> None:
    raw = dan_post(42, rating="s", file_url="/data/original/ab/cd/abcd.png", md5="ABCDEF")
    [post] = danbooru.iter_posts(dan_cfg(limit=1), ScriptedFetcher([[raw]]))
    assert post.source == "danbooru" and post.post_id == "42"
    assert post.url == "https://booru.example/data/original/ab/cd/abcd.png"
    assert post.md5 == "ABCDEF" and post.data is None
    assert post.tags == ["chibi", "1girl", "smile"]
    assert post.rating == "sensitive"
    assert post.extra == {"score": 3, "created_at": "2024-05-01T00:00:00.000+09:00",
                          "source_url": "https://pixiv.example/1", "artists": None}  # no tag_string_artist


def test_danbooru_keeps_a_path_prefix_and_uses_the_label() -> None:
    cfg = DanbooruSource(kind="danbooru", name="safe", url="http://127.0.0.1:8000/mirror/", limit=1)
    fetcher = ScriptedFetcher([[dan_post(1, file_url="data/1.png")]])
    [post] = danbooru.iter_posts(cfg, fetcher)
    assert fetcher.calls[0][0] == "http://127.0.0.1:8000/mirror/posts.json"
    assert post.url == "http://127.0.0.1:8000/mirror/data/1.png" and post.source == "safe"


@pytest.mark.parametrize(("letter", "rating"), [
    ("g", "general"), ("s", "sensitive"), ("q", "questionable"), ("e", "explicit"),
    ("safe", "general"), ("x", "explicit"), (None, "explicit"),
])
def test_danbooru_rating_mapping(letter: str | None, rating: str) -> None:
    [post] = danbooru.iter_posts(dan_cfg(limit=1), ScriptedFetcher([[dan_post(1, rating=letter)]]))
    assert post.rating == rating


def test_danbooru_stops_when_the_server_ignores_the_cursor() -> None:
    same = [dan_post(i) for i in (5, 4)]
    fetcher = ScriptedFetcher([same, same, same, same])
    posts = list(danbooru.iter_posts(dan_cfg(page_size=2, limit=50), fetcher))
    assert [p.post_id for p in posts] == ["5", "4"]
    assert len(fetcher.calls) == 2


def test_danbooru_limit_zero_makes_no_request() -> None:
    fetcher = ScriptedFetcher([[dan_post(1)]])
    assert list(danbooru.iter_posts(dan_cfg(limit=0), fetcher)) == []
    assert fetcher.calls == []


def test_danbooru_sends_login_and_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOEPIPE_TEST_DANBOORU_KEY", "s3cret")
    fetcher = ScriptedFetcher([[dan_post(1)]])
    list(danbooru.iter_posts(dan_cfg(limit=1, login="alice", api_key_env="MOEPIPE_TEST_DANBOORU_KEY"), fetcher))
    assert fetcher.calls[0][1] == {"login": "alice", "api_key": "s3cret", "limit": 1}


def test_danbooru_missing_key_variable_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MOEPIPE_TEST_DANBOORU_KEY", raising=False)
    cfg = dan_cfg(login="alice", api_key_env="MOEPIPE_TEST_DANBOORU_KEY")
    with pytest.raises(UserError, match=r"environment variable MOEPIPE_TEST_DANBOORU_KEY is not set"):
        list(danbooru.iter_posts(cfg, ScriptedFetcher([])))
    with pytest.raises(UserError, match="login is not"):
        list(danbooru.iter_posts(dan_cfg(api_key_env="MOEPIPE_TEST_DANBOORU_KEY"), ScriptedFetcher([])))


def test_danbooru_error_object_is_a_user_error() -> None:
    fetcher = ScriptedFetcher([{"success": False, "message": "You cannot search for more than 2 tags"}])
    with pytest.raises(UserError, match="more than 2 tags") as raised:
        list(danbooru.iter_posts(dan_cfg(), fetcher))
    assert "\n" not in str(raised.value)


def test_listing_errors_never_show_the_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from moepipe.scrape.fetch import FetchError

    class Refusing(ScriptedFetcher):
        def get_json(self, url: str, params: dict[str, Any] | None = None) -> Any:
            super().get_json(url, params)
            raise FetchError("http_401", f"{url}?login=alice&api_key=s3cret&limit=200")

    monkeypatch.setenv("MOEPIPE_TEST_DANBOORU_KEY", "s3cret")
    cfg = dan_cfg(login="alice", api_key_env="MOEPIPE_TEST_DANBOORU_KEY")
    with pytest.raises(FetchError) as raised:
        list(danbooru.iter_posts(cfg, Refusing([])))
    assert raised.value.reason == "http_401" and not raised.value.retryable
    assert "s3cret" not in raised.value.url and "s3cret" not in str(raised.value)
    assert raised.value.url == "https://booru.example/posts.json?login=alice&api_key=***&limit=100"


# -- gelbooru ---------------------------------------------------------------------------------

def gel_post(post_id: int, rating: str = "general", file_url: str | None = "auto") -> dict[str, Any]:
    record = {"id": post_id, "md5": f"{post_id:032x}", "rating": rating, "tags": "chibi  solo ",
              "width": 100, "height": 120, "score": 1, "created_at": "Sat Jan 01 00:00:00 -0500 2024",
              "source": ""}
    if file_url == "auto":
        file_url = f"https://img.gelbooru.example/images/{post_id}.png"
    if file_url:
        record["file_url"] = file_url
    return record


def gel_page(*posts: dict[str, Any], offset: int = 0) -> dict[str, Any]:
    page: dict[str, Any] = {"@attributes": {"limit": 3, "offset": offset, "count": 7}}
    if posts:
        page["post"] = list(posts)
    return page


def test_gelbooru_pages_by_number_with_a_fixed_page_size() -> None:
    fetcher = ScriptedFetcher([gel_page(*map(gel_post, (9, 8, 7))), gel_page(*map(gel_post, (6, 5, 4))),
                               gel_page(gel_post(3))])
    cfg = GelbooruSource(kind="gelbooru", url="https://gel.example", tags="chibi", page_size=3, limit=5)
    posts = list(gelbooru.iter_posts(cfg, fetcher))
    assert [p.post_id for p in posts] == ["9", "8", "7", "6", "5"]
    base = {"page": "dapi", "s": "post", "q": "index", "json": 1, "limit": 3, "tags": "chibi"}
    assert fetcher.calls == [("https://gel.example/index.php", {**base, "pid": 0}),
                             ("https://gel.example/index.php", {**base, "pid": 1})]
    assert posts[0].tags == ["chibi", "solo"] and posts[0].rating == "general"
    assert posts[0].url == "https://img.gelbooru.example/images/9.png" and posts[0].md5 == f"{9:032x}"


def test_gelbooru_stops_on_an_empty_or_short_page_and_skips_repeats() -> None:
    fetcher = ScriptedFetcher([gel_page(*map(gel_post, (9, 8))), gel_page()])
    cfg = GelbooruSource(kind="gelbooru", page_size=2, limit=10)
    # Page 2 repeats post 8 (an upload shifted the offsets); the empty page 3 ends the walk.
    fetcher.pages.insert(1, gel_page(gel_post(8), gel_post(7, rating="questionable")))
    posts = list(gelbooru.iter_posts(cfg, fetcher))
    assert [(p.post_id, p.rating) for p in posts] == [("9", "general"), ("8", "general"), ("7", "questionable")]
    assert len(fetcher.calls) == 3
    assert list(gelbooru.iter_posts(cfg, ScriptedFetcher([gel_page()]))) == []


@pytest.mark.parametrize(("word", "rating"), [("safe", "general"), ("sensitive", "sensitive"),
                                              ("questionable", "questionable"), ("explicit", "explicit")])
def test_gelbooru_rating_words(word: str, rating: str) -> None:
    cfg = GelbooruSource(kind="gelbooru", limit=1)
    [post] = gelbooru.iter_posts(cfg, ScriptedFetcher([[gel_post(1, rating=word)]]))  # old bare-list shape
    assert post.rating == rating


def test_gelbooru_credentials_and_missing_files(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOEPIPE_TEST_GEL_KEY", "k")
    monkeypatch.setenv("MOEPIPE_TEST_GEL_USER", "77")
    cfg = GelbooruSource(kind="gelbooru", limit=2, page_size=3, api_key_env="MOEPIPE_TEST_GEL_KEY",
                         user_id_env="MOEPIPE_TEST_GEL_USER")
    fetcher = ScriptedFetcher([gel_page(gel_post(9, file_url=None), gel_post(8), gel_post(7))])
    assert [p.post_id for p in gelbooru.iter_posts(cfg, fetcher)] == ["8", "7"]
    assert fetcher.calls[0][1]["api_key"] == "k" and fetcher.calls[0][1]["user_id"] == "77"
    monkeypatch.delenv("MOEPIPE_TEST_GEL_USER")
    with pytest.raises(UserError, match="MOEPIPE_TEST_GEL_USER"):
        list(gelbooru.iter_posts(cfg, ScriptedFetcher([])))


def test_gelbooru_error_object_is_a_user_error() -> None:
    fetcher = ScriptedFetcher([{"success": "false", "message": "Search error: API limited"}])
    with pytest.raises(UserError, match="answered Search error: API limited"):
        list(gelbooru.iter_posts(GelbooruSource(kind="gelbooru"), fetcher))


# -- url lists --------------------------------------------------------------------------------

def urls_cfg(path: Any, **kwargs: Any) -> UrlsSource:
    return UrlsSource(kind="urls", path=path, **kwargs)


def test_urls_txt_skips_blank_and_comment_lines_and_repeats(tmp_path: Any) -> None:
    path = tmp_path / "list.txt"
    path.write_text("# avatars\nhttp://a.example/1.png\n\n  http://a.example/2.png  \nhttp://a.example/1.png\n")
    posts = list(iter_source(urls_cfg(path), fetcher=object()))  # type: ignore[arg-type]
    assert [p.url for p in posts] == ["http://a.example/1.png", "http://a.example/2.png"]
    expected_id = hashlib.sha256(b"http://a.example/1.png").hexdigest()[:16]
    assert posts[0].post_id == expected_id == urls.url_post_id("http://a.example/1.png")
    assert posts[0].source == "urls" and posts[0].tags == [] and posts[0].rating == "general"
    assert posts[0].data is None


def test_urls_csv_with_tags_and_rating_columns(tmp_path: Any) -> None:
    path = tmp_path / "list.csv"
    path.write_text("link,caption,rating\nhttp://a.example/1.png,\"1girl, long hair, smile\",s\n"
                    "http://a.example/2.png,chibi solo,explicit\n,orphan tags,g\n")
    posts = list(urls.iter_posts(urls_cfg(path, url_col="link", tags_col="caption", limit=10)))
    assert [(p.tags, p.rating) for p in posts] == [
        (["1girl", "long_hair", "smile"], "sensitive"), (["chibi", "solo"], "explicit")]


def test_urls_tsv_and_limit(tmp_path: Any) -> None:
    path = tmp_path / "list.tsv"
    path.write_text("url\ttags\n" + "".join(f"http://a.example/{i}.png\tchibi\n" for i in range(5)))
    assert len(list(urls.iter_posts(urls_cfg(path, limit=3)))) == 3


def test_urls_jsonl_accepts_tag_lists_and_strings(tmp_path: Any) -> None:
    path = tmp_path / "list.jsonl"
    rows = [{"url": "http://a.example/1.png", "tags": ["chibi", "smile"], "md5": "ABC"},
            {"url": "http://a.example/2.png", "tags": "blush 1girl"}, {"tags": "no url"}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows) + "\n")
    posts = list(urls.iter_posts(urls_cfg(path)))
    assert [p.tags for p in posts] == [["chibi", "smile"], ["blush", "1girl"]]
    assert posts[0].md5 == "abc" and posts[1].md5 is None


def test_urls_bad_input_is_a_one_line_user_error(tmp_path: Any) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(UserError) as raised:
        list(urls.iter_posts(urls_cfg(missing)))
    assert str(raised.value) == f"scrape: url list not found: {missing}"
    parquet = tmp_path / "list.parquet"
    parquet.write_bytes(b"PAR1")
    with pytest.raises(UserError, match="unsupported format '.parquet'"):
        list(urls.iter_posts(urls_cfg(parquet)))
    csv_path = tmp_path / "list.csv"
    csv_path.write_text("href,tags\nhttp://a.example/1.png,x\n")
    with pytest.raises(UserError, match=r"no column 'url' \(columns: href, tags\)"):
        list(urls.iter_posts(urls_cfg(csv_path)))
    jsonl = tmp_path / "list.jsonl"
    jsonl.write_text('{"url": "http://a.example/1.png"}\n{broken\n')
    with pytest.raises(UserError, match=r"list.jsonl:2: not valid JSON"):
        list(urls.iter_posts(urls_cfg(jsonl)))


# -- folders ----------------------------------------------------------------------------------

def test_folder_reads_images_by_magic_bytes_with_sidecar_tags(tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.png").write_bytes(png_bytes((1, 2, 3)))
    (tmp_path / "b.txt").write_text("1girl, long hair, smile, rating:s\n")
    (tmp_path / "a.jpg").write_bytes(png_bytes((4, 5, 6)))  # really a PNG: kept anyway
    (tmp_path / "a.jpg.txt").write_text("chibi solo")
    (tmp_path / "notes.jpg").write_text("not an image")
    (tmp_path / "sub" / "c.png").write_bytes(png_bytes((7, 8, 9)))
    with caplog.at_level(logging.INFO, logger="moepipe.scrape.sources.folder"):
        posts = list(iter_source(FolderSource(kind="folder", path=tmp_path), fetcher=None))
    assert [p.post_id for p in posts] == ["a.jpg", "b.png", "sub/c.png"]
    assert posts[0].tags == ["chibi", "solo"] and posts[0].rating == "general"
    assert posts[1].tags == ["1girl", "long_hair", "smile"] and posts[1].rating == "sensitive"
    assert posts[2].tags == []
    assert posts[1].data == (tmp_path / "b.png").read_bytes() and posts[1].url is None
    assert "skipped 3 files that are not images" in caplog.text  # two sidecars and notes.jpg


def test_folder_not_recursive_and_limit(tmp_path: Any) -> None:
    (tmp_path / "sub").mkdir()
    for name in ("x.png", "y.png", "sub/z.png"):
        (tmp_path / name).write_bytes(png_bytes())
    flat = FolderSource(kind="folder", path=tmp_path, recursive=False)
    assert [p.post_id for p in folder.iter_posts(flat)] == ["x.png", "y.png"]
    limited = FolderSource(kind="folder", path=tmp_path, limit=1)
    assert [p.post_id for p in folder.iter_posts(limited)] == ["sub/z.png"]


def test_folder_missing_is_a_one_line_user_error(tmp_path: Any) -> None:
    with pytest.raises(UserError) as raised:
        list(folder.iter_posts(FolderSource(kind="folder", path=tmp_path / "gone")))
    assert str(raised.value) == f"scrape: folder not found: {tmp_path / 'gone'}"


@pytest.mark.parametrize(("text", "tags"), [
    ("1girl, long hair ,smile,, smile", ["1girl", "long_hair", "smile"]),
    ("1girl long_hair\nsmile", ["1girl", "long_hair", "smile"]),
    ("", []),
])
def test_parse_tag_text(text: str, tags: list[str]) -> None:
    assert folder.parse_tag_text(text) == tags
