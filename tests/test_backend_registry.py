"""The backend registry: one entry per backend, declared capabilities, one clear error when one is missing."""

import typing

import pytest

from charter import backends, cli, config
from charter.backends import BACKENDS, GENERATE, HIDDEN_STATES, SCORE_OPTIONS, capabilities, require
from charter.config import ModelSpec


def test_the_registry_and_the_config_type_name_the_same_backends():
    assert set(typing.get_args(config.Backend)) == set(BACKENDS)
    for name, info in BACKENDS.items():
        assert GENERATE in info.capabilities and info.packages and info.help
        assert info.capabilities <= set(backends.CAPABILITIES)


def test_an_unknown_backend_is_one_error_listing_the_known_ones():
    with pytest.raises(ValueError, match="backend 'nope': expected transformers, openai, vllm"):
        backends.make_backend(ModelSpec(model="embedded", backend="nope"))


def test_capabilities_of_names_specs_and_loaded_backends():
    assert capabilities("transformers") >= {GENERATE, SCORE_OPTIONS, HIDDEN_STATES}
    assert capabilities(ModelSpec(model="m", backend="openai")) == {GENERATE}

    class Scripted:  # a test's stand-in: it generates, nothing more
        name = "scripted"

    class Declares:
        name = "steered"
        capabilities = {GENERATE, HIDDEN_STATES}

    assert capabilities(Scripted()) == {GENERATE}
    assert capabilities(Declares()) == {GENERATE, HIDDEN_STATES}


def test_require_names_what_is_needed_and_which_backends_can():
    require("transformers", SCORE_OPTIONS, "x")
    with pytest.raises(ValueError) as e:
        require(ModelSpec(model="m", backend="openai"), SCORE_OPTIONS, "preferences.judge_mode=logprob")
    msg = str(e.value)
    assert msg.startswith("preferences.judge_mode=logprob needs a backend that can score fixed answers")
    assert "backend 'openai' cannot" in msg and "use backend: transformers" in msg


def test_a_logprob_judge_on_a_server_is_refused_before_any_work(capsys, charter_home):
    code = cli.main(["eval", "preferences", "configs/demo.yaml", "name=reg", "preferences.judge_mode=logprob",
                     "preferences.judge={backend: openai, model: judge, base_url: 'http://127.0.0.1:9/v1'}"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1, err
    assert "preferences.judge_mode=logprob needs a backend that can score" in err and "openai" in err
    assert not (charter_home / "runs" / "reg").exists()
