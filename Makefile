# Two entry points: `make demo` (the per-sample-gradient benchmark) and `make test`.
# Both set everything up first: dependencies, then the C++ extension (incremental with ninja).
PYTHON ?= python3
PIP := $(PYTHON) -m pip install -q --disable-pip-version-check

.PHONY: deps build demo test bench fuzz

deps:
	$(PIP) "torch==2.13.0" "setuptools>=70" wheel ninja expecttest pytest hypothesis matplotlib

build: deps
	$(PYTHON) setup.py -q build_ext --inplace -j 2

demo: build
	cd benchmarks && $(PYTHON) per_sample_grads.py --repeats 10

test: build
	$(PYTHON) -m pytest test

bench: build
	cd benchmarks && for b in *.py; do case $$b in common.py|record_output.py) ;; *) $(PYTHON) $$b || exit 1;; esac; done

# The composition fuzzer, nightly-sized: fresh random programs (FUZZ_EXAMPLES, default 10,000).
fuzz: build
	cd test && FUZZ_RANDOM=1 FUZZ_KEEP_GOING=1 FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-10000} \
		$(PYTHON) -m pytest -q -s test_fuzz_compositions.py -k "random_compositions or summary"
