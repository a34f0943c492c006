# The two commands of this project: `make run` (the main job) and `make test` (the test suite).
# Both create .venv on first use and reinstall when setup.cfg changes.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The real CIFAR-10 beside the project when it is there, else $FASTCIFAR_DATA / ~/.cache/fastcifar.
DATA ?= $(firstword $(wildcard ../shared/cifar10) $(FASTCIFAR_DATA) $(HOME)/.cache/fastcifar)
PYTEST_ARGS ?=

.PHONY: run test install clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -e '.[demo,test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/fastcifar data --data-dir $(DATA)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
