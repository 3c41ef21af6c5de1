# Two entry points for a fresh machine: `make demo` and `make test`. Both go through `make setup`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup browser postgres demo test clean

setup: $(STAMP) browser postgres

# The report's browser test loads report.html in headless Chromium. On Debian as root it is installed here;
# elsewhere that one test is skipped and says why. Never fatal: the tool itself does not need a browser.
browser:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    (DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium \
	      chromium-driver >/dev/null 2>&1)) || echo "note: could not install chromium; the browser test will be skipped"; \
	  else echo "note: no chromium (install chromium and chromium-driver); the browser test will be skipped"; fi; }

# The tests of `tune --storage postgresql://` start a PostgreSQL server of their own (initdb in a temporary folder,
# 127.0.0.1 on a free port). Debian's server is installed here as root (its packaging creates a cluster 15/main and
# starts it on port 5432 where an init system runs; the tests never use it); elsewhere they are skipped and say why.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    (DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
	      --no-install-recommends postgresql >/dev/null 2>&1)) || \
	      echo "note: could not install postgresql; the PostgreSQL tests of tune will be skipped"; \
	  else echo "note: no PostgreSQL server (install postgresql); the PostgreSQL tests of tune will be skipped"; fi; }

# torch==2.13.0 first: a plain `torch` requirement on an empty venv would pull a CUDA build of several GB.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/finetune-bert demo

# The stage layers (pyproject.toml, [tool.importlinter]) first: seconds, and a broken layer says which import.
# Two pytest workers (pytest-xdist), each given whole test files, so a module's fixtures (a trained model,
# a torchrun job) are built once: 7 min 4 s for the whole suite on a quiet 2-core AMD EPYC, 2026-12-07.
test: setup
	$(VENV)/bin/lint-imports --no-cache
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -n 2 --dist loadfile

clean:
	rm -rf $(VENV) build src/*.egg-info
