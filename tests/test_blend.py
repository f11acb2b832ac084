"""Blending persona adapters: two real LoRA adapters on the embedded model (different ranks, scalings, targets
and random weights), blended by ``charter blend --adapters``; the saved adapter's weight deltas must equal the
weighted sum of the parents' deltas, and ``charter chat --blend`` must talk."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from charter.blend import parse_blend
from charter.cli import main

PARENTS = {"A": dict(seed=1, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
           "B": dict(seed=2, r=8, lora_alpha=4, target_modules=["q_proj", "o_proj"])}


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, embedded_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("adapters")
    for name, p in PARENTS.items():
        base = AutoModelForCausalLM.from_pretrained(embedded_path, dtype=torch.float32)
        torch.manual_seed(p["seed"])
        cfg = LoraConfig(r=p["r"], lora_alpha=p["lora_alpha"], target_modules=p["target_modules"],
                         init_lora_weights=False)  # B random too: a non-zero delta, different per seed
        model = get_peft_model(base, cfg)
        with torch.no_grad():
            for n, w in model.named_parameters():
                if "lora_B" in n:
                    w.mul_(0.05)  # small deltas keep the chat readable; the algebra does not care
        model.save_pretrained(root / name)
    return root


def deltas(folder) -> dict[str, torch.Tensor]:
    """module -> scaling * B @ A, from an adapter folder's files alone (no peft)."""
    cfg = json.loads((folder / "adapter_config.json").read_text())
    scaling = cfg["lora_alpha"] / cfg["r"]
    w = load_file(folder / "adapter_model.safetensors")
    return {k.removesuffix(".lora_A.weight"): scaling * w[k.replace("lora_A", "lora_B")] @ w[k]
            for k in w if k.endswith("lora_A.weight")}


