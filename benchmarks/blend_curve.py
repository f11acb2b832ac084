"""Does a blend of two persona adapters sit between its parents? A sweep of the blend weight, scored by each
parent's in-persona detector.

    .venv/bin/python benchmarks/blend_curve.py RUN_A RUN_B [--weights 0,0.25,0.5,0.75,1] [--prompts 24]
        [--train-prompts 24] [--encoder tfidf|minilm] [--reference prompted|pairs] [--no-contrast]
        [--max-tokens 96] [--seed 0] [-o blend-curve/]

RUN_A / RUN_B: trained runs (their ``merge/persona-adapter``) or LoRA adapter folders; their personas come from
the runs (``distill/config.json``) or ``--persona-a/--persona-b`` (a shipped name or a constitution file).

For weight w of B, the blend (1 - w) * A + w * B (``charter.blend``: the exact weighted sum of the two LoRA
deltas, on the base model, no merged model) answers held-out prompts with no system prompt. Each parent's
detector is the robustness evaluation's single-persona detector (``eval/inpersona.py``), learned from texts
no adapter wrote on these prompts:

- ``--reference prompted`` (default): the *base* model answering *other* prompts as the parent's teacher did,
  with the persona's system prompt and the run's ``distill.teacher_examples`` exchanges (persona), vs plainly
  (not);
- ``--reference pairs``: the parent run's distillation pairs, chosen (persona) vs rejected (not).

With contrast (the default) the *other* parent's persona texts are negatives too, so a detector cannot pass
by telling "has a persona" from "plain": it has to tell its persona from the other one. Per weight and
detector: the in-persona rate (share of replies with p >= 0.5) with a bootstrap 95% CI over prompts, and the
mean probability. The base model's held-out replies give each detector's floor; its held-out prompted
replies give the detector check (balanced accuracy, this persona prompted vs base; read it first: near 0.5
the curve says nothing) and the cross rate (the share of the *other* persona's prompted replies it calls
its own: high means it cannot tell the two apart).

Writes ``blend_curve.json`` (settings, detector checks, the curve, every reply) and ``blend_curve.png``.
Prompts are drawn from the shipped ``preference_prompts`` pool, which no training stage uses.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path


def folders(ref: str) -> list[Path]:
    """Where the run behind ``ref`` may be: a run name, a run folder, or an adapter inside one
    (``<run>/dpo/adapter``, ``<run>/merge/persona-adapter``)."""
    from charter.runs import is_run_name, run_dir

    p = Path(ref).expanduser()
    return ([run_dir(ref)] if is_run_name(ref) else []) + [p, p.parent.parent]


def distill_config(folder: Path) -> Path:
    """The config the run's distill stage recorded (beside its pairs, as every stage records its own)."""
    from charter import layout

    return folder / layout.outputs()["pairs"].stage / "config.json"


def pairs_of(ref: str, heldout: set) -> tuple[list[str], list[str]]:
    """(chosen, rejected) replies of the run behind ``ref``, none answering a held-out prompt."""
    from charter import layout

    for folder in folders(ref):
        if layout.path(folder, "pairs").is_file():
            rows = [x for x in layout.pair_texts(folder) if x[0] not in heldout]
            return [c for _, c, _ in rows], [r for _, _, r in rows]
    sys.exit(f"blend_curve: {ref}: no distill/pairs.jsonl in its run; --reference pairs needs the parents' runs")


def persona_of(ref: str, given: str | None):
    """The constitution behind a run (or ``given``: a shipped persona name or a file)."""
    from charter import constitution as const
    from charter import layout
    from charter.runs import read_json

    if given:
        return const.load(given)
    for folder in folders(ref):
        expanded = layout.path(folder, "constitution")
        if expanded.is_file() and layout.finished(folder, layout.outputs()["constitution"].stage):
            return const.load_file(expanded)
        cfg = distill_config(folder)
        if cfg.is_file():
            return const.load(read_json(cfg)["config"]["persona"])
    sys.exit(f"blend_curve: {ref}: cannot tell its persona (no distill/config.json); pass --persona-a/--persona-b")


