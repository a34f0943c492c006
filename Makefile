# The two commands of this project: `make run` (the main job) and `make test` (the test suite).
# Both create .venv on first use and reinstall when setup.cfg changes or DEVICE_EXTRA (below) names the other extra.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# CIFAR-10: $FASTCIFAR_DATA when set, else ~/.cache/fastcifar (`fastcifar data` downloads it there when missing).
DATA ?= $(or $(FASTCIFAR_DATA),$(HOME)/.cache/fastcifar)
# ONNX Runtime comes from one of two extras (setup.cfg), never both, as its two packages install the same module:
# gpu (onnxruntime-gpu, and DALI on Linux) when `nvidia-smi -L` lists a GPU, else cpu (onnxruntime).
# `make install DEVICE_EXTRA=cpu` chooses by hand.
ifndef DEVICE_EXTRA
DEVICE_EXTRA := $(if $(shell nvidia-smi -L 2>/dev/null | grep '^GPU'),gpu,cpu)
endif
ifneq ($(filter-out cpu gpu,$(DEVICE_EXTRA))$(words $(DEVICE_EXTRA)),1)
$(error DEVICE_EXTRA must be cpu or gpu, not '$(DEVICE_EXTRA)')
endif
# Which one the venv holds now ("gpucpu": both, a broken state): choosing the other one reinstalls even when
# setup.cfg did not change, and the switch first removes both packages - uninstalling one after the other was
# installed deletes files of the module they share.
INSTALLED_EXTRA := $(if $(wildcard $(VENV)/lib/python3*/site-packages/onnxruntime_gpu-*.dist-info),gpu)$(if \
	$(wildcard $(VENV)/lib/python3*/site-packages/onnxruntime-*.dist-info),cpu)
ifneq ($(INSTALLED_EXTRA),$(DEVICE_EXTRA))
.PHONY: $(STAMP)
endif
PYTEST_ARGS ?=
# `make test` runs on pytest-xdist workers, one per core (`logical`; TEST_WORKERS=0 runs in this one process), one
# test module per worker at a time (module fixtures are built once) in collection order: tests/conftest.py puts the
# longest modules first. Measured with bench/suite_time.py (bench/README.md, "Test suite time").
TEST_WORKERS ?= logical
# OpenMP threads sleep instead of spin-waiting for a busy core (an explicit OMP_WAIT_POLICY wins): on a shared
# machine the spinning made `make run` 14x slower; measured by bench/omp_wait_policy.py (bench/README.md).
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: run test install clean gpu-wheels

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(if $(filter-out $(DEVICE_EXTRA),$(INSTALLED_EXTRA)),$(BIN)/python -m pip uninstall -y -q onnxruntime onnxruntime-gpu)
	$(BIN)/python -m pip install -e '.[$(DEVICE_EXTRA),efficientnet,demo,serve,test,ray]'
	touch $(STAMP)

install: $(STAMP)

# `make run`: the project's question on this machine. The network (ARCH, default `auto`): ResNet-18 on a GPU where
# its ImageNet weights can be had (WEIGHTS=path, torch's hub cache or torchvision's download), else EfficientNet-Lite0
# with the real ImageNet weights installed with fastcifar (no network). GPU: the 10-epoch `seed` recipe, 3 seeds x
# 1 %/10 %/100 % of the data (18 runs). No GPU: the `smoke` preset, 2 seeds x 10 %/100 % of 10k images with the
# per-arm lr choice. BUDGET (minutes): the speed is measured first and the training pool shrinks to fit, saying so
# (BUDGET=0: the full size, however long). ARCH=resnet18 offline: the pretrained arm uses stand-in random weights and
# every output says so. Rerunning resumes.
# SEVERITIES: the corruption severities every final model is evaluated at. One (3) rather than compare's 1,3,5: on a
# 2-core CPU the 1,3,5 evaluation of 8 EfficientNet-Lite0 models took 6.3 of make run's 13.9 minutes and left 2,700
# training images; at 3 alone the pool grows (docs/compare.md, "make run").
WEIGHTS ?=
BUDGET ?= 15
ARCH ?= auto
SEVERITIES ?= 3
run: $(STAMP)
	$(BIN)/fastcifar data --data-dir $(DATA)
	$(BIN)/fastcifar compare --data-dir $(DATA) --arch $(ARCH) --no-compile --if-no-weights stand-in \
		--time-budget $(BUDGET) --robustness-severities $(SEVERITIES) $(if $(WEIGHTS),--pretrained-weights $(WEIGHTS))

test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

# What bench/gpu_check.sh needs on the borrowed GPU machine besides torch (Python 3.12 wheels, dependencies resolved,
# < 60 MiB, one carried path): docs/development.md, "Maintainers: the borrowed GPU check". ARGS=--dali also stages
# DALI in 60 MiB parts.
gpu-wheels: $(STAMP)
	$(BIN)/python bench/gpu_wheels.py $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
