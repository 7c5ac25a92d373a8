# Convenience targets; README gives the same commands in full.
.PHONY: setup test run bench
setup:
	python3 -m venv .venv && .venv/bin/pip install -e '.[test]'
test: setup
	.venv/bin/pytest
run: setup
	.venv/bin/vqgen run --out runs/demo
bench: setup
	.venv/bin/python -m bench
