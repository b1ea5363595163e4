# The README's two commands, `make demo` and `make test`, on a fresh clone with Python 3.11 and make.
# Everything lives in a project-local virtual environment, one per torch version
# (.venv/torch-$(TORCH)/): nothing outside the clone is needed or touched. The extension is built
# in place (ninja, incremental, one build folder per torch version) and the venv imports the
# package from this folder, so every script in benchmarks/ and docs/ runs from anywhere.
PYTHON ?= python3
TORCH ?= 2.13.0
VENV := .venv/torch-$(TORCH)
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check
DEPS := "torch==$(TORCH)" "setuptools>=70" wheel ninja numpy expecttest pytest hypothesis matplotlib opacus

.PHONY: deps build demo demo-smoke test bench fuzz

$(VENV)/.deps-installed: Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) $(DEPS)
	$(PY) -c "import os, sysconfig; open(os.path.join(sysconfig.get_paths()['purelib'], 'functorch_lite.pth'), 'w').write(os.getcwd() + '\n')"
	touch $@

deps: $(VENV)/.deps-installed

# --force relinks on every call: the in-place library is shared by the torch versions, so it
# must be rebuilt for the one selected; ninja recompiles only what changed.
build: deps
	$(PY) setup.py -q build_ext --inplace --force --build-temp build/torch-$(TORCH) -j 2

demo: build
	$(PY) benchmarks/per_sample_grads.py --repeats 10

# The demo in a few seconds: agreement checks and two timed rounds (CI runs it).
demo-smoke: build
	$(PY) benchmarks/per_sample_grads.py --repeats 2 --rss-steps 0

test: build
	$(PY) -m pytest test

bench: build
	cd benchmarks && for b in *.py; do case $$b in common.py|record_output.py|workloads.py) ;; *) ../$(PY) $$b || exit 1;; esac; done

# The composition fuzzer, nightly-sized: fresh random programs (FUZZ_EXAMPLES, default 10,000).
fuzz: build
	cd test && FUZZ_RANDOM=1 FUZZ_KEEP_GOING=1 FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-10000} \
		../$(PY) -m pytest -q -s test_fuzz_compositions.py -k "random_compositions or summary"