def examples_of(ref: str) -> list[dict]:
    """The few-shot exchanges the run behind ``ref`` gave its distillation teacher (``distill.teacher_examples``,
    recorded in its ``distill/config.json``), so a parent's 'prompted' texts come from the teacher that run
    distilled from; none if it had none or ``ref`` is not inside a run."""
    from charter.runs import read_json

    for folder in folders(ref):
        cfg = distill_config(folder)
        if cfg.is_file():
            return read_json(cfg)["config"]["distill"].get("teacher_examples", {}).get("exchanges", [])
    return []


def rate(hits: list[float], n_boot: int, seed: int) -> dict:
    from charter.eval.inpersona import bootstrap_rate

    return bootstrap_rate([[h] for h in hits], n_boot, seed)


def balanced_accuracy(det, persona_texts, base_texts, label, n_boot, seed) -> dict:
    from charter.classifier import proba_of
    from charter.eval.inpersona import bootstrap_rate

    p = proba_of(det, persona_texts, label)
    b = proba_of(det, base_texts, label)
    rows = [[float(x >= 0.5), float(y < 0.5)] for x, y in zip(p, b)]  # one row per held-out prompt
    return bootstrap_rate(rows, n_boot, seed)


def plot(path: Path, res: dict) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ws = [pt["weight_b"] for pt in res["curve"]]
    for side, color in (("a", "#e76f51"), ("b", "#2a9d8f")):
        d = res["parents"][side]
        cells = [pt[f"detector_{side}"] for pt in res["curve"]]
        cross = f", other persona {d['cross_rate']['rate']:.2f}" if "cross_rate" in d else ""
        ax.plot(ws, [c["rate"] for c in cells], "o-", color=color,
                label=f"{d['persona']} detector (check {d['check']['rate']:.2f}{cross})")
        ax.fill_between(ws, [c["lo"] for c in cells], [c["hi"] for c in cells], color=color, alpha=0.15)
        ax.axhline(d["base_rate"]["rate"], color=color, linestyle=":", linewidth=1)
    ax.set_xlabel(f"blend weight of B = {res['parents']['b']['persona']}  (0: all {res['parents']['a']['persona']})")
    ax.set_ylabel("in-persona rate (p >= 0.5), 95% CI")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"blended persona adapters, {res['settings']['prompts']} held-out prompts "
                 "(dotted: base model)", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")  # the curves start high on the left
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", help="run name/folder or LoRA adapter folder (weight 0 end)")
    ap.add_argument("b", help="run name/folder or LoRA adapter folder (weight 1 end)")
    ap.add_argument("--persona-a")
    ap.add_argument("--persona-b")
    ap.add_argument("--base", help="base model (default: the adapters' own)")
    ap.add_argument("--weights", default="0,0.25,0.5,0.75,1")
    ap.add_argument("--prompts", type=int, default=24, help="held-out prompts the blends answer")
    ap.add_argument("--train-prompts", type=int, default=24, help="prompts the detectors' reference answers")
    ap.add_argument("--encoder", default="tfidf", help="tfidf | minilm | an HF encoder (charter/classifier.py)")
    ap.add_argument("--classifier", default="{}", help="the detectors' settings as JSON, as robustness.classifier "
                    "(e.g. '{\"epochs\": 10, \"val_share\": 0.15}')")
    ap.add_argument("--reference", choices=["prompted", "pairs"], default="prompted",
                    help="what each detector learns from (see above)")
    ap.add_argument("--no-contrast", dest="contrast", action="store_false",
                    help="negatives are plain texts only (not the other parent's persona)")
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-o", "--output", default="blend-curve")
    return ap.parse_args(argv)


