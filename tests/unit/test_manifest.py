import json

import pytest

from moepipe.manifest import JsonlLog, Manifest, read_jsonl

RECORD = {"file": "images/a.png", "sha256": "a" * 64, "source": "s", "post_id": "1", "url": None,
          "tags": [], "rating": "general", "width": 1, "height": 1}


def test_torn_last_line_is_dropped_and_repaired(tmp_path):
    path = tmp_path / "manifest.jsonl"
    path.write_text(json.dumps(RECORD) + "\n" + '{"file": "images/b.p')
    assert len(read_jsonl(path)) == 1
    with Manifest(path) as manifest:
        assert manifest.has_post("s", "1")
        manifest.append({**RECORD, "post_id": "2", "sha256": "b" * 64})
    lines = path.read_text().splitlines()
    assert [json.loads(line)["post_id"] for line in lines] == ["1", "2"]


def test_manifest_indexes_posts_and_hashes(tmp_path):
    with Manifest(tmp_path / "m.jsonl") as manifest:
        manifest.append(RECORD)
        assert manifest.has_post("s", 1)  # ids compare as strings
        assert not manifest.has_post("other", "1")
        assert manifest.by_sha("a" * 64)["post_id"] == "1"
        with pytest.raises(ValueError, match="lacks rating"):
            manifest.append({k: v for k, v in RECORD.items() if k != "rating"})
    with JsonlLog(tmp_path / "m.jsonl") as reopened:
        assert len(reopened.records) == 1
