"""Hub ids that cannot be loaded here fail with one line naming the model and the fix, not a traceback or
transformers' retries."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from charter import cli
from charter.models import ModelNotFound, resolve

ROOT = Path(__file__).parent.parent


def test_an_uncached_hub_id_offline_names_the_model_and_the_fix(capsys):
    with pytest.raises(ModelNotFound, match=r"charter-test/no-such-model: not in the local Hugging Face cache.*"
                                            r"hf download charter-test/no-such-model"):
        resolve("charter-test/no-such-model")
    assert cli.main(["chat", "charter-test/no-such-model", "-m", "hi"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("charter: error: charter-test/no-such-model: ") and "\n" not in err


def test_a_malformed_hub_id_is_one_line():
    with pytest.raises(ModelNotFound, match="nor a valid hub id"):
        resolve("not//valid")


def test_an_unreachable_hub_is_one_line(tmp_path):
    with socket.socket() as s:  # a port nobody listens on: connection refused, like a blocked network
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0",
           "HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HUB_CACHE": str(tmp_path / "hub")}
    # A fresh process: huggingface_hub reads HF_ENDPOINT and the offline switch when imported. resolve() is
    # what every loader calls first (the CLI's one-line formatting is the test above).
    code = ("from charter.models import ModelNotFound, resolve\ntry:\n    resolve('charter-test/no-such-model')\n"
            "except ModelNotFound as e:\n    print(e)\n    raise SystemExit(1)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("charter-test/no-such-model: "), r.stdout
    assert f"the hub cannot be reached at http://127.0.0.1:{port}" in lines[0] and "hf download" in lines[0]
