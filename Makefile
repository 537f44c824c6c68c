# The two commands of the README: `make demo` and `make test`. Both set everything up from a fresh clone.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch goes in first, pinned, so that nothing pulls a multi-GB CUDA build on CPU machines.
# On a GPU machine: make setup TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>"
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup redis browser demo test lint bench clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e '.[worker,quant,dev]'
	touch $@

setup: $(BIN)/.installed redis browser

# The tests run private redis-server processes, and Sentinels (`redis-server --sentinel`, which is what
# redis-sentinel runs) for the failover test. On Debian/Ubuntu redis-sentinel is a package of its own.
redis:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v redis-sentinel >/dev/null 2>&1 || missing="$$missing redis-sentinel"; \
	if [ -n "$$missing" ]; then \
	  echo "not found:$$missing; installing with apt-get"; \
	  (apt-get update -qq && apt-get install -y -qq $$missing) >/dev/null || \
	  { echo "could not install$$missing; install them and retry"; exit 1; }; \
	fi

# Debian's chromium and its driver, for the console's browser test (nothing downloads a browser of its own).
browser:
	@{ command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; } || { \
	  echo "chromium / chromedriver not found: installing them with apt-get"; \
	  (apt-get update -qq && apt-get install -y -qq chromium chromium-driver) >/dev/null || \
	  { echo "could not install chromium and chromium-driver; install them and retry"; exit 1; }; }

demo: setup
	$(BIN)/rerankq demo $(ARGS)

test: setup
	$(BIN)/python -m ruff check rerankq media reranker workers producer cli bench tests
	$(BIN)/python -m tests.typecheck
	$(BIN)/python -m pytest

lint:
	$(BIN)/python -m ruff check rerankq media reranker workers producer cli bench tests
	$(BIN)/python -m tests.typecheck

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
