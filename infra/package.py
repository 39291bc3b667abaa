"""`make package`: a deployable SAM template and its zips for one Chalice stage.

    python -m infra.package [--stage dev] [--out build/package/<stage>] [--template-only] [--bundle-sdk]

1. Merges infra/deploy.yaml (deployment-only additions) over infra/template.yaml (the resources the local
   stack also deploys) into build/package/<stage>/merge-template.json, pins the template's `Prefix`
   parameter to the stage's APP_PREFIX (Chalice writes queue names into the event sources and policies), and
   adds API Gateway's gateway responses: its own errors (unknown path or method, throttling, 5xx) as
   problem+json of the registry in chalicelib/api/problem_types.py, never echoing a header.
2. Runs `chalice package --stage <stage> --merge-template <that file> <out>`, in process. With
   `automatic_layer` the dependencies go into layer-deployment.zip, cached by Chalice per requirements.txt
   (.chalice/deployments), so after the first run only a requirements change needs PyPI.
3. Drops from the layer the AWS SDK the Lambda Python runtime already provides (boto3, botocore and their
   dependencies: ~17 MB of the ~30 MB zip), unless --bundle-sdk.
4. Imports every handler module from the unzipped package, with only the runtime's SDK beside it, to catch a
   missing or unimportable dependency before AWS does; prints the sizes against the 15 MB budget.

--template-only skips the dependencies and the import check (no network; the template is the same): the
template tests use it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "infra" / "template.yaml"
OVERLAY = ROOT / "infra" / "deploy.yaml"
CHALICE_CONFIG = ROOT / ".chalice" / "config.json"
# The SDK in Lambda's Python runtime (and what it needs): used from there, not shipped in the layer.
RUNTIME_PROVIDED = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "python_dateutil", "six", "urllib3")
BUDGET_MB = 15.0
HANDLER_MODULES = ("app", "chalicelib.worker", "chalicelib.reaper", "chalicelib.schedules")
# Bytecode for what the API function and the worker import (see precompile), the X-Ray SDK included.
PRECOMPILE = ("app", "chalicelib.worker")


def stage_prefix(stage: str) -> str:
    config = json.loads(CHALICE_CONFIG.read_text())
    prefix = ((config.get("stages") or {}).get(stage) or {}).get("environment_variables", {}).get("APP_PREFIX")
    if not prefix:
        raise SystemExit(f".chalice/config.json declares no stage {stage!r} with an APP_PREFIX")
    return prefix


def stage_cors_origin(stage: str) -> str | None:
    config = json.loads(CHALICE_CONFIG.read_text())
    stage_env = ((config.get("stages") or {}).get(stage) or {}).get("environment_variables", {})
    return stage_env.get("CORS_ALLOW_ORIGIN") or (config.get("environment_variables") or {}).get("CORS_ALLOW_ORIGIN")


# API Gateway's own answers (a request that never reaches the function) as problem+json of the registry
# (chalicelib/api/problem_types.py): response type -> (status, problem slug, detail). Every 4xx type is listed
# with its own status, so DEFAULT_4XX only catches types AWS adds later. The details are fixed text: API
# Gateway's own message for MISSING_AUTHENTICATION_TOKEN echoes the Authorization header (the bearer token),
# so no template uses $context.error.message or any request value.
_REFUSED = "API Gateway refused the request before it reached the service."
GATEWAY_RESPONSES: dict[str, tuple[int, str, str]] = {
    "MISSING_AUTHENTICATION_TOKEN": (404, "not-found", "No resource of this API has this path and method."),
    "RESOURCE_NOT_FOUND": (404, "not-found", "No resource of this API has this path and method."),
    "BAD_REQUEST_BODY": (400, "validation-failed", _REFUSED + " The body is not valid."),
    "BAD_REQUEST_PARAMETERS": (400, "validation-failed", _REFUSED + " A parameter is not valid."),
    "UNAUTHORIZED": (401, "unauthorized", "The request is not authenticated."),
    "ACCESS_DENIED": (403, "forbidden", _REFUSED),
    "EXPIRED_TOKEN": (403, "forbidden", _REFUSED),
    "INVALID_API_KEY": (403, "forbidden", _REFUSED),
    "INVALID_SIGNATURE": (403, "forbidden", _REFUSED),
    "WAF_FILTERED": (403, "forbidden", _REFUSED),
    "REQUEST_TOO_LARGE": (413, "payload-too-large", "The request is over API Gateway's size limit (10 MB)."),
    "UNSUPPORTED_MEDIA_TYPE": (415, "unsupported-media-type", "This Content-Type is not accepted."),
    "THROTTLED": (429, "rate-limited", "Too many requests to the API; try again shortly."),
    "QUOTA_EXCEEDED": (429, "rate-limited", "The API's request quota is used up; try again later."),
    "DEFAULT_4XX": (400, "validation-failed", _REFUSED),
    "INTEGRATION_FAILURE": (503, "service-unavailable", "The service did not answer; try again shortly."),
    "INTEGRATION_TIMEOUT": (503, "service-unavailable", "The service did not answer in time; try again shortly."),
    "DEFAULT_5XX": (500, "internal-error",
                    "The service hit an unexpected error; the request was not completed. Try again."),
}


def gateway_responses(cors_origin: str | dict[str, Any] | None) -> dict[str, Any]:
    """The x-amazon-apigateway-gateway-responses of the REST API: fixed problem+json bodies, no echo.

    `cors_origin` is the origin itself or a CloudFormation value for it ({"Ref": "CorsAllowOrigin"})."""
    from chalicelib.api import problem_types

    out: dict[str, Any] = {}
    for response_type, (status, slug, detail) in GATEWAY_RESPONSES.items():
        kind = problem_types.get(slug)
        body = json.dumps({"type": kind.uri, "title": kind.title, "status": status, "detail": detail})
        headers = {"Content-Type": "'application/problem+json'"}
        if cors_origin:  # as the app's own answers (chalicelib/api/middleware.py): a browser may read the error
            headers["Access-Control-Allow-Origin"] = (
                {"Fn::Sub": f"'${{{cors_origin['Ref']}}}'"} if isinstance(cors_origin, dict) else f"'{cors_origin}'")
            headers["Access-Control-Expose-Headers"] = "'Location,Retry-After,ETag'"
        if status in (429, 503):
            headers["Retry-After"] = "'5'"
        out[response_type] = {
            "statusCode": str(status),
            "responseParameters": {f"gatewayresponse.header.{k}": v for k, v in headers.items()},
            # Templates are chosen by the request's Accept; without a match API Gateway uses application/json.
            "responseTemplates": {"application/json": body, "application/problem+json": body},
        }
    return out


def merge_template(stage: str) -> dict[str, Any]:
    """infra/deploy.yaml over infra/template.yaml, with Chalice's merge rules (dicts merge, the rest replaces)."""
    from chalice.package import TemplateDeepMerger

    from local.deploy import load_template  # the YAML loader that understands !Sub, !Ref, !GetAtt

    merged = TemplateDeepMerger().merge(load_template(OVERLAY), load_template(TEMPLATE))
    prefix = stage_prefix(stage)
    merged["Parameters"]["Prefix"].update(
        Default=prefix, AllowedValues=[prefix],
        Description=f"Fixed by the chalice stage {stage!r} (APP_PREFIX): queue names are built into the functions.")
    merged["Description"] = f"Async report generation, stage {stage} ({prefix}): packaged by `make package`."
    # In the REST API's own definition, not as AWS::ApiGateway::GatewayResponse resources: a change there is a
    # change of the definition, so SAM deploys the stage again (a separate resource is only live after the next
    # deployment, which SAM would not make for it).
    api = merged["Resources"].setdefault("RestAPI", {}).setdefault("Properties", {})
    api.setdefault("DefinitionBody", {})["x-amazon-apigateway-gateway-responses"] = gateway_responses(
        {"Ref": "CorsAllowOrigin"})
    wire_parameters(merged, stage)
    return merged


