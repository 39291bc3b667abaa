"""Settings: each field's default written once, each read from the environment by a name or listed as derived,
nothing read at import, and one timeout configuration for every AWS client."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from chalicelib.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
FIELDS = dataclasses.fields(Settings)
FROM_ENV = [f for f in FIELDS if "env" in f.metadata]
HINTS = typing.get_type_hints(Settings)


def _sample(f: dataclasses.Field) -> str:
    """A value for the field's variable that its parser reads as something other than the default."""
    hint = HINTS[f.name]
    if f.name == "tenant_weights":
        return "acme=2,globex=0.5"
    if hint is bool or hint == bool | None:
        return "false" if f.default else "true"
    if int in typing.get_args(hint) or hint is int:
        return "7"
    if float in typing.get_args(hint) or hint is float:
        return "7.5"
    if str in typing.get_args(hint) or hint is str:
        return "Sample-Value"
    return json.dumps([{"ErrorEquals": ["States.ALL"], "MaxAttempts": 1}])  # the JSON retry policy


def test_every_field_is_read_by_name_or_listed_as_derived_or_fixed():
    for f in FIELDS:
        kinds = {"env", "derived", "fixed"} & set(f.metadata)
        assert len(kinds) == 1, f"{f.name}: say once where it comes from (_env, _derived or _fixed), not {kinds}"
    derived = {f.name for f in FIELDS if "derived" in f.metadata}
    assert derived == {"in_lambda", "metrics_enabled", "tracing_enabled"}
    fixed = {f.name for f in FIELDS if "fixed" in f.metadata}
    assert fixed == {"retention_days", "max_import_lines"}


def test_an_empty_environment_gives_the_dataclass_defaults():
    # The defaults live in the fields only: from_env repeats none of them.
    assert Settings.from_env({}) == Settings()
    assert Settings().results_bucket == "reports-dev-results"


@pytest.mark.parametrize("f", FROM_ENV, ids=lambda f: f.name)
def test_each_field_is_read_from_its_variables(f):
    sample = _sample(f)
    expected = f.metadata["parse"](sample)
    assert expected != f.default, f.name
    for name in f.metadata["env"]:
        assert getattr(Settings.from_env({name: sample}), f.name) == expected, name


@pytest.mark.parametrize("f", FROM_ENV, ids=lambda f: f.name)
def test_an_unset_or_blank_variable_leaves_the_default(f):
    for name in f.metadata["env"]:
        if f.metadata["keep_blank"]:
            continue  # a set but blank value is the value (or, for a number, an error at start)
        assert getattr(Settings.from_env({name: ""}), f.name) == getattr(Settings(), f.name), name


def test_the_rules_beyond_one_variable_per_field():
    read = Settings.from_env
    assert read({"APP_PREFIX": "acme"}).results_bucket == "acme-results"
    assert read({"APP_PREFIX": "acme", "RESULTS_BUCKET": "b"}).results_bucket == "b"
    assert read({"APP_PREFIX": ""}).prefix == ""  # blank is a value here, as before
    assert read({"AWS_DEFAULT_REGION": "eu-west-1", "AWS_REGION": "eu-north-1"}).region == "eu-west-1"
    assert read({"AWS_DEFAULT_REGION": "", "AWS_REGION": "eu-north-1"}).region == "eu-north-1"
    assert read({"POWERTOOLS_LOG_LEVEL": "debug", "LOG_LEVEL": "error"}).log_level == "DEBUG"
    assert read({"LOG_LEVEL": "warning"}).log_level == "WARNING"
    assert read({"LINE_READ_AHEAD": "0"}).line_read_ahead == 1
    assert read({"PUBLIC_BASE_URL": "https://x.example/"}).public_base_url == "https://x.example"
    assert read({"JWT_TOKEN_USE": " ID "}).jwt_token_use == "id"
    assert read({"OPENAI_RPM": "500"}).openai_rpm == 500.0
    assert read({"MODEL_RETRY_POLICY": '[{"ErrorEquals": ["X"]}]'}).retry_policy == ({"ErrorEquals": ["X"]},)
    with pytest.raises(ValueError):
        read({"LINE_BATCH_SIZE": ""})  # a blank number fails the start, as before


