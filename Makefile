# The two README commands: `make demo` (run the pipeline) and `make test` (check everything).
# Both set up .venv from nothing: only Python 3.11 and pip are needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PRESET ?= default
# One torch thread per process and passive OpenMP waits: with two notebooks or a test beside
# a training on 2 cores, spinning OpenMP threads make everything ~10x slower (DESIGN.md).
export OMP_WAIT_POLICY := PASSIVE

.PHONY: install demo test check-sync nbtest pytest readme clean-runs

$(STAMP): settings.ini setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0   # the CPU wheel; an unpinned torch pulls GBs of CUDA
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/echoflow run --preset $(PRESET) --out runs/$(PRESET)

# nbdev_clean and nbdev_export must not change anything that is checked in.
check-sync: install
	@before=$$(git status --porcelain -- nbs echoflow index.ipynb; git diff -- nbs echoflow index.ipynb | sha1sum); \
	$(BIN)/nbdev_clean && $(BIN)/nbdev_export; \
	after=$$(git status --porcelain -- nbs echoflow index.ipynb; git diff -- nbs echoflow index.ipynb | sha1sum); \
	if [ "$$before" != "$$after" ]; then echo "nbdev_clean/nbdev_export changed files: run them and commit"; git status --short; exit 1; fi

nbtest: install
	OMP_NUM_THREADS=1 $(BIN)/nbdev_test --n_workers 2 --timing

pytest: install
	OMP_NUM_THREADS=1 $(BIN)/pytest -q -p no:cacheprovider tests

test: check-sync nbtest pytest

readme: install
	$(BIN)/jupyter nbconvert --to markdown --log-level WARN index.ipynb --output README

clean-runs:
	rm -rf runs