# Template parameters a function reads from its environment that Chalice also sets per function (from
# .chalice/config.json): set on each function, since a function's own variable would hide a Globals one.
FUNCTION_PARAMETERS = {"CORS_ALLOW_ORIGIN": "CorsAllowOrigin"}


def function_logical_ids() -> list[str]:
    """The logical ids `chalice package` gives the functions of .chalice/config.json."""
    from chalice.utils import to_cfn_resource_name

    config = json.loads(CHALICE_CONFIG.read_text())
    return ["APIHandler" if name == "api_handler" else to_cfn_resource_name(name)
            for name in config.get("lambda_functions") or {}]


def wire_parameters(merged: dict[str, Any], stage: str) -> None:
    """The stage's config.json value becomes the parameter's default; the parameter wins in every function."""
    cors = stage_cors_origin(stage)
    if cors:
        merged["Parameters"]["CorsAllowOrigin"]["Default"] = cors
    for logical_id in function_logical_ids():
        function = merged["Resources"].setdefault(logical_id, {}).setdefault("Properties", {})
        variables = function.setdefault("Environment", {}).setdefault("Variables", {})
        variables.update({name: {"Ref": parameter} for name, parameter in FUNCTION_PARAMETERS.items()})


def _placeholder_zip(path: Path, member: str) -> str:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(member, "placeholder: packaged with --template-only\n")
    return str(path)


