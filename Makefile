VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test lint unit bench clean

install: $(STAMP)
	@# the stamp does not notice Debian packages removed since: promtool/prometheus run tests, never skipped
	@{ command -v promtool && command -v prometheus; } >/dev/null 2>&1 || bash deploy/install.sh $(VENV) dev

$(STAMP): pyproject.toml deploy/install.sh
	bash deploy/install.sh $(VENV) dev
	touch $(STAMP)

## make run: sample image host on loopback + sample URL parquet + one fetcher run -> ./out
run: install
	$(PY) -m fetcher.farm demo --input sample/urls.parquet --output out

## make test: lint (ruff + mypy) and the whole test suite
test: install lint unit

lint: install
	$(VENV)/bin/ruff check fetcher storage tests
	$(VENV)/bin/ruff format --check fetcher storage tests
	$(VENV)/bin/mypy fetcher storage

unit: install
	$(PY) -m pytest -q

bench: install
	$(PY) -m bench

clean:
	rm -rf out sample bench/out .pytest_cache .mypy_cache
