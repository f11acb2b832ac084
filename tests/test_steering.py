"""Activation steering: layers found, hooks confined to the chosen layers and removed, directions, the sweep rule."""

import json

import pytest
import torch

from charter.backends.hf import TransformersBackend
from charter.config import ModelSpec, Sampling, load_config
from charter.eval import steering as st
from charter.runs import run_dir
from tests.tiny import save_tiny, tiny_model



# One torch thread for these tests (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="module")
def tok(embedded_path):
    from charter.models import load_tokenizer

    return load_tokenizer(embedded_path)


def hidden(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, output_hidden_states=True).hidden_states


def unit(size, seed):
    v = torch.randn(size, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


def hooks(model):
    """Every forward hook on the model (transformers adds its own output recorders once, and keeps them)."""
    return {(name, k) for name, m in model.named_modules() for k in m._forward_hooks}


@pytest.mark.parametrize("n,expected", [(32, (4, 28)), (28, (3, 24)), (34, (4, 29)), (30, (3, 26))])
def test_layer_range_is_the_references_middle(n, expected):
    assert st.layer_range(n) == list(range(*expected))


def test_layer_range_never_empty():
    assert st.layer_range(1) == [0] and st.layer_range(2) == [0]
    assert st.layer_range(8, [0.5, 0.75]) == [4, 5]


def test_decoder_layers_found_or_a_clear_error(tok):
    assert len(st.decoder_layers(tiny_model(tok, layers=3))) == 3
    with pytest.raises(ValueError, match="cannot find the decoder layers of Linear"):
        st.decoder_layers(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("chosen", [[1, 2], [2]])
def test_steering_changes_hidden_states_only_from_the_chosen_layers(tok, chosen):
    model = tiny_model(tok, layers=4).eval()
    ids = torch.tensor([[1, 20, 300, 4000, 50]])
    before = hidden(model, ids)
    installed = hooks(model)  # [embeddings, layer 0, layer 1, layer 2, final norm(layer 3)]
    vector = {i: unit(64, i) for i in chosen}
    norms = {i: 2.0 + i for i in chosen}
    with st.steer(model, vector, 0.5, norms):
        steered = hidden(model, ids)
    first = chosen[0]
    for k in range(first + 1):  # the embeddings and every layer before the first steered one: untouched
        assert torch.equal(before[k], steered[k]), k
    # The first steered layer's input is unchanged, so its output moves by exactly the added vector,
    # at every position.
    delta = steered[first + 1] - before[first + 1]
    assert torch.allclose(delta, (0.5 * norms[first] * vector[first]).expand_as(delta), atol=1e-5)
    for i in chosen:
        assert not torch.allclose(before[i + 1], steered[i + 1])
    # Hooks gone: the model is exactly as before.
    assert hooks(model) == installed
    after = hidden(model, ids)
    assert all(torch.equal(a, b) for a, b in zip(before, after))


def test_hooks_removed_even_on_error(tok):
    model = tiny_model(tok, layers=2)
    with pytest.raises(RuntimeError, match="boom"):
        with st.steer(model, {0: unit(64, 0)}, 1.0, {0: 1.0}):
            assert len(hooks(model)) == 1
            raise RuntimeError("boom")
    assert hooks(model) == set()


def test_steer_rejects_a_vector_from_another_model(tok):
    model = tiny_model(tok, layers=2)
    with pytest.raises(ValueError, match="hidden size is 64"):
        with st.steer(model, {0: unit(32, 0)}, 1.0, {0: 1.0}):
            pass
    with pytest.raises(ValueError, match="out of range"):
        with st.steer(model, {5: unit(64, 0)}, 1.0, {5: 1.0}):
            pass
    assert hooks(model) == set()


def test_steered_backend_steers_only_inside_generate(tok, tmp_path):
    model = tiny_model(tok, layers=4).eval()
    inner = TransformersBackend(ModelSpec(model=str(tmp_path), dtype="float32"), model=model, tokenizer=tok)
    chats = [[{"role": "user", "content": "Tell me about the sea."}], [{"role": "user", "content": "Hi"}]]
    greedy = Sampling(temperature=0, repetition_penalty=1.0, max_tokens=8)
    plain = inner.generate(chats, greedy)
    steered = st.SteeredBackend(inner, {i: unit(64, i) for i in (1, 2)}, 8.0, {1: 1.0, 2: 1.0})
    assert [c.text for c in steered.generate(chats, greedy)] != [c.text for c in plain]
    assert hooks(model) == set()
    assert [c.text for c in inner.generate(chats, greedy)] == [c.text for c in plain]


def test_direction_is_unit_and_points_at_the_persona_side():
    g = torch.Generator().manual_seed(0)
    neg = {3: torch.randn(40, 8, generator=g)}
    shift = torch.zeros(8)
    shift[2] = 3.0
    pos = {3: neg[3] + shift + 0.1 * torch.randn(40, 8, generator=g)}
    for method in ("mean_diff", "pca"):
        v = st.direction_from_states(pos, neg, method)[3]
        assert abs(float(v.norm()) - 1) < 1e-5
        assert float(v[2]) > 0.99  # along the shift, with the positive sign
        assert float(((pos[3] - neg[3]) @ v).mean()) > 0
        # Swapping the sides flips the direction (the sign is not left to the SVD).
        assert torch.allclose(st.direction_from_states(neg, pos, method)[3], -v, atol=1e-5)
    with pytest.raises(ValueError, match="unchanged"):
        st.direction_from_states(neg, neg)
    with pytest.raises(ValueError, match="mean_diff or pca"):
        st.direction_from_states(pos, neg, "ica")
    assert st.mean_norms({0: torch.full((2, 4), 1.0)}, {0: torch.full((2, 4), 2.0)}) == {0: 3.0}


def test_contrast_direction_on_a_tiny_model(tok):
    model = tiny_model(tok, layers=4).eval()
    stems = st.load_stems(5)
    assert stems[0] == "" and len(stems) == 5 and len(st.load_stems()) >= 80
    pos, neg = st.contrast_states(model, tok, "You are a pirate who loves the sea.", stems, [1, 2])
    assert pos[1].shape == neg[2].shape == (5, 64)
    assert not torch.allclose(pos[1], neg[1])
    d = st.contrast_direction(model, tok, "You are a pirate who loves the sea.", stems, "pca", [1, 2])
    assert sorted(d) == [1, 2] and all(abs(float(v.norm()) - 1) < 1e-5 for v in d.values())


def row(c, lp, rep=0.05, empty=0.0):
    return {"coefficient": c, "logprob": lp, "repetition": rep, "empty": empty, "n": 8}


def test_sweep_picks_the_strongest_coefficient_before_the_first_failure():
    base = row(0.0, -2.0)
    sweep = [row(4.0, -2.1), row(0.5, -2.3), row(2.0, -3.5), row(1.0, -2.9)]  # 4.0 passes by luck after 2.0 fails
    assert st.pick_coefficient(sweep, base) == (1.0, True)
    assert st.pick_coefficient([row(0.5, -2.2), row(1.0, -2.4)], base) == (1.0, True)
    # Repetition or empty replies fail a setting even when its likelihood is fine (loops are likely text).
    assert st.pick_coefficient([row(0.5, -1.0, rep=0.3), row(1.0, -2.0)], base) == (0.5, False)
    assert st.pick_coefficient([row(0.5, -2.0), row(1.0, -2.0, empty=0.5)], base) == (0.5, True)
    assert st.pick_coefficient([row(0.5, None, empty=1.0)], base) == (0.5, False)
    assert st.within_tolerance(row(1, base["logprob"] - st.LOGPROB_TOLERANCE), base)


@pytest.mark.slow  # the evaluation's real end-to-end run (minutes on 2 cores); CI runs it
def test_fit_sweeps_saves_a_vector_and_loads_a_steered_backend(embedded_path):
    cfg = load_config(None, ["name=steer-test", f"student.model={embedded_path}", "steering.stems=4",
                             "steering.coefficients=[1.0, 0.005]", "steering.sweep_prompts=2",
                             "steering.max_tokens=12"])
    lines = []
    out = st.fit(cfg, report=lines.append)
    assert out == run_dir("steer-test") / st.STAGE and (out / "manifest.json").exists()
    meta = json.loads((out / "steering.json").read_text())
    assert meta["layers"] == list(range(3, 26)) and meta["n_layers"] == 30 and meta["chosen_by"] == "sweep"
    assert set(meta["norms"]) == {str(i) for i in range(3, 26)} and all(v > 1 for v in meta["norms"].values())
    # A whole residual norm per layer wrecks SmolLM2's replies; 0.005 leaves them as they were.
    assert [(r["coefficient"], r["within_tolerance"]) for r in meta["sweep"]] == [(0.005, True), (1.0, False)]
    assert meta["coefficient"] == 0.005 and meta["within_tolerance"] is True
    assert len((out / "sweep.jsonl").read_text().splitlines()) == 6
    vec = st.load_vector(out / "vector.safetensors")
    assert list(vec) == meta["layers"] and all(abs(float(v.norm()) - 1) < 1e-5 for v in vec.values())
    backend = st.load_steered_backend(cfg)
    assert backend.coefficient == 0.005 and backend.norms[3] == pytest.approx(meta["norms"]["3"])
    assert len(backend.generate([[{"role": "user", "content": "Hi"}]], Sampling(max_tokens=4))) == 1
    assert hooks(backend.model) == set()
    backend.close()
    st.fit(cfg, report=lines.append)
    assert "already done" in lines[-1]


def test_fixed_coefficient_skips_the_sweep(tok, tmp_path):
    path = save_tiny(tok, tmp_path / "tiny")
    cfg = load_config(None, ["name=steer-fixed", f"student.model={path}", "student.dtype=float32",
                             "steering.stems=3", "steering.coefficient=0.25", "steering.method=pca"])
    out = st.fit(cfg, report=lambda line: None)
    meta = json.loads((out / "steering.json").read_text())
    assert meta["coefficient"] == 0.25 and meta["chosen_by"] == "config" and meta["sweep"] == []
    assert not (out / "sweep.jsonl").exists()


def test_no_steering_vector_is_a_clear_error():
    with pytest.raises(RuntimeError, match="charter eval steering"):
        st.load_steered_backend(load_config(None, ["name=nothing-here"]))
