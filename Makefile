# Every target creates .venv on first use and installs the package with its dev extras.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench soak clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/verydeep demo

# The OpenVINO engine's tests (marker openvino) run second; the rest run `auto` on PyTorch (tests/conftest.py),
# spread over two pytest-xdist workers (each test keeps torch to one thread; 174 s against 277 s on 2 cores).
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 -m "not openvino"
	$(BIN)/python -m pytest -q -m openvino tests/test_openvino_engine.py tests/test_localize_cli.py

bench: $(STAMP)
	$(BIN)/verydeep bench --device cpu

# Kill-and-resume soak of a small training run (about a minute; not part of `make test`).
soak: $(STAMP)
	$(BIN)/python benchmarks/soak.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