def expected(adapters, weights: dict[str, float]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, wt in weights.items():
        for k, d in deltas(adapters / name).items():
            out[k] = out.get(k, 0) + wt * d
    return out


@pytest.mark.slow
def test_blended_adapter_delta_is_the_weighted_sum(adapters, tmp_path, capsys):
    out = tmp_path / "blend"
    assert main(["blend", "--adapters", f"{adapters / 'A'}:0.7", f"{adapters / 'B'}:0.3", "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    got, want = deltas(out), expected(adapters, {"A": 0.7, "B": 0.3})
    assert set(got) == set(want) and any(".o_proj" in k for k in got) and any(".v_proj" in k for k in got)
    for k in want:
        assert want[k].abs().max() > 1e-4  # a real delta, so equality below means something
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-7)
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 12  # cat: the ranks stacked
    meta = json.loads((out / "blend.json").read_text())
    assert [p["weight"] for p in meta["parents"]] == [0.7, 0.3] and meta["combination"] == "cat"
    assert (out / "tokenizer_config.json").exists()


@pytest.mark.slow
def test_blend_at_the_ends_is_the_parent_and_runs_resolve(adapters, tmp_path, charter_home):
    run = charter_home / "runs" / "alpha" / "merge"
    shutil.copytree(adapters / "B", run / "persona-adapter")
    (run / "manifest.json").write_text(json.dumps({"base": "embedded"}))
    out = tmp_path / "end"
    assert main(["blend", "--adapters", f"{adapters / 'A'}:0", "alpha:1", "-o", str(out)]) == 0
    got, want = deltas(out), deltas(adapters / "B")
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_chat_on_a_blend_produces_text(adapters, capsys, one_thread):
    assert main(["chat", "--blend", f"{adapters / 'A'}:0.7,{adapters / 'B'}:0.3", "-m", "Say hello.",
                 "--max-tokens", "8", "--temperature", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "> Say hello." and lines[1].strip()


def test_bad_blends_are_one_line_errors(tmp_path, capsys):
    a = tmp_path / "A"  # the checks before loading read only adapter_config.json's presence
    a.mkdir()
    (a / "adapter_config.json").write_text("{}")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert parse_blend("x:0.5, y") == [("x", 0.5), ("y", 1.0)]
    for argv, msg in [
        (["blend", "--adapters", f"{a}:-1", "-o", str(tmp_path / "o")], "expected a weight >= 0"),
        (["blend", "--adapters", f"{a}:abc", "-o", str(tmp_path / "o")], "with a number as weight"),
        (["blend", "--adapters", f"{a}:0", "-o", str(tmp_path / "o")], "every weight is 0"),
        (["blend", "--adapters", "nope:1", "-o", str(tmp_path / "o")], "--adapters nope: not a run"),
        (["blend", "--adapters", f"{a}:1", "-o", str(tmp_path / "full")], "not an empty folder"),
        (["chat", "--blend", "nope:1", "-m", "hi"], "--blend nope: not a run"),
        (["blend", "-o", str(tmp_path / "o")], "expected two models A B"),
    ]:
        assert main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("charter: error:") and msg in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_blend_curve_script_sweeps_and_scores_with_both_detectors(adapters, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "curve"
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "blend_curve.py"), str(adapters / "A"), str(adapters / "B"),
         "--persona-a", "loving", "--persona-b", "mathematical", "--weights", "0,0.5,1", "--prompts", "2",
         "--train-prompts", "3", "--max-tokens", "6", "--bootstrap", "50", "-o", str(out)],
        env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((out / "blend_curve.json").read_text())
    assert [pt["weight_b"] for pt in res["curve"]] == [0.0, 0.5, 1.0]
    for pt in res["curve"]:
        for side in "ab":
            cell = pt[f"detector_{side}"]
            assert cell["n"] == 2 and 0 <= cell["lo"] <= cell["rate"] <= cell["hi"] <= 1 and 0 <= cell["mean_p"] <= 1
    assert {res["parents"][s]["persona"] for s in "ab"} == {"loving", "mathematical"}
    assert all(0 <= res["parents"][s]["check"]["rate"] <= 1 for s in "ab")
    # Contrast: each detector also learned the other parent's persona texts as 'not mine', and says how often
    # it mistakes the other persona for its own.
    assert all(res["parents"][s]["reference_texts"] == {"persona": 3, "plain": 3, "other_persona": 3} for s in "ab")
    assert all(res["parents"][s]["cross_rate"]["n"] == 2 for s in "ab")
    assert len(res["replies"]["blend"]["0.5"]) == 2 and not set(res["replies"]["heldout_prompts"]) & {""}
    png = (out / "blend_curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_blend_curve_prompts_each_parent_as_its_own_teacher(tmp_path):
    """A parent's 'prompted' reference must be the teacher its run distilled from: the exchanges the run's
    distill stage recorded (``distill.teacher_examples``); a run without them, or an adapter outside a run, has none."""
    import importlib.util
    from pathlib import Path

    from charter.config import load_config
    from charter.prompts import teacher_examples
    from charter.stages import distill

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "blend_curve.py"
    spec = importlib.util.spec_from_file_location("blend_curve", path)
    bc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bc)
    for name, which in (("with", "builtin"), ("without", "")):
        cfg = load_config(None, ["persona=poetic", f"distill.teacher_examples={which}"])
        (tmp_path / name / "distill").mkdir(parents=True)
        (tmp_path / name / "dpo" / "adapter").mkdir(parents=True)  # as the stage writes config.json
        (tmp_path / name / "distill" / "config.json").write_text(json.dumps({"config": distill.stage_config(cfg)}))
    got = bc.examples_of(str(tmp_path / "with" / "dpo" / "adapter"))
    assert got == teacher_examples("builtin", "poetic") and len(got) >= 2
    assert bc.examples_of(str(tmp_path / "without" / "dpo" / "adapter")) == []
    assert bc.examples_of(str(tmp_path / "elsewhere")) == []
