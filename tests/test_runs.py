"""Run folders: resumable JSONL survives torn writes and duplicates; stages skip, force and detect drift."""

import json

import pytest

from charter.runs import RowLog, Stage, read_jsonl


def test_rowlog_drops_torn_tail_and_duplicates(tmp_path):
    p = tmp_path / "rows.jsonl"
    p.write_text('{"id": "a", "v": 1}\n{"id": "b", "v": 2}\n{"id": "a", "v": 9}\n{"id": "c", "v"')
    log = RowLog(p)
    assert sorted(log.rows) == ["a", "b"] and log.rows["a"]["v"] == 1
    log.append([{"id": "b", "v": 5}, {"id": "c", "v": 3}])
    rows = read_jsonl(p)
    assert [r["id"] for r in rows] == ["a", "b", "c"]
    assert p.read_text().endswith("\n")


def test_corrupt_middle_line_is_an_error(tmp_path):
    p = tmp_path / "rows.jsonl"
    p.write_text('{"id": "a"}\nnot json\n{"id": "b"}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_jsonl(p)


def test_stage_skip_force_and_config_drift(tmp_path):
    s = Stage(tmp_path, "x", {"a": 1})
    assert s.begin()
    s.finish({"rows": 3})
    assert json.loads(s.manifest_path.read_text())["counts"] == {"rows": 3}
    assert not Stage(tmp_path, "x", {"a": 1}).begin()  # finished: skipped
    with pytest.raises(RuntimeError, match="different config"):
        Stage(tmp_path, "x", {"a": 2}).begin()
    assert Stage(tmp_path, "x", {"a": 2}).begin(force=True)  # --force replaces it
    assert not (tmp_path / "x" / "manifest.json").exists()
