# cirelay — `make help` lists the targets.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Re-install whenever pyproject.toml changes.
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $@

# Debian packages the tests run for real: promtool and a Prometheus server (the metrics and
# alert-rule tests), nginx (the load-balancer test), chromium and chromedriver (the console's browser tests).
SYSTEM_TOOLS := promtool:prometheus prometheus:prometheus nginx:nginx chromium:chromium chromedriver:chromium-driver

.PHONY: system-deps
system-deps: ## install the Debian packages the tests use (prometheus, nginx, chromium) when missing
	@missing=$$(for pair in $(SYSTEM_TOOLS); do \
	  command -v $${pair%%:*} >/dev/null 2>&1 || PATH=$$PATH:/usr/sbin command -v $${pair%%:*} >/dev/null 2>&1 || echo $${pair##*:}; \
	done | sort -u); \
	if [ -n "$$missing" ]; then \
	  echo "installing $$missing"; \
	  sudo=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

.PHONY: help
help: ## show this help
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' \
	  '{ name[NR] = $$1; text[NR] = $$2; if (length($$1) > width) width = length($$1) } \
	   END { for (i = 1; i <= NR; i++) printf "  make %-" width "s  %s\n", name[i], text[i] }'

.PHONY: install
install: $(STAMP) ## create .venv and install cirelay with its test extras

.PHONY: run
run: $(STAMP) ## run the local stack (cirelay up): service on 127.0.0.1:8080, SQLite under ./var
	@$(BIN)/cirelay up

.PHONY: test
test: $(STAMP) system-deps lint ## lint, then run every test (PostgreSQL too when CIRELAY_TEST_DATABASE_URL is set)
	$(BIN)/pytest -n auto --dist loadfile

.PHONY: lint
lint: $(STAMP) ## ruff and mypy on app/
	$(BIN)/ruff check app tests bench dashboards
	$(BIN)/ruff format --check app
	$(BIN)/mypy app

.PHONY: bench
bench: $(STAMP) ## ingest benchmark (prints figures; see README)
	$(BIN)/python bench/ingest.py

.PHONY: bench-delivery
bench-delivery: $(STAMP) ## delivery latency benchmark at 200 events/s (prints figures; see README)
	$(BIN)/python bench/delivery.py

.PHONY: dashboards
dashboards: $(STAMP) ## write the Grafana dashboards (helm/cirelay/dashboards/*.json) from dashboards/generate.py
	$(BIN)/python dashboards/generate.py

.PHONY: clean
clean: ## remove the local database and caches (keeps .venv)
	rm -rf var .pytest_cache .mypy_cache .ruff_cache

SWAGGER_UI_VERSION ?= 5.36.0
.PHONY: docs-viewer
docs-viewer: ## re-vendor Swagger UI (swagger-ui-dist@SWAGGER_UI_VERSION from npm) for /docs
	tmp=$$(mktemp -d) && cd $$tmp && npm pack --silent swagger-ui-dist@$(SWAGGER_UI_VERSION) >/dev/null \
	  && tar xzf swagger-ui-dist-$(SWAGGER_UI_VERSION).tgz \
	  && cp package/swagger-ui-bundle.js package/swagger-ui.css package/LICENSE package/NOTICE $(CURDIR)/app/contract/viewer/ \
	  && cd $(CURDIR)/app/contract/viewer && sha256sum swagger-ui-bundle.js swagger-ui.css > SHA256SUMS \
	  && sed -i 's/swagger-ui-dist@[0-9.]*/swagger-ui-dist@$(SWAGGER_UI_VERSION)/' README.md && rm -rf $$tmp
