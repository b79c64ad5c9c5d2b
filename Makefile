# Two commands on a fresh machine:  `make demo` (train the embedded default)  and  `make test`.
# The venv pins the CPU build of torch; on a GPU cluster install your own torch, then `pip install -e .`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PIN ?= torch==2.13.0

.PHONY: demo test install

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PIN)
	$(BIN)/python -m pip uninstall -q -y mlip 2>/dev/null || true  # this venv's install from before the rename to mlip-forge
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/mlip-train

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q tests
