# make demo: install, then run the whole pipeline on the embedded model and chat with the result.
# make test: install, then run the test suite except the `slow` tests (whole-stage runs; under 20 min on 2 cores).
# make test-slow: the `slow` tests: end-to-end pipeline and evaluations, 2-process launch, kill/resume, RL, drafting (CI runs both).
.PHONY: setup demo test test-slow bench

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/charter train configs/demo.yaml
	.venv/bin/charter chat demo -m "Hello! Who are you, and what do you care about?" --max-tokens 120

test: setup
	.venv/bin/python -m pytest -q -m "not slow"

test-slow: setup
	.venv/bin/python -m pytest -q -m slow

bench: setup
	.venv/bin/python benchmarks/generation.py
	.venv/bin/python benchmarks/training.py