def chalice_package(stage: str, out: Path, merge_path: Path, template_only: bool = False) -> None:
    """`chalice package --stage STAGE --merge-template MERGE OUT`, in this process."""
    from chalice.cli import cli
    from chalice.deploy.packager import AppOnlyDeploymentPackager, LayerDeploymentPackager

    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")  # Chalice asks; the template uses ${AWS::Region}
    with ExitStack() as patches:
        if template_only:
            python = f"python{sys.version_info.major}.{sys.version_info.minor}"
            layer = _placeholder_zip(out.parent / f"{out.name}-layer.zip", f"python/lib/{python}/site-packages/X")
            app = _placeholder_zip(out.parent / f"{out.name}-app.zip", "app.py")
            patches.enter_context(mock.patch.object(LayerDeploymentPackager, "create_deployment_package",
                                                    lambda *a, **k: layer))
            patches.enter_context(mock.patch.object(AppOnlyDeploymentPackager, "create_deployment_package",
                                                    lambda *a, **k: app))
        cli.main(args=["--project-dir", str(ROOT), "package", "--stage", stage, "--merge-template", str(merge_path),
                       str(out)], obj={}, standalone_mode=False)


# --- safe deploys: versions behind an alias, shifted by CodeDeploy, rolled back on these alarms ---------------

ALIAS = "live"
# Each function's rollback alarms (infra/deploy.yaml): in ALARM during the traffic shift, CodeDeploy points the
# alias back at the previous version (docs/operations.md, "Deploys, canaries and rollback").
ROLLBACK_ALARMS = {
    "APIHandler": ["ApiErrorsAlarm", "Api5xxAlarm"],
    "ProcessWork": ["WorkerErrorsAlarm"],
    "HandleDeadLetters": ["DeadLetterHandlerErrorsAlarm"],
    "ReapStaleJobs": ["ReaperErrorsAlarm"],
    "RunScheduledReports": ["ScheduledReportsErrorsAlarm"],
    "WarmVendorCache": ["CacheWarmerErrorsAlarm"],
    "PollProviderBatches": ["BatchPollerErrorsAlarm"],
}


def deployment_type(stage: str) -> str:
    """prod: 10% of invocations on the new version for 5 minutes, then all; other stages at once."""
    return "Canary10Percent5Minutes" if stage == "prod" else "AllAtOnce"


def publish_behind_alias(template: dict[str, Any], stage: str) -> None:
    """AutoPublishAlias and a DeploymentPreference on every function; the API invokes the alias.

    SAM points each function's own event sources (the SQS mappings, the schedules) at the alias; the REST API
    is Chalice's OpenAPI definition, so its integrations and invoke permission are pointed here.
    """
    resources = template["Resources"]
    for logical_id, alarms in ROLLBACK_ALARMS.items():
        function = resources[logical_id]["Properties"]
        function["AutoPublishAlias"] = ALIAS
        function["DeploymentPreference"] = {"Type": deployment_type(stage),
                                            "Alarms": [{"Ref": alarm} for alarm in alarms]}
    alias = {"Ref": "APIHandler.Alias"}  # SAM resolves it to the alias (its ARN), after the alias exists
    arn = "${APIHandler.Arn}"
    for methods in resources["RestAPI"]["Properties"]["DefinitionBody"].get("paths", {}).values():
        for method in methods.values():
            integration = method.get("x-amazon-apigateway-integration") or {}
            uri = integration.get("uri")
            if isinstance(uri, dict) and arn in str(uri.get("Fn::Sub", "")):
                integration["uri"] = {"Fn::Sub": [uri["Fn::Sub"].replace(arn, "${FunctionAlias}"),
                                                  {"FunctionAlias": alias}]}
    resources["APIHandlerInvokePermission"]["Properties"]["FunctionName"] = alias


def post_process(stage: str, sam_json: Path) -> None:
    """What only exists in `chalice package` output: the functions' deploy settings, the API's integrations."""
    template = json.loads(sam_json.read_text())
    publish_behind_alias(template, stage)
    # API Gateway's metrics are named by the API's name (the alarms' ApiName): the stage's prefix, as `Name`.
    template["Resources"]["RestAPI"]["Properties"]["DefinitionBody"].setdefault("info", {})["title"] = \
        stage_prefix(stage)
    sam_json.write_text(json.dumps(template, indent=2))


