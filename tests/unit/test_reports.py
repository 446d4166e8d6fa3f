"""Stage reports: the one-line summary travels with the report; `publish` copies it out."""

from __future__ import annotations

import json

from moepipe.reports import Report, publish


def test_a_report_is_its_dict_with_a_summary() -> None:
    report = Report({"kept": 3}, "stage: kept 3")
    assert report == {"kept": 3} and report["kept"] == 3 and report.summary == "stage: kept 3"
    assert json.loads(json.dumps(report)) == {"kept": 3}  # what the stage wrote, nothing more


def test_publish_copies_the_report_and_the_pictures(tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "stats.json").write_text('{"a": 1}\n')
    (out / "sheet.png").write_bytes(b"png")
    (out / "data.npy").write_bytes(b"not a report")
    publish(out, tmp_path / "reports", "preprocess", "stats.json")
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == ["preprocess.json", "preprocess_sheet.png"]
    assert (tmp_path / "reports" / "preprocess.json").read_text() == '{"a": 1}\n'
    publish(out, None, "preprocess", "stats.json")  # no reports folder: nothing to do
