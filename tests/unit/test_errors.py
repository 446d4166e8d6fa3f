"""moepipe.errors.redact: no password or API key of a URL reaches a message, a log or a report."""

from __future__ import annotations

import pytest

from moepipe.errors import redact


@pytest.mark.parametrize("url, shown", [
    # credential-like query values (scrape sources take API keys as parameters)
    ("http://h/posts.json?login=a&api_key=s3cret&page=2", "http://h/posts.json?login=a&api_key=***&page=2"),
    ("https://h/p?TOKEN=t&Access_Token=a&key=k&x=1", "https://h/p?TOKEN=***&Access_Token=***&key=***&x=1"),
    ("https://h/p?password=&q=blue+hair#top", "https://h/p?password=***&q=blue+hair#top"),
    # a password in the netloc (tracking and database URIs)
    ("postgresql://moe:s3cret@db.local:5432/mlflow", "postgresql://moe:***@db.local:5432/mlflow"),
    ("http://moe:pa:ss@Tracking.Local", "http://moe:***@Tracking.Local"),
    ("http://moe:s3cret@[::1]:5000/api", "http://moe:***@[::1]:5000/api"),
    ("http://moe:s3cret@h:notaport/x", "http://moe:***@h:notaport/x"),  # too broken for urllib
    # both at once
    ("https://u:pw@h/x?token=t", "https://u:***@h/x?token=***"),
])
def test_credentials_are_hidden(url: str, shown: str) -> None:
    assert redact(url) == shown
    assert "s3cret" not in redact(url)


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:5000", "https://user@host/x", "sqlite:///mlruns.db", "file:///tmp/mlruns",
    "mlruns", "http://h/p?tags=a%2Cb&page=2", "s3://bucket/a@b/c", "",
])
def test_urls_without_credentials_are_unchanged(url: str) -> None:
    assert redact(url) == url


def test_any_object_is_shown_as_its_text() -> None:
    class Url:
        def __str__(self) -> str:
            return "http://h/p?api_key=k"

    assert redact(Url()) == "http://h/p?api_key=***"
