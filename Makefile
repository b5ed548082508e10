# The course's commands. Each target creates .venv on first use (Python 3.11+ and make are all
# it needs). Override the interpreter with `make PYTHON=python3.11 ...`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: course test check lab bench lint help figures
# pytest on both cores, a test file a worker (a file's tests share its fixtures: one Ray instance, one browser),
# handed out in collection order (--no-loadscope-reorder; xdist's default is most tests first), which puts the
# notebooks and the files marked long first (conftest.py) so that the short files fill the gaps;
# the slowest items are listed at the end so the next slow test is seen when it arrives.
PYTEST := $(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder --durations=15

help:
	@echo "make course  run every notebook on the synthetic profile (executed copies in build/course/)"
	@echo "make test    lint, unit tests, every notebook under nbmake (quick setting), the widget tests under ipywidgets 7.7.1"
	@echo "make check   lint and the unit tests, without the notebooks and the end-to-end tests: the quick loop while you work"
	@echo "make lab     open JupyterLab on notebooks/"
	@echo "make bench   run the benchmarks (tables printed, JSON saved in benchmarks/results/)"
	@echo "make figures redraw the README's images in figures/ from the course's own code"
	@echo "make rehearsal the clotho profile end to end, offline, at Clotho's shapes (under 10 min on 2 cores; benchmarks/results/rehearsal.json)"

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,tune]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3" >/dev/null
	@touch $(STAMP)

course: $(STAMP)
	$(BIN)/python scripts/run_course.py

test: $(STAMP)
	$(BIN)/ruff check .
	scripts/test_widgets_77.sh
	$(PYTEST) --nbmake --nbmake-timeout=900 notebooks tests

# make check: three workers on two cores, because some of its slow tests wait on other processes (Ray, subprocesses)
# rather than compute (measured: 175 s against 186 s with two and 222 s with four: benchmarks/README.md); without
# the nbmake plugin, whose import (jsonschema's) costs each worker about 3 s.
check: $(STAMP)
	$(BIN)/ruff check .
	$(subst -n 2,-n 3,$(PYTEST)) -p no:nbmake -m "not e2e" tests

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

figures: $(STAMP)
	$(BIN)/python scripts/make_figures.py

.PHONY: rehearsal
rehearsal: $(STAMP)
	$(BIN)/python benchmarks/rehearsal.py

lint: $(STAMP)
	$(BIN)/ruff check .
