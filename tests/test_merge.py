"""Folding and exporting: the folded model equals base + adapters; the persona adapter reproduces it."""

import pytest
import torch

from charter.models import fold_adapter, load_causal_lm, load_tokenizer
from charter.models import persona_adapter
from charter.blend import blend_models as blend

from .tiny import save_tiny


def _random_adapter(base_dir, out, seed):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = load_causal_lm(base_dir, dtype="float32", device="cpu")
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    peft = get_peft_model(model, cfg)
    with torch.no_grad():  # make the deltas large enough that a wrong merge would show
        for n, p in peft.named_parameters():
            if "lora_" in n:
                p.mul_(3.0)
    peft.save_pretrained(out)
    return str(out)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


@pytest.fixture(scope="module")
def chain(embedded_path, tmp_path_factory):
    d = tmp_path_factory.mktemp("merge")
    tok = load_tokenizer(embedded_path)
    base = save_tiny(tok, d / "base")
    a1 = _random_adapter(base, d / "dpo-adapter", 1)
    distilled = fold_adapter(base, a1, d / "distilled", "float32", tokenizer_from=base)
    a2 = _random_adapter(str(distilled), d / "sft-adapter", 2)
    final = fold_adapter(str(distilled), a2, d / "final", "float32", tokenizer_from=distilled)
    ids = torch.tensor([tok("Hello there, how are you today?").input_ids])
    return {"base": base, "a1": a1, "a2": a2, "distilled": str(distilled), "final": str(final), "ids": ids, "d": d}


def test_folded_model_matches_base_plus_adapters(chain):
    from peft import PeftModel

    ids = chain["ids"]
    stacked = PeftModel.from_pretrained(load_causal_lm(chain["distilled"], dtype="float32", device="cpu"), chain["a2"])
    final = load_causal_lm(chain["final"], dtype="float32", device="cpu")
    base = load_causal_lm(chain["base"], dtype="float32", device="cpu")
    assert (_logits(final, ids) - _logits(stacked, ids)).abs().max() < 1e-3
    assert (_logits(final, ids) - _logits(base, ids)).abs().max() > 1e-2  # the adapters did something


def test_persona_adapter_reproduces_the_folded_model(chain):
    out = persona_adapter(chain["base"], [chain["a1"], chain["a2"]], chain["d"] / "persona")
    model = load_causal_lm(chain["base"], adapter=str(out), dtype="float32", device="cpu")
    final = load_causal_lm(chain["final"], dtype="float32", device="cpu")
    ids = chain["ids"]
    assert (_logits(model, ids) - _logits(final, ids)).abs().max() < 1e-3


def test_blend_interpolates_weights(chain):
    out = blend(chain["base"], chain["final"], 0.25, str(chain["d"] / "blend"))
    a = load_causal_lm(chain["base"], dtype="float32", device="cpu").state_dict()
    b = load_causal_lm(chain["final"], dtype="float32", device="cpu").state_dict()
    m = load_causal_lm(out, dtype="float32", device="cpu").state_dict()
    k = "model.layers.0.self_attn.q_proj.weight"
    assert torch.allclose(m[k], 0.75 * a[k] + 0.25 * b[k], atol=1e-2)
    assert load_tokenizer(out) is not None
    with pytest.raises(ValueError, match="between 0 and 1"):
        blend(chain["base"], chain["final"], 1.5, str(chain["d"] / "x"))