def slim_layer(path: Path) -> int:
    """Rewrite the layer zip without the runtime-provided SDK; returns the bytes saved."""
    before = path.stat().st_size
    tmp = path.with_suffix(".tmp.zip")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            top = item.filename.split("site-packages/", 1)[-1].split("/", 1)[0]
            if top.split("-", 1)[0].removesuffix(".py") in RUNTIME_PROVIDED:
                continue
            dst.writestr(item, src.read(item.filename))
    tmp.replace(path)
    return before - path.stat().st_size


def zip_sizes(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(out.glob("*.zip"))}


def deployed_pythonpath(out: Path, workdir: Path) -> list[str]:
    """Unzip the package as Lambda lays it out: /var/task, the layer, then the runtime's SDK (from this venv)."""
    task, opt, sdk = workdir / "task", workdir / "opt", workdir / "runtime"
    with zipfile.ZipFile(out / "deployment.zip") as z:
        z.extractall(task)
    layer = out / "layer-deployment.zip"
    if layer.exists():
        with zipfile.ZipFile(layer) as z:
            z.extractall(opt)
    sdk.mkdir(parents=True, exist_ok=True)
    import importlib.util

    for name in RUNTIME_PROVIDED:
        spec = importlib.util.find_spec(name)
        if spec and spec.origin:
            origin = Path(spec.origin)
            source = origin.parent if origin.name == "__init__.py" else origin
            (sdk / source.name).symlink_to(source)
    python = f"python{sys.version_info.major}.{sys.version_info.minor}"
    return [str(task), str(opt / "python" / "lib" / python / "site-packages"), str(opt / "python"), str(sdk)]


IMPORT_PROBE = """
import importlib, json, sys, time
out = {}
for n, name in enumerate(sys.argv[1:]):
    start = time.perf_counter()
    importlib.import_module(name)
    out[name] = round((time.perf_counter() - start) * 1000, 1)
    if n == 0:  # what the first module (the API function's handler) pulled in that only workers need
        out["workerOnlyAfterFirst"] = sorted(m for m in ("openai", "chalicelib.worker", "aws_xray_sdk.core")
                                             if m in sys.modules)
print(json.dumps(out))
"""


