# Two commands: `make run` starts the local stack, `make test` runs the suite.
# Each creates or updates .venv first (a no-op when the requirements did not change).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test unit soak bench lint clean package deploy mail openapi

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .  # the `reports` CLI
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m local.stack

# The emails a running local stack sent (moto keeps them): AWS_ENDPOINT_URL=<the AWS endpoint `make run` printed>
# make mail [MAIL_ARGS="--limit 5" | MAIL_ARGS="--raw <message id>"].
mail: $(STAMP)
	$(PY) -m local.mailbox $(MAIL_ARGS)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest -q -rs -n 2

# The unit tier alone (tests/unit): no moto, no network, seconds. `make test` runs it too, with the rest.
unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

# The long chaos soak (tests/hardening/test_chaos.py); `make test` runs a short one. CHAOS_SEED=N replays a run.
soak: $(STAMP)
	CHAOS_JOBS=30 CHAOS_LINES=200 CHAOS_WORKERS=3 CHAOS_KILLS=8 CHAOS_STALE_AFTER=15 CHAOS_DEADLINE=1800 \
		$(PY) -m pytest tests/hardening/test_chaos.py -q -s -p no:xdist

bench: $(STAMP)
	$(PY) -m bench $(PARTS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy

# Writes chalicelib/api/openapi.json from the pydantic models and the route table (chalicelib/api/spec.py);
# tests/unit/test_openapi_generated.py fails until the checked-in document is what this writes.
openapi: $(STAMP)
	$(PY) -m chalicelib.api.spec

# Deploy to AWS (docs/deploy.md): package into build/package/$(STAGE), then deploy it (needs credentials).
STAGE ?= dev

package: $(STAMP)
	$(PY) -m infra.package --stage $(STAGE)

deploy: package
	$(PY) -m infra.deploy --stage $(STAGE) $(DEPLOY_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache
