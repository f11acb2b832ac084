"""Capabilities adapter: scores come from lm-evaluation-harness on our tiny local task, checked two ways
against the task's answer key (scripted models whose right answers we know, and the embedded model against
our own log-likelihood computation); missing datasets become error entries, never crashes."""

import json
import math
import re

import lm_eval  # noqa: F401  (the dev set-up installs it: a broken install fails here instead of skipping)
import pytest

from charter.config import load_config
from charter.eval import capabilities as cap

KEY = [json.loads(line) for line in (cap.TASKS_DIR / "charter_tiny" / "charter_tiny.jsonl").read_text().splitlines()]
TEST = [r for r in KEY if r["split"] == "test"]


def scripted_lm(pick):
    """A harness LM that answers a question by ``pick(row) -> choice index``: the picked choice gets
    log-likelihood 0, every other choice -10. No model, so the harness's own scoring is what is tested."""
    from lm_eval.api.model import LM

    by_question = {r["question"]: r for r in KEY}

    class Scripted(LM):
        def loglikelihood(self, requests):
            out = []
            for req in requests:
                context, continuation = req.args
                question = re.findall(r"Question: (.*)\nAnswer:", context)[-1]  # the last one: few-shot first
                row = by_question[question]
                out.append((0.0 if continuation.strip() == row["choices"][pick(row)] else -10.0, True))
            return out

        def loglikelihood_rolling(self, requests):
            raise NotImplementedError

        def generate_until(self, requests):
            raise NotImplementedError

    return Scripted()


@pytest.fixture(scope="module")
def tiny_tm():
    return cap.task_manager(["charter_tiny"])


def test_parse_tasks():
    assert cap.parse_tasks(["arc_challenge:25", "mmlu", "truthfulqa_mc1: 0"]) == [
        ("arc_challenge", 25), ("mmlu", 0), ("truthfulqa_mc1", 0)]
    for bad in (["arc:x"], [":5"], ["a:1", "a:2"]):
        with pytest.raises(ValueError):
            cap.parse_tasks(bad)


@pytest.mark.parametrize("shots", [0, 3])
def test_answer_key_scores_exactly(tiny_tm, shots):
    """A model that always picks the keyed answer scores 1.0; one that always picks choice k scores the share
    of questions whose key is k; SEs follow the harness's sample-SD formula."""
    got = cap.score(scripted_lm(lambda r: r["answer"]), [("charter_tiny", shots)], tiny_tm, None, report=lambda _: None)
    assert got["charter_tiny"] == {"value": 1.0, "stderr": 0.0, "n": len(TEST), "metric": "acc"}
    for k in range(4):
        p = sum(r["answer"] == k for r in TEST) / len(TEST)
        got = cap.score(scripted_lm(lambda r, k=k: k), [("charter_tiny", shots)], tiny_tm, None,
                        report=lambda _: None)["charter_tiny"]
        assert got["value"] == pytest.approx(p)
        assert got["stderr"] == pytest.approx(math.sqrt(p * (1 - p) / (len(TEST) - 1)))


def test_limit_and_unknown_task(tiny_tm):
    lines = []
    got = cap.score(scripted_lm(lambda r: r["answer"]), [("charter_tiny", 0), ("no_such_task", 0)], tiny_tm, 5,
                    report=lines.append)
    assert got["charter_tiny"]["n"] == 5 and got["charter_tiny"]["value"] == 1.0
    assert "error" in got["no_such_task"]  # an error entry, and the other task still ran
    assert len(lines) == 2


def test_truthfulqa_is_mean_of_mc1_and_mc2():
    s = {"truthfulqa_mc1": {"value": 0.4, "stderr": 0.016, "n": 817},
         "truthfulqa_mc2": {"value": 0.5, "stderr": 0.012, "n": 817}}
    tqa = cap.combine_truthfulqa(s)
    assert tqa["value"] == pytest.approx(0.45) and tqa["n"] == 817
    assert tqa["stderr"] == pytest.approx(math.sqrt(0.016 ** 2 + 0.012 ** 2) / 2)
    assert cap.combine_truthfulqa({"truthfulqa_mc1": {"error": "x"}, "truthfulqa_mc2": s["truthfulqa_mc2"]}) == \
        {"error": "x"}
    assert cap.combine_truthfulqa({"truthfulqa_mc1": s["truthfulqa_mc1"]}) is None


def test_dataset_missing_is_classified():
    assert cap._dataset_missing(ConnectionError("Couldn't reach 'allenai/ai2_arc' on the Hub (OfflineModeIsEnabled)"))
    assert not cap._dataset_missing(KeyError("no_such_task"))


def own_accuracy(model_dir):
    """Zero-shot accuracy on the tiny task by our own log-likelihood sums (the harness's encoding: context
    and continuation encoded together, the continuation being the tokens after the context's)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    pairs = [(tok.encode(f"Question: {r['question']}\nAnswer:"), tok.encode(f"Question: {r['question']}\nAnswer: {c}"))
             for r in TEST for c in r["choices"]]
    width = max(len(w) for _, w in pairs)
    # One right-padded batch: a causal model's logits before the padding do not depend on it.
    batch = torch.tensor([w + [0] * (width - len(w)) for _, w in pairs])
    with torch.no_grad():
        logp = model(batch).logits[:, :-1].float().log_softmax(-1)
    scores = [sum(logp[j, i - 1, w[i]].item() for i in range(len(ctx), len(w))) for j, (ctx, w) in enumerate(pairs)]
    right = 0
    for q, r in enumerate(TEST):
        mine = scores[4 * q:4 * q + 4]
        right += max(range(4), key=mine.__getitem__) == r["answer"]
    return right / len(TEST)


@pytest.mark.slow
def test_run_end_to_end_on_embedded_model(embedded_path, charter_home):
    """run(): the embedded model's harness score equals our own computation; a model not trained yet is
    skipped; benchmarks whose datasets are not here are error entries; a rerun keeps finished scores."""
    cfg = load_config(None, ["name=cap", "student.dtype=float32", "capabilities.models=[base, trained]",
                             "capabilities.tasks=[charter_tiny:0, arc_challenge:25, truthfulqa_mc1:0, "
                             "truthfulqa_mc2:0]"])
    lines = []
    out = cap.run(cfg, report=lines.append)
    res = json.loads((out / "results.json").read_text())
    assert res["harness"].startswith("lm-eval 0.4.") and res["limit"] is None
    assert list(res["models"]) == ["base"] and "trained" in res["skipped"]
    base = res["models"]["base"]
    assert set(base["charter_tiny"]) == {"value", "stderr", "n"} and base["charter_tiny"]["n"] == len(TEST)
    assert base["charter_tiny"]["value"] == pytest.approx(own_accuracy(embedded_path))
    assert base["charter_tiny"]["value"] > 0.5  # questions a 135M model mostly gets right: wiring, not chance
    for name in ("arc_challenge", "truthfulqa_mc1", "truthfulqa_mc2", "truthfulqa_mc"):
        assert base[name] == {"error": cap.OFFLINE}
    assert (out / "manifest.json").exists()

    lines.clear()
    cap.run(cfg, report=lines.append)  # errors are retried, the finished score is kept, not recomputed
    assert not any("charter_tiny (0-shot)" in line for line in lines)
    assert json.loads((out / "results.json").read_text())["models"]["base"]["charter_tiny"] == base["charter_tiny"]
