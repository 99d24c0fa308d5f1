# Set-up and everyday commands. A fresh machine needs only Python 3.11+ and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

CHROMIUM := /usr/bin/chromium

.PHONY: demo test lint protos bench serve clean browser screenshots

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/agentmarket demo

# The console's browser tests drive Debian's chromium (browser builds cannot be downloaded).
# Installed here when missing and apt-get can; without it those tests skip (fail under CI=true).
browser:
	@if [ ! -x $(CHROMIUM) ] && command -v apt-get >/dev/null 2>&1; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] && echo "" || echo "sudo -n" ); \
	  echo "installing Debian's chromium for the console's browser tests"; \
	  ( DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null 2>&1 \
	    || ( $$SUDO apt-get update -qq >/dev/null 2>&1 && \
	         DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null ) ) \
	    || echo "could not install chromium: the browser tests will skip"; \
	fi

# Most tests wait on sockets, processes and fsync rather than the CPU, so the suite runs in
# more workers than cores; PYTEST_WORKERS=0 runs it in one process.
PYTEST_WORKERS ?= 3

test: $(STAMP) browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS)

lint: $(STAMP)
	$(BIN)/ruff check .

protos: $(STAMP)
	$(BIN)/python protos/generate.py

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

screenshots: $(STAMP) browser
	$(BIN)/python docs/screenshots.py

serve: $(STAMP)
	$(BIN)/agentmarket serve

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
