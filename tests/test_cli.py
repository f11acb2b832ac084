"""CLI behaviour: light import, help, errors as one line."""

import subprocess
import sys

from charter.cli import main


def test_import_and_help_do_not_import_torch():
    code = ("import sys, charter, charter.cli; charter.cli.build_parser().format_help(); "
            "bad = [m for m in ('torch', 'transformers', 'trl', 'peft') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
    r = subprocess.run([sys.executable, "-m", "charter.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "train" in r.stdout and "distill" in r.stdout


def test_bad_config_is_one_line_error(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: x\ndistill:\n  K: 5\n")
    assert main(["distill", str(cfg)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown key 'K'" in err


def test_missing_config_file(capsys):
    assert main(["train", "nope.yaml"]) == 1
    assert "nope.yaml: config file not found" in capsys.readouterr().err
