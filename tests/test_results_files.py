"""Every number the README publishes comes from a results file under docs/results/, and the tables say what
their files say: a table edited by hand, or a file re-measured without redrawing the table, fails here."""

import json
import re
from pathlib import Path

import pytest

from charter import results

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
FILES = sorted(results.RESULTS_DIR.glob("*.json"))


def test_readme_tables_are_drawn_from_their_results_files():
    text = README.read_text()
    blocks = results.readme_blocks(text)
    assert blocks, "the README has no results tables"
    assert results.mismatches(text) == [], "run: python scripts/results.py readme --write"
    names = {name for name, _, _ in blocks}
    assert names <= {p.stem for p in FILES}


@pytest.mark.parametrize("path", [p for p in FILES if p.name != "figures.json"], ids=lambda p: p.stem)
def test_a_results_file_says_how_it_was_made(path):
    doc = json.loads(path.read_text())
    assert doc["schema"] == results.SCHEMA and doc["commands"], f"{path}: no command that wrote it"
    assert doc["machine"]["cpu"] and doc["machine"]["auto_dtype"], f"{path}: no CPU"
    assert doc["versions"]["torch"] and doc["versions"]["transformers"], f"{path}: no package versions"
    assert doc.get("commit"), f"{path}: no commit"
    rob = doc.get("robustness")
    if rob:
        assert doc.get("config_hash"), f"{path}: no config hash"
        head = rob["detectors"][rob["headline"]]
        # the headline detector learned from nothing a training stage read
        assert head["fit"] == "independent", f"{path}: the headline detector is {head['fit']}"


def test_every_figure_in_the_readme_is_drawn_from_results_files():
    figures = json.loads((results.RESULTS_DIR / "figures.json").read_text())
    shown = set(re.findall(r"\(docs/([\w.-]+\.png)\)", README.read_text()))
    assert shown, "the README shows no figure"
    for png in shown:
        assert png in figures, f"docs/{png}: not listed in docs/results/figures.json"
        entry = figures[png]
        assert entry["command"] and all((results.RESULTS_DIR / f).exists() for f in entry["from"])
        assert (ROOT / "docs" / png).exists()


def test_a_number_changed_by_hand_is_caught(tmp_path):
    text = README.read_text()
    name, kind, body = results.readme_blocks(text)[0]
    m = re.search(r"\d\.\d\d", body)
    wrong = body[:m.start()] + ("0.00" if m.group() != "0.00" else "0.01") + body[m.end():]
    edited = text.replace(body, wrong, 1)
    assert f"{name} {kind}" in results.mismatches(edited)
    assert results.mismatches(results.redraw(edited)) == []