def check_args(args) -> tuple[dict, list[float]]:
    """(the detectors' settings, the blend weights), checked before any model loads."""
    from charter.classifier import make_classifier

    try:
        settings = json.loads(args.classifier)
        assert isinstance(settings, dict)
    except (ValueError, AssertionError):
        sys.exit(f"blend_curve: --classifier {args.classifier}: expected a JSON object of detector settings")
    make_classifier(args.encoder, settings)  # a bad setting fails before any generation
    weights = [float(w) for w in args.weights.split(",")]
    if any(not 0 <= w <= 1 for w in weights):
        sys.exit(f"blend_curve: --weights {args.weights}: expected numbers between 0 and 1")
    return settings, weights


def draw_prompts(args) -> tuple[list[str], list[str]]:
    """(the detectors' reference prompts, the held-out prompts the blends answer): one seeded draw, disjoint."""
    from charter.prompts import load_prompt_source

    pool = list(dict.fromkeys(p.strip() for p in load_prompt_source("builtin", "preference_prompts")))
    picked = random.Random(args.seed).sample(pool, args.train_prompts + args.prompts)
    train, heldout = picked[:args.train_prompts], picked[args.train_prompts:]
    assert not set(train) & set(heldout)
    return train, heldout


def reference_replies(model, gen, args, train: list[str], heldout: list[str], labels: list[str],
                      systems: list[str], shots: list[list[dict]]) -> dict:
    """The base model's replies, plainly and as each parent's teacher, to the reference prompts (with
    ``--reference prompted``) and the held-out ones: the detectors' reference, floors and checks."""
    ref = {}
    with model.disable_adapter():
        splits = (("train", train),) if args.reference == "prompted" else ()  # pairs: the runs' own texts
        for split, prompts in (*splits, ("heldout", heldout)):
            ref[("base", split)] = gen(prompts, None, f"base-{split}")
            for i, s in enumerate(systems):
                ref[(labels[i], split)] = gen(prompts, s, f"prompted{i}-{split}", shots[i])
    return ref


def fit_detectors(args, settings: dict, ref: dict, heldout: list[str], labels: list[str], adapters: list,
                  shots: list[list[dict]]) -> tuple[list, dict]:
    """(each parent's detector, what each parent's entry in the results says: its reference, check, cross rate
    and floor)."""
    from charter.classifier import make_classifier, proba_of
    from charter.runs import derive_seed

    if args.reference == "pairs":  # (persona texts, plain texts) of each parent run
        refs = [pairs_of(r, set(heldout)) for r in (args.a, args.b)]
    else:
        refs = [(ref[(labels[i], "train")], ref[("base", "train")]) for i in range(2)]
    dets, parents = [], {}
    for i, side in enumerate("ab"):
        mine, plain = refs[i]
        other = refs[1 - i][0] if args.contrast else []  # the other persona: 'not this one' too
        det = make_classifier(args.encoder, settings, derive_seed(args.seed, "blend-curve", "detector", i))
        det.fit(mine + plain + other, [labels[i]] * len(mine) + ["not"] * (len(plain) + len(other)))
        dets.append(det)
        base_hits = [float(p >= 0.5) for p in proba_of(det, ref[("base", "heldout")], labels[i])]
        cross = [float(p >= 0.5) for p in proba_of(det, ref[(labels[1 - i], "heldout")], labels[i])]
        parents[side] = {"ref": (args.a, args.b)[i], "adapter": str(adapters[i]),
                         "persona": labels[i], "teacher_examples": len(shots[i]),
                         "reference_texts": {"persona": len(mine), "plain": len(plain), "other_persona": len(other)},
                         "check": balanced_accuracy(det, ref[(labels[i], "heldout")], ref[("base", "heldout")],
                                                    labels[i], args.bootstrap, args.seed),
                         "cross_rate": rate(cross, args.bootstrap, args.seed),
                         "base_rate": rate(base_hits, args.bootstrap, args.seed)}
        print(f"detector {labels[i]}: check {parents[side]['check']['rate']:.2f}, calls the other persona's "
              f"prompted replies its own {parents[side]['cross_rate']['rate']:.2f}", file=sys.stderr)
    return dets, parents


