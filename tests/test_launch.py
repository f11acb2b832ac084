"""Multi-GPU launch configs parse, and the launched entry point is the ordinary CLI (same code path)."""

import subprocess
import sys
from pathlib import Path

import pytest

ACCEL = sorted((Path(__file__).parent.parent / "configs" / "accelerate").glob("*.yaml"))


@pytest.mark.parametrize("path", ACCEL, ids=[p.name for p in ACCEL])
def test_accelerate_configs_parse(path):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(path))
    assert cfg.distributed_type.value in ("DEEPSPEED", "FSDP")
    if cfg.distributed_type.value == "DEEPSPEED":
        assert cfg.deepspeed_config["zero_stage"] in (2, 3)
    # The header documents the launch line, and it targets the CLI module with a training stage.
    assert "accelerate launch --config_file configs/accelerate/" in path.read_text()
    assert "-m charter.cli dpo" in path.read_text() or "-m charter.cli sft" in path.read_text()


def test_accelerate_launch_runs_the_same_cli_single_process(tmp_path):
    """`accelerate launch -m charter.cli ...` on one CPU process reaches the same main() as `charter ...`."""
    r = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--cpu",
                        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                        "-m", "charter.cli", "constitution", "list"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    direct = subprocess.run([sys.executable, "-m", "charter.cli", "constitution", "list"], capture_output=True,
                            text=True, timeout=120)
    assert r.stdout == direct.stdout and "sarcastic" in r.stdout


def test_training_stages_share_one_trainer_factory():
    """dpo/sft stages train only through the one LoRA skeleton in charter.training, whatever the launcher, and
    each builds its trainer through its own factory."""
    import inspect

    from charter.stages import dpo, sft

    assert "train_lora_stage" in inspect.getsource(dpo.run)
    assert "train_lora_stage" in inspect.getsource(sft.run)
    assert "make_dpo_trainer" in inspect.getsource(dpo.DPOStage.trainer)
    assert "make_sft_trainer" in inspect.getsource(sft.SFTStage.trainer)
