# Two commands do everything: `make demo` and `make test`. Both create .venv and install.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench system-deps clean typecheck-tree

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@# setuptools says "Editable installation … be careful with folders named like your
	@# package" on every editable install; the mapping of dataflows/ to mlexec is deliberate
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mlexec demo

# System packages the tests use, installed when missing (Debian; we are root here).
system-deps:
	@command -v docker-compose >/dev/null 2>&1 || { \
	  echo "installing docker-compose (validates docker-compose.yml; no engine needed)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null) \
	  || echo "warning: could not install docker-compose; its test will be skipped"; }
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  echo "installing postgresql (the SQL connector's tests start a server in a temp dir)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }
	@command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto || { \
	  echo "installing mosquitto (the MQTT output and source tests start a broker)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null; }
	@command -v stunnel4 >/dev/null 2>&1 || command -v stunnel >/dev/null 2>&1 || { \
	  echo "installing stunnel4 (the TLS tests put it in front of the local broker)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq stunnel4 >/dev/null; }
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing chromium (the dashboard test loads the page headless)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# mypy finds packages by directory name; `mlexec` is `dataflows/` plus three folders
# mapped under it (pyproject's package-dir), so it reads them through a link tree.
TYPECHECK := $(VENV)/typecheck
typecheck-tree:
	@rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)/mlexec
	@for f in dataflows/*; do case "$$f" in *__pycache__) ;; *) ln -s "$(CURDIR)/$$f" $(TYPECHECK)/mlexec/ ;; esac; done
	@for d in topologies connectors operators; do ln -s "$(CURDIR)/$$d" $(TYPECHECK)/mlexec/$$d; done

test: $(STAMP) system-deps typecheck-tree
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

lint: $(STAMP) typecheck-tree
	$(BIN)/ruff check .
	$(BIN)/mypy

# Quix Streams (benchmark (c)) pins another confluent-kafka: its own virtualenv.
QUIX_STAMP := .venv-quix/.installed
$(QUIX_STAMP): benchmarks/quix-requirements.txt
	$(PYTHON) -m venv .venv-quix
	.venv-quix/bin/python -m pip install -q --upgrade pip
	.venv-quix/bin/python -m pip install -q -r benchmarks/quix-requirements.txt
	touch $(QUIX_STAMP)

bench: $(STAMP) $(QUIX_STAMP) system-deps
	$(BIN)/python -m benchmarks.e2e
	$(BIN)/python -m benchmarks.drift
	$(BIN)/python -m benchmarks.edge

clean:
	rm -rf $(VENV) .venv-quix .mlexec .pytest_cache test-artifacts