def test_lambda_is_told_by_its_function_name_and_not_by_chalice_local():
    lam = {"AWS_LAMBDA_FUNCTION_NAME": "reports-dev-api"}
    s = Settings.from_env(lam)
    assert (s.in_lambda, s.metrics_enabled, s.tracing_enabled) == (True, True, True)
    s = Settings.from_env({**lam, "AWS_CHALICE_CLI_MODE": "true", "WEBHOOK_ALLOW_LOOPBACK": "1"})
    assert (s.in_lambda, s.metrics_enabled, s.tracing_enabled, s.webhook_allow_loopback) == (False, False, False, True)
    s = Settings.from_env({**lam, "POWERTOOLS_METRICS_DISABLED": "true", "POWERTOOLS_TRACE_DISABLED": "1"})
    assert (s.metrics_enabled, s.tracing_enabled) == (False, False)
    assert Settings.from_env({"POWERTOOLS_TRACE_DISABLED": "false"}).tracing_enabled is False  # outside Lambda
    # Loopback webhooks are for `make run` and the tests: never inside Lambda, whatever the variable says.
    assert Settings.from_env({**lam, "WEBHOOK_ALLOW_LOOPBACK": "1"}).webhook_allow_loopback is False


@pytest.mark.parametrize("name", ["SEAM_MEMORY_ASSEMBLY", "SEAM_COMPLETE_WITH_LAST_BATCH", "SEAM_VENDOR_CLAIMS"])
def test_each_worker_seam_is_on_unless_switched_off(name):
    field = name.lower()
    assert getattr(Settings(), field) is True
    for off in ("0", "false", "False", "no", "off"):
        assert getattr(Settings.from_env({name: off}), field) is False
    for on in ("1", "true", "yes", ""):
        assert getattr(Settings.from_env({name: on}), field) is True
    with pytest.raises(ValueError, match="flase"):
        Settings.from_env({name: "flase"})  # a typo must not silently pick a side in a benchmark


_LATE = """
import importlib, json, os, pkgutil
import chalicelib
for module in pkgutil.walk_packages(chalicelib.__path__, "chalicelib."):
    importlib.import_module(module.name)
from chalicelib import deps, observability, tables
from chalicelib.settings import get_settings
read_at_import = get_settings.cache_info().currsize
os.environ.update(APP_PREFIX="later", AWS_DEFAULT_REGION="eu-west-1", POWERTOOLS_SERVICE_NAME="later-service",
                  AWS_ENDPOINT_URL="http://127.0.0.1:9")
t = observability.telemetry()
configs = {}
clients = {"sqs": deps.client("sqs"), "s3": deps.client("s3"), "dynamodb": tables.connection().client,
           "model": tables.Job._get_connection().connection.client}
for name, client in clients.items():
    c = client.meta.config
    configs[name] = [c.connect_timeout, c.read_timeout, c.retries, client.meta.region_name, client.meta.endpoint_url]
print(json.dumps({"read_at_import": read_at_import, "jobs": tables.Job.Meta.table_name,
                  "cache": tables.VendorClaim.Meta.table_name, "region": tables.Job.Meta.region,
                  "service": [t.service_name, t.logger.service], "configs": configs,
                  "boto": [deps.BOTO_CONFIG.connect_timeout, deps.BOTO_CONFIG.read_timeout, deps.BOTO_CONFIG.retries]}))
"""


def test_nothing_reads_the_settings_at_import_and_every_client_shares_one_config():
    env = {"PATH": "/usr/bin:/bin", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    done = subprocess.run([sys.executable, "-c", _LATE], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["read_at_import"] == 0  # no module of chalicelib reads them at import
    # Set after the import, and used: the tables and the telemetry read the settings at first use.
    assert (seen["jobs"], seen["cache"], seen["region"]) == ("later-jobs", "later-vendor-cache", "eu-west-1")
    assert seen["service"] == ["later-service", "later-service"]
    connect, read, retries = seen["boto"]
    for name, config in seen["configs"].items():
        assert config == [connect, read, retries, "eu-west-1", "http://127.0.0.1:9"], name
