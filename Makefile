# Two commands on a fresh machine:  `make demo` (train the embedded default)  and  `make test`.
# The venv pins the CPU build of torch; on a GPU cluster install your own torch, then `pip install -e .`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PIN ?= torch==2.13.0

.PHONY: demo test install

# --no-compile: bytecode is written on first import instead, for the modules a run uses (torch alone
# has thousands of sources; compiling them all took ~20 s of the first `make demo` on 2 cores)
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --no-compile --upgrade pip
	$(BIN)/python -m pip install -q --no-compile $(TORCH_PIN)
	$(BIN)/python -m pip uninstall -q -y mlip 2>/dev/null || true  # this venv's install from before the rename to mlip-forge
	$(BIN)/python -m pip install -q --no-compile -e ".[test]"
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/mlip-train

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q tests