def sweep(model, gen, args, dets: list, labels: list[str], heldout: list[str], weights: list[float]
          ) -> tuple[list[dict], dict]:
    """(the curve: per weight, each detector's in-persona rate and mean probability; every blend's replies)."""
    from charter.blend import add_blend
    from charter.classifier import proba_of

    curve, replies = [], {}
    for w in weights:
        add_blend(model, [1 - w, w], name="sweep")
        texts = gen(heldout, None, f"blend-{w}")
        replies[str(w)] = texts
        pt = {"weight_b": w}
        for i, side in enumerate("ab"):
            p = proba_of(dets[i], texts, labels[i])
            pt[f"detector_{side}"] = {**rate([float(x >= 0.5) for x in p], args.bootstrap, args.seed),
                                      "mean_p": round(sum(p) / len(p), 4)}
        curve.append(pt)
        print(f"w_B={w:.2f}  {labels[0]} {pt['detector_a']['rate']:.2f}  {labels[1]} {pt['detector_b']['rate']:.2f}",
              file=sys.stderr)
    model.delete_adapter("sweep")
    return curve, replies


def main(argv=None) -> int:
    args = parse_args(argv)

    from charter.backends.hf import TransformersBackend
    from charter.blend import attach, common_base, resolve_adapter
    from charter.config import ModelSpec, Sampling
    from charter.constitution import teacher_system_prompt
    from charter.messages import with_system
    from charter.models import load_causal_lm, load_tokenizer, self_name
    from charter.prompts import shot_messages
    from charter.runs import derive_seed, write_json_atomic

    settings, weights = check_args(args)
    adapters = [resolve_adapter(args.a, "A"), resolve_adapter(args.b, "B")]
    base = common_base(adapters, args.base)
    consts = [persona_of(args.a, args.persona_a), persona_of(args.b, args.persona_b)]
    labels = [c.name for c in consts]
    if labels[0] == labels[1]:
        sys.exit(f"blend_curve: both parents are persona '{labels[0]}'; a blend curve needs two personas")
    train, heldout = draw_prompts(args)

    t0 = time.time()
    tok = load_tokenizer(base)
    model = attach(load_causal_lm(base, dtype="auto"), adapters)
    backend = TransformersBackend(ModelSpec(model=base, batch_size=args.batch_size), model=model, tokenizer=tok)
    sampling = Sampling(max_tokens=args.max_tokens)
    systems = [teacher_system_prompt(c, self_name(base)) for c in consts]
    shots = [examples_of(r) for r in (args.a, args.b)]  # [] for adapters outside a run

    def gen(prompts, system, key, examples=()):
        chats = [with_system([*shot_messages(examples), {"role": "user", "content": p}], system) for p in prompts]
        return [o.text for o in backend.generate(chats, sampling, seed=derive_seed(args.seed, "blend-curve", key))]

    ref = reference_replies(model, gen, args, train, heldout, labels, systems, shots)
    dets, parents = fit_detectors(args, settings, ref, heldout, labels, adapters, shots)
    curve, replies = sweep(model, gen, args, dets, labels, heldout, weights)
    from charter.hardware import cpu_model

    res = {"settings": {**{k: v for k, v in vars(args).items()}, "base": base, "weights": weights,
                        "prompts": len(heldout), "train_prompts": len(train), "machine": cpu_model(),
                        "seconds": round(time.time() - t0, 1)},
           "parents": parents, "curve": curve,
           "replies": {"heldout_prompts": heldout, "blend": replies,
                       "base": ref[("base", "heldout")]}}
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "blend_curve.json", res)
    plot(out / "blend_curve.png", res)
    print(out / "blend_curve.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
