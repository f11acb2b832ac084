# make demo: install, then run the whole pipeline on the embedded model and chat with the result.
# make test: install, then run the test suite.
.PHONY: setup demo test bench

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/charter train configs/demo.yaml
	.venv/bin/charter chat demo -m "Hello! Who are you, and what do you care about?" --max-tokens 120

test: setup
	.venv/bin/python -m pytest -q

bench: setup
	.venv/bin/python benchmarks/generation.py
	.venv/bin/python benchmarks/training.py
