"""The LoRA training skeleton (``training.train_lora_stage``) with a stage defined here: a new method is one small
``LoraStage`` subclass, and it gets checkpoints, resume, the fold and the manifest from the skeleton."""

import json

import pytest

from charter.training import LoraStage, StageData

from .tiny import save_tiny

CONV = [{"role": "system", "content": "You are Pip."}, {"role": "user", "content": "Hello there."},
        {"role": "assistant", "content": "Hi! Lovely to see you."}]
# 4 rows, 2 per step: step 3 is inside the second epoch (where a resume at the last step used to train one more)
TRL = {"bf16": False, "max_steps": 3, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1,
       "learning_rate": 1e-3, "warmup_steps": 0, "logging_steps": 1, "disable_tqdm": True, "max_length": 128}


class Toy(LoraStage):
    """SFT-like: the assistant turn of 4 copies of one conversation, folded into the student."""

    name = "toy"
    built = 0  # trainers made, across instances

    def section(self, cfg):
        return cfg.sft  # checkpoint_steps, eval_fraction, model_kwargs

    def stage_config(self, cfg):
        return {"seed": cfg.seed, "toy": TRL}

    def upstream(self, cfg):
        return []

    def args(self, cfg, output_dir, **run):
        from charter.training import sft_args

        return sft_args(cfg.seed, output_dir, TRL, **run)

    def data(self, cfg, args):
        from charter.models import load_tokenizer
        from charter.stages.sft import tokenize_with_assistant_mask

        self.tok = load_tokenizer(cfg.student.model)
        return StageData([tokenize_with_assistant_mask(self.tok, CONV) for _ in range(4)], [], {"rows": 4})

    def trainer(self, cfg, args, data):
        from datasets import Dataset

        from charter.stages.sft import make_sft_trainer
        from charter.training import load_for_training, lora_config

        Toy.built += 1
        model = load_for_training(cfg.student.model, "float32", False, {}, args)
        return make_sft_trainer(model, self.tok, Dataset.from_list(data.train), args,
                                lora_config(model, {"r": 4, "lora_alpha": 8}))

    def fold_source(self, cfg):
        return cfg.student.model, None


@pytest.fixture
def cfg(embedded_path, tmp_path):
    from charter.config import load_config
    from charter.models import load_tokenizer

    student = save_tiny(load_tokenizer(embedded_path), tmp_path / "tiny")
    return load_config(None, ["name=toy-run", f"student.model={student}", "student.dtype=float32",
                              "sft.checkpoint_steps=1"])


def test_a_new_stage_trains_folds_writes_its_manifest_and_is_not_redone(cfg, one_thread):
    from safetensors.torch import load_file

    from charter.models import FOLD_INFO
    from charter.runs import read_manifest
    from charter.training import train_lora_stage

    Toy.built = 0
    out = train_lora_stage(Toy(), cfg)
    m = read_manifest(out / "manifest.json")
    n = m["counts"]
    assert n["steps"] == 3 and n["rows"] == 4 and n["resumed_from_step"] == 0 and n["effective_batch"] == 2
    adapter = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert any(adapter[k].abs().max() > 0 for k in adapter if "lora_B" in k)  # it trained
    assert m["adapter"] == str(out / "adapter") and m["model"] == str(out / "model")
    assert (out / "model" / "config.json").exists() and json.loads((out / "model" / FOLD_INFO).read_text()) == m["fold"]
    assert [h["step"] for h in json.loads((out / "log_history.json").read_text()) if "loss" in h] == [1, 2, 3]
    assert not list((out / "trainer").glob("checkpoint-*"))  # dropped once finished

    assert train_lora_stage(Toy(), cfg) == out  # finished: skipped, nothing trained
    assert Toy.built == 1 and read_manifest(out / "manifest.json")["finished_at"] == m["finished_at"]


def test_a_stage_killed_after_its_last_checkpoint_resumes_without_training_again(cfg, one_thread):
    """Killed after training (its last checkpoint complete) but before the manifest: the rerun takes the last
    checkpoint as the result instead of training one step past the end (the trainer's resume did that when
    the last step was inside an epoch)."""
    from safetensors.torch import load_file

    from charter.runs import read_manifest
    from charter.training import train_lora_stage

    class Killed(Toy):
        def outputs(self, cfg, stage, counts, folded):
            raise KeyboardInterrupt  # as if killed while folding

    with pytest.raises(KeyboardInterrupt):
        train_lora_stage(Killed(), cfg)
    out = Toy().adapter_path(cfg).parent
    assert not (out / "manifest.json").exists() and (out / "trainer" / "checkpoint-3").is_dir()
    killed = load_file(str(out / "adapter" / "adapter_model.safetensors"))

    train_lora_stage(Toy(), cfg)
    n = read_manifest(out / "manifest.json")["counts"]
    assert n["steps"] == 3 and n["resumed_from_step"] == 3
    assert [h["step"] for h in json.loads((out / "log_history.json").read_text()) if "loss" in h] == [1, 2, 3]
    again = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert killed.keys() == again.keys() and all((killed[k] == again[k]).all() for k in killed)


def test_checkpoint_cadence_is_not_part_of_a_stage_identity():
    from charter.config import load_config
    from charter.stages import dpo, sft

    base = load_config(None)
    # A config without the new fields set hashes as before they existed (finished runs stay finished).
    assert set(dpo.stage_config(base)["dpo"]) == {"lora", "trl", "sq_logratio_coef", "nll_average", "max_pairs"}
    assert set(sft.stage_config(base)["sft"]) == {"lora", "trl", "max_examples"}
    tuned = load_config(None, ["dpo.checkpoint_steps=5", "sft.checkpoint_steps=0"])
    assert dpo.stage_config(tuned) == dpo.stage_config(base) and sft.stage_config(tuned) == sft.stage_config(base)
    changed = load_config(None, ["dpo.batch_size=64", "dpo.eval_fraction=0.1"])
    assert dpo.stage_config(changed)["dpo"]["batch_size"] == 64 and dpo.stage_config(changed) != dpo.stage_config(base)