def probe_imports(pythonpath: list[str], modules: tuple[str, ...], env: dict[str, str] | None = None,
                  isolated: bool = True) -> dict[str, Any]:
    """Import `modules` in order in a fresh interpreter; milliseconds each, cumulative order."""
    args = [sys.executable, *(["-S"] if isolated else []), "-c", IMPORT_PROBE, *modules]
    done = subprocess.run(args, env=_probe_env(pythonpath, env), capture_output=True, text=True, timeout=120,
                          cwd=pythonpath[0])
    if done.returncode:
        raise RuntimeError(f"importing {modules} from the package failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


LIST_PROBE = """
import importlib, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps(sorted({m.__file__ for m in list(sys.modules.values()) if getattr(m, "__file__", None)})))
"""


def precompile(out: Path, pythonpath: list[str], modules: tuple[str, ...]) -> int:
    """Add bytecode for what importing `modules` loads from the package; returns the files compiled.

    Lambda cannot write __pycache__ into /var/task or /opt, so without it every cold start compiles each
    module it imports again (about half of `import app`). The .pyc files are unchecked-hash: used as they
    are, whatever the timestamps the zip gives their sources.
    """
    import py_compile

    done = subprocess.run([sys.executable, "-S", "-c", LIST_PROBE, *modules], capture_output=True, text=True,
                          env=_probe_env(pythonpath, {"POWERTOOLS_TRACE_DISABLED": "false"}), timeout=120,
                          cwd=pythonpath[0])
    if done.returncode:
        raise RuntimeError(f"importing {modules} from the package failed:\n{done.stderr[-3000:]}")
    loaded = [Path(f) for f in json.loads(done.stdout.strip().splitlines()[-1]) if f.endswith(".py")]
    python = f"python{sys.version_info.major}.{sys.version_info.minor}"
    targets = [(out / "deployment.zip", Path(pythonpath[0]), ""),
               (out / "layer-deployment.zip", Path(pythonpath[1]), f"python/lib/{python}/site-packages/")]
    compiled = 0
    for zip_path, root, arc_prefix in targets:
        sources = [f for f in loaded if f.is_relative_to(root)]
        if not sources or not zip_path.exists():
            continue
        with zipfile.ZipFile(zip_path, "a", zipfile.ZIP_DEFLATED) as z, tempfile.TemporaryDirectory() as tmp:
            present = set(z.namelist())
            for source in sources:
                relative = source.relative_to(root)
                arc = f"{arc_prefix}{relative.parent.as_posix() + '/' if relative.parent.parts else ''}" \
                      f"__pycache__/{source.stem}.{sys.implementation.cache_tag}.pyc"
                if arc in present:
                    continue
                where = "/var/task/" if not arc_prefix else "/opt/"
                cfile = Path(tmp) / "out.pyc"
                py_compile.compile(str(source), cfile=str(cfile), dfile=f"{where}{arc_prefix}{relative.as_posix()}",
                                   doraise=True, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
                z.write(cfile, arc)
                compiled += 1
    return compiled


def _probe_env(pythonpath: list[str], env: dict[str, str] | None = None) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", ""), "AWS_DEFAULT_REGION": "us-east-1", "APP_PREFIX": "reports-dev",
            "AWS_LAMBDA_FUNCTION_NAME": "probe", "POWERTOOLS_TRACE_DISABLED": "true",
            "POWERTOOLS_METRICS_DISABLED": "true", "PYTHONPATH": os.pathsep.join(pythonpath),
            "PYTHONDONTWRITEBYTECODE": "1", **(env or {})}


def package(stage: str, out: Path, template_only: bool = False, bundle_sdk: bool = False) -> dict[str, Any]:
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    merge_path = out.parent / f"{out.name}-merge-template.json"
    merge_path.write_text(json.dumps(merge_template(stage), indent=1))
    chalice_package(stage, out, merge_path, template_only)
    post_process(stage, out / "sam.json")
    report: dict[str, Any] = {"template": str(out / "sam.json"), "templateBytes": (out / "sam.json").stat().st_size}
    if not template_only:
        if not bundle_sdk and (out / "layer-deployment.zip").exists():
            report["sdkBytesDropped"] = slim_layer(out / "layer-deployment.zip")
        with tempfile.TemporaryDirectory(prefix="package-check-") as work:
            report["precompiled"] = precompile(out, deployed_pythonpath(out, Path(work) / "before"), PRECOMPILE)
        with tempfile.TemporaryDirectory(prefix="package-check-") as work:
            path = deployed_pythonpath(out, Path(work))
            api = probe_imports(path, ("app",))  # as the API function: tracing off
            workers = probe_imports(path, HANDLER_MODULES, {"POWERTOOLS_TRACE_DISABLED": "false"})  # X-Ray SDK on
            report["importMs"] = {"app (API)": api["app"], **{m: workers[m] for m in HANDLER_MODULES[1:]},
                                  "workerOnlyAfterFirst": api["workerOnlyAfterFirst"]}
    report["zipBytes"] = zip_sizes(out)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.package", description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", default="dev")
    parser.add_argument("--out", type=Path, help="output directory (default build/package/<stage>)")
    parser.add_argument("--template-only", action="store_true", help="no dependencies, no network: the template")
    parser.add_argument("--bundle-sdk", action="store_true", help="keep boto3/botocore in the layer (~+16 MB)")
    args = parser.parse_args(argv)
    out = (args.out or ROOT / "build" / "package" / args.stage).resolve()
    from infra.deploy import check_params_file  # here: infra.deploy imports this module

    problems = check_params_file(args.stage, merge_template(args.stage)["Parameters"])
    if problems:  # infra/params/<stage>.json lacks what the stage needs (a prod stage: JWKS, an alarm e-mail)
        print(f"error: stage {args.stage}:\n  - " + "\n  - ".join(problems), file=sys.stderr)
        return 1
    report = package(args.stage, out, args.template_only, args.bundle_sdk)
    print(f"template  {report['template']}  ({report['templateBytes'] / 1024:.0f} KiB)")
    over = False
    for name, size in report["zipBytes"].items():
        mb = size / 1_000_000
        over |= mb > BUDGET_MB and not args.template_only
        print(f"zip       {out / name}  {mb:.2f} MB{'  OVER the 15 MB budget' if mb > BUDGET_MB else ''}")
    if "sdkBytesDropped" in report:
        print(f"layer     {report['sdkBytesDropped'] / 1_000_000:.1f} MB of AWS SDK left to the Lambda runtime")
    for module, ms in (report.get("importMs") or {}).items():
        if isinstance(ms, float):
            print(f"import    {module:<22} {ms:7.1f} ms (from the unzipped package; workers after app)")
    extra = (report.get("importMs") or {}).get("workerOnlyAfterFirst")
    if extra:
        print(f"WARNING   importing app loads {extra}: the API function's cold start pays for them")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
