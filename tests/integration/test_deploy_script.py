"""infra/deploy.py's offline parts against the moto server: artifacts and preflight. The deploy flow itself
(parameters, the change-set guard) runs against a stub CloudFormation client in tests/unit/test_deploy_params.py."""

from __future__ import annotations

import uuid
import zipfile

import pytest

from chalicelib import deps
from infra import deploy


def test_local_code_locations_become_uploaded_s3_objects_once(tmp_path):
    s3, bucket = deps.client("s3"), f"artifacts-{uuid.uuid4().hex[:12]}"
    deploy.ensure_bucket(s3, bucket, "us-east-1")
    for name in ("deployment.zip", "layer-deployment.zip"):
        with zipfile.ZipFile(tmp_path / name, "w") as z:
            z.writestr("app.py", name)
    template = {"Resources": {
        "Fn": {"Type": "AWS::Serverless::Function", "Properties": {"CodeUri": "./deployment.zip"}},
        "Layer": {"Type": "AWS::Serverless::LayerVersion", "Properties": {"ContentUri": "./layer-deployment.zip"}},
        "Table": {"Type": "AWS::DynamoDB::Table", "Properties": {"TableName": "t"}}}}
    first = deploy.with_artifacts(template, s3, bucket, "stack", tmp_path)
    code, layer = first["Resources"]["Fn"]["Properties"]["CodeUri"], first["Resources"]["Layer"]["Properties"]
    assert code["Bucket"] == bucket and code["Key"].startswith("stack/") and code["Key"].endswith(".zip")
    assert layer["ContentUri"].startswith(f"s3://{bucket}/stack/")
    assert template["Resources"]["Fn"]["Properties"]["CodeUri"] == "./deployment.zip"  # the input is untouched
    assert deploy.with_artifacts(template, s3, bucket, "stack", tmp_path) == first  # same content, same keys
    assert len(s3.list_objects_v2(Bucket=bucket)["Contents"]) == 2
    blocked = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert all(blocked.values())


def test_preflight_refuses_a_stage_without_its_jwt_secret_and_says_how_to_create_it():
    prefix = f"nostage-{uuid.uuid4().hex[:8]}"
    with pytest.raises(deploy.DeployError, match=f"aws ssm put-parameter --name /{prefix}/jwt-secret"):
        deploy.preflight(deps.client("ssm"), prefix, {})
    notes = deploy.preflight(deps.client("ssm"), prefix, {"JwtJwksUrl": "https://issuer.example/jwks.json"})
    assert notes and "rules categorizer" in notes[0]


def test_preflight_for_prod_with_jwks_settings_needs_no_jwt_secret():
    prefix = f"prodlike-{uuid.uuid4().hex[:8]}"  # no /<prefix>/jwt-secret: prod signs in with the identity provider
    values = {"JwtJwksUrl": "https://issuer.example/.well-known/jwks.json", "JwtIssuer": "https://issuer.example",
              "JwtAudience": "client", "AlarmEmail": "oncall@team.example"}
    assert "rules categorizer" in deploy.preflight(deps.client("ssm"), prefix, values, "prod")[0]


def test_preflight_passes_when_the_secret_exists():
    prefix, ssm = f"stage-{uuid.uuid4().hex[:8]}", deps.client("ssm")
    ssm.put_parameter(Name=f"/{prefix}/jwt-secret", Value="x" * 48, Type="SecureString")
    ssm.put_parameter(Name=f"/{prefix}/openai-api-key", Value="sk-x", Type="SecureString")
    assert deploy.preflight(ssm, prefix, {}) == []
