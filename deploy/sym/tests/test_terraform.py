"""deploy/sym/*.tf parsed with python-hcl2 and checked against the provider's documented schema,
and deploy/sym/locals.tf evaluated by Terraform itself, offline.

`terraform validate` and `plan` need the providers and modules from the Terraform registry, which
this machine cannot reach; so this test (and `terraform fmt -check`) is what checks the
configuration here:

* Every attribute used must be in the schema below, which was copied from the provider's own
  docs and source (docs/deploy.md cites each file), and every required one must be set.
* locals.tf holds everything computed from the variables alone (the names of what is created, the
  flow's variables, the KMS grant, the plan-time checks). `terraform console` evaluates it with
  variables.tf and no provider, so the checks below run Terraform's own functions on it (title(),
  format(), jsonencode(), can() ...), with the one data-source input it takes given as a literal.
  Without a terraform binary these tests skip, unless DEPLOY_TERRAFORM_REQUIRED=1 (CI).
"""

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import hcl2
import pytest
import yaml
from hcl2.utils import SerializationOptions

from conftest import REPO_ROOT, SYM_DIR

# Meta-arguments Terraform itself accepts on every resource / data / module block.
META = {"count", "for_each", "depends_on", "provider", "lifecycle"}

# symopsio/terraform-provider-sym 3.x: docs/resources/*.md, docs/data-sources/*.md and
# sym/provider/*_resource.go / *_data_source.go. (required, optional) per type.
SYM_RESOURCES = {
    "sym_flow": ({"name", "implementation", "environment_id"}, {"label", "vars", "params"}),
    "sym_environment": ({"name", "runtime_id"}, {"label", "integrations", "error_logger_id", "log_destination_ids"}),
    "sym_integration": ({"type", "name", "external_id"}, {"label", "settings"}),
    "sym_runtime": ({"name"}, {"label", "context_id"}),
    "sym_secrets": ({"type", "name"}, {"label", "settings"}),
    "sym_secret": ({"path", "source_id"}, {"label", "settings"}),
    "sym_error_logger": ({"integration_id", "destination"}, set()),
}
SYM_FLOW_PARAMS = (
    set(),
    {
        "strategy_id", "allow_revoke", "allowed_sources", "schedule_deescalation", "prompt_field",
        "additional_header_text", "allow_guest_interaction",
    },
)
SYM_PROMPT_FIELD = ({"name", "type"}, {"required", "label", "default", "allowed_values", "prefetch"})
SYM_PROMPT_FIELD_TYPES = {"string", "int", "bool", "duration"}
SYM_DATA_SOURCES = {
    "sym_environment": ({"name"}, {"label", "runtime_id", "integrations", "log_destination_ids"}),
    "sym_integration": ({"type", "name"}, {"external_id", "label", "settings"}),
    "sym_runtime": ({"name"}, {"label", "context_id"}),
    "sym_secrets": ({"type", "name"}, {"label", "settings"}),
}
# Read-only attribute every sym_* resource and data source has.
SYM_READ_ONLY = {"id"}

# hashicorp/aws: aws_secretsmanager_secret and aws_iam_role_policy (the attributes used here).
AWS_RESOURCES = {
    "aws_secretsmanager_secret": (set(), {"name", "description", "kms_key_id", "tags"}),
    "aws_iam_role_policy": ({"policy", "role"}, {"name", "name_prefix"}),
}

# Registry modules: inputs (required, optional) and outputs, from their README/variables.tf/outputs.tf.
MODULES = {
    "symopsio/runtime-connector/aws": {
        "version": "~> 2.0",
        "inputs": ({"environment"}, {"account_id_safelist", "sym_account_id", "tags"}),
        "outputs": {"sym_integration", "sym_runtime", "sym_runtime_connector_role"},
    },
    "symopsio/secretsmgr-addon/aws": {
        "version": "~> 1.1",
        "inputs": ({"environment"}, {"tag_name", "tags", "iam_role_name"}),
        "outputs": {"policy_arn"},
    },
}


def unquote(value):
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def clean(node):
    """hcl2's output with quotes stripped from keys and the bookkeeping keys dropped."""
    if isinstance(node, dict):
        return {unquote(k): clean(v) for k, v in node.items() if not k.startswith("__")}
    if isinstance(node, list):
        return [clean(v) for v in node]
    return unquote(node)


def load_tf():
    merged = {}
    options = SerializationOptions(with_comments=False, strip_string_quotes=True)
    for path in sorted(SYM_DIR.glob("*.tf")):
        with path.open(encoding="utf-8") as f:
            parsed = clean(hcl2.load(f, serialization_options=options))
        for key, value in parsed.items():
            merged.setdefault(key, []).extend(value if isinstance(value, list) else [value])
    return merged


TF = load_tf()
TEXT = "\n".join(p.read_text(encoding="utf-8") for p in sorted(SYM_DIR.glob("*.tf")))
# The configuration without comments, for reference checks.
CODE = "\n".join(re.sub(r"^\s*#.*$", "", line) for line in TEXT.splitlines())


def blocks(kind):
    """[(type, name, body)] for resource/data blocks."""
    out = []
    for entry in TF.get(kind, []):
        for type_name, named in entry.items():
            for name, body in named.items():
                out.append((type_name, name, body))
    return out


def check_attributes(where, body, schema, nested=None):
    required, optional = schema
    keys = set(body) - META
    unknown = keys - required - optional
    assert not unknown, "%s: attributes not in the provider's schema: %s" % (where, sorted(unknown))
    missing = required - keys
    assert not missing, "%s: required attributes missing: %s" % (where, sorted(missing))


def test_every_tf_file_parses():
    assert {p.name for p in SYM_DIR.glob("*.tf")} == {"locals.tf", "main.tf", "variables.tf", "versions.tf"}
    assert TF["resource"] and TF["variable"]


def test_providers_are_pinned_to_sym_3():
    (terraform,) = TF["terraform"]
    providers = terraform["required_providers"][0] if isinstance(terraform["required_providers"], list) else terraform["required_providers"]
    assert providers["sym"] == {"source": "symopsio/sym", "version": "~> 3.0"}


@pytest.mark.parametrize("type_name,name,body", blocks("resource"), ids=lambda x: x if isinstance(x, str) else "")
def test_resource_attributes_are_in_the_provider_schema(type_name, name, body):
    schema = SYM_RESOURCES.get(type_name) or AWS_RESOURCES.get(type_name)
    assert schema is not None, "no documented schema recorded for %s" % type_name
    check_attributes("%s.%s" % (type_name, name), body, schema)


@pytest.mark.parametrize("type_name,name,body", blocks("data"), ids=lambda x: x if isinstance(x, str) else "")
def test_data_source_attributes_are_in_the_provider_schema(type_name, name, body):
    assert type_name in SYM_DATA_SOURCES, "the provider has no data source %s" % type_name
    check_attributes("data.%s.%s" % (type_name, name), body, SYM_DATA_SOURCES[type_name])


def test_flow_params_and_prompt_fields_follow_the_schema():
    (flow,) = [body for t, _, body in blocks("resource") if t == "sym_flow"]
    (params,) = flow["params"]
    check_attributes("sym_flow.params", params, SYM_FLOW_PARAMS)
    assert params["allowed_sources"] == ["api"]
    # "At least one of schedule_deescalation or allow_revoke must be true" (schedule defaults true).
    assert params.get("allow_revoke") is True or params.get("schedule_deescalation", True) is True
    names = []
    for field in params["prompt_field"]:
        check_attributes("sym_flow.params.prompt_field", field, SYM_PROMPT_FIELD)
        assert field["type"] in SYM_PROMPT_FIELD_TYPES
        names.append(field["name"])
    assert names == ["workflow_id", "workflow_url", "merging_user", "hold_job_name"]
    required = {f["name"] for f in params["prompt_field"] if f.get("required", True)}
    assert required == {"workflow_id"}  # prompt_field.required defaults to true


def test_flow_implementation_is_the_file_contents():
    (flow,) = [body for t, _, body in blocks("resource") if t == "sym_flow"]
    assert flow["implementation"] == '${file("${path.module}/impl.py")}'
    assert flow["vars"] == "${local.flow_vars}"


def test_modules_use_documented_inputs_and_outputs():
    used_sources = set()
    for entry in TF["module"]:
        for name, body in entry.items():
            spec = MODULES.get(body["source"])
            assert spec is not None, "module %s: undocumented source %s" % (name, body["source"])
            assert body["version"] == spec["version"]
            used_sources.add(body["source"])
            inputs = {k: v for k, v in body.items() if k not in {"source", "version"}}
            check_attributes("module.%s" % name, inputs, spec["inputs"])
            for output in re.findall(r"module\.%s(?:\[[^\]]*\])?\.(\w+)" % name, CODE):
                assert output in spec["outputs"], "module.%s has no output %s" % (name, output)
    assert used_sources == set(MODULES)


def test_references_resolve_to_declared_things():
    variables = {name for entry in TF["variable"] for name in entry}
    locals_ = {name for entry in TF["locals"] for name in entry}
    for name in re.findall(r"\bvar\.(\w+)", CODE):
        assert name in variables, "var.%s is not declared" % name
    for name in re.findall(r"\blocal\.(\w+)", CODE):
        assert name in locals_, "local.%s is not defined" % name
    declared = {(t, n) for t, n, _ in blocks("resource")}
    data_declared = {(t, n) for t, n, _ in blocks("data")}
    for type_name, name in re.findall(r"(?<![.\w])((?:sym|aws)_\w+)\.(\w+)", CODE):
        assert (type_name, name) in declared, "%s.%s is referenced but not declared" % (type_name, name)
    for type_name, name, attr in re.findall(r"\bdata\.(sym_\w+)\.(\w+)\[\*\]\.(\w+)", CODE):
        assert (type_name, name) in data_declared
        required, optional = SYM_DATA_SOURCES[type_name]
        assert attr in required | optional | SYM_READ_ONLY, "data.%s has no attribute %s" % (type_name, attr)


def test_circleci_flow_inputs_are_the_flows_prompt_fields():
    config = yaml.safe_load((REPO_ROOT / "deploy" / "circleci" / "config.yml").read_text(encoding="utf-8"))
    (flow,) = [body for t, _, body in blocks("resource") if t == "sym_flow"]
    fields = {f["name"] for f in flow["params"][0]["prompt_field"]}
    requests = [
        job["sym/request"]
        for workflow in config["workflows"].values()
        if isinstance(workflow, dict)
        for job in workflow["jobs"]
        if isinstance(job, dict) and "sym/request" in job
    ]
    assert requests
    for request in requests:
        keys = set(re.findall(r'"(\w+)"\s*:', request["flow_inputs"]))
        assert keys <= fields, "flow_inputs keys the flow does not have: %s" % (keys - fields)
        assert "workflow_id" in keys


def test_secret_is_tagged_for_the_secrets_manager_addon():
    (secret,) = [body for t, _, body in blocks("resource") if t == "aws_secretsmanager_secret"]
    assert secret["tags"] == {"SymEnv": "${local.secrets_tag_value}"}
    (addon,) = [body for entry in TF["module"] for name, body in entry.items() if name == "secrets_manager_access"]
    assert addon["environment"] == "${local.name_prefix}"
    assert addon["count"] == "${local.attach_secrets_addon ? 1 : 0}"
    assert tf_locals(create={"existing_runtime_name": "prod", "existing_secrets_addon_environment": "prod"})[
        "secrets_tag_value"
    ] == "prod"
    assert tf_locals()["secrets_tag_value"] == "circleci-approver"


# ------------------------------------------------------------------------------------------
# locals.tf, evaluated by terraform console (no provider, no network)
# ------------------------------------------------------------------------------------------

LOCALS_INPUTS = {"existing_environment_integrations"}  # defined in main.tf, given as literals here
REQUIRED_VARIABLES = {"sym_org": "acme", "approver_url": "https://approver.example.com"}


def terraform_binary():
    path = shutil.which("terraform")
    if path is None:
        if os.environ.get("DEPLOY_TERRAFORM_REQUIRED") == "1":
            pytest.fail("terraform is not installed (DEPLOY_TERRAFORM_REQUIRED=1)")
        pytest.skip("terraform is not installed: locals.tf not evaluated")
    return path


def tf_console(expression, variables=None, inputs=None):
    """Evaluate an expression against variables.tf + locals.tf; (ok, value or error text)."""
    binary = terraform_binary()
    with tempfile.TemporaryDirectory(prefix="kit-tf-") as tmp:
        work = Path(tmp)
        for name in ("variables.tf", "locals.tf"):
            shutil.copy(SYM_DIR / name, work / name)
        given = {"existing_environment_integrations": None}
        given.update(inputs or {})
        (work / "inputs.tf.json").write_text(json.dumps({"locals": given}), encoding="utf-8")
        values = dict(REQUIRED_VARIABLES)
        values.update(variables or {})
        (work / "test.tfvars.json").write_text(json.dumps(values), encoding="utf-8")
        (work / "empty.tfrc").write_text("", encoding="utf-8")
        env = dict(os.environ, TF_CLI_CONFIG_FILE=str(work / "empty.tfrc"), TF_IN_AUTOMATION="1", CHECKPOINT_DISABLE="1")
        result = subprocess.run(
            [binary, "console", "-var-file=test.tfvars.json"],
            input="jsonencode(%s)\n" % expression, cwd=work, env=env, capture_output=True, text=True, timeout=60,
        )
    if result.returncode != 0:
        return False, result.stdout + result.stderr
    return True, json.loads(json.loads(result.stdout.strip().splitlines()[-1]))


def validation_holds(variable, value):
    """The variable's validation condition (variables.tf), evaluated by Terraform for value.

    (terraform console does not run variable validations itself, so the condition is evaluated
    as an expression.)"""
    (body,) = [b for entry in TF["variable"] for n, b in entry.items() if n == variable]
    condition = body["validation"][0]["condition"]
    assert condition.startswith("${") and condition.endswith("}")
    ok, result = tf_console(condition[2:-1], {variable: value})
    assert ok, result
    return result


def tf_locals(create=None, inputs=None):
    """Every local of locals.tf for these variables (create: variable values)."""
    names = sorted(local_names())
    ok, value = tf_console("{%s}" % ", ".join("%s = local.%s" % (n, n) for n in names), create, inputs)
    assert ok, value
    return value


def local_names():
    parsed = hcl2.load((SYM_DIR / "locals.tf").open(encoding="utf-8"))
    return {name for entry in parsed["locals"] for name in clean(entry)}


def test_locals_tf_reads_only_variables_and_its_declared_inputs():
    text = "\n".join(re.sub(r"#.*$", "", line) for line in (SYM_DIR / "locals.tf").read_text().splitlines())
    referenced = set(re.findall(r"\blocal\.(\w+)", text))
    assert referenced <= local_names() | LOCALS_INPUTS, referenced - local_names() - LOCALS_INPUTS
    assert not re.search(r"\b(data|module)\.\w|\b(sym|aws)_\w+\.\w+\.", text), "locals.tf must not read providers"
    defined_in_main = {name for entry in TF["locals"] for name in entry} - local_names()
    assert LOCALS_INPUTS <= defined_in_main


# Sym's CircleCI example (symopsio/examples advanced/approve_circleci_job/main.tf) and the runtime
# connector it uses with environment "main" (terraform-aws-runtime-connector, secretsmgr-addon).
SYM_EXAMPLE_NAMES = {
    "main", "main-runtime-context", "runtime-main", "SymRuntimeMain", "SymSecretsManagerMain",
    "main-slack", "main-sym-secrets", "circleci", "ci-approval", "sym/main/circleci-api-key",
}


def test_default_names_do_not_collide_with_syms_own_example_setup():
    names = tf_locals()["names"]
    assert names == {
        "runtime": "circleci-approver",
        "runtime_context": "circleci-approver-runtime-context",
        "runtime_role": "SymRuntimeCircleci-Approver",
        "secrets_addon_policy": "SymSecretsManagerCircleci-Approver",
        "secrets_source": "circleci-approver-sym-secrets",
        "webhook_secret": "sym/circleci-approver/circleci-approver-webhook-secret",
        "approver_integration": "circleci-approver-circleci-approver",
        "slack_integration": "circleci-approver-slack",
        "environment": "circleci-approver",
        "kms_policy": "circleci-approver-webhook-secret-kms",
        "flow": "circleci-approver",
    }
    assert not set(names.values()) & SYM_EXAMPLE_NAMES
    assert all(len(names[k]) <= 64 for k in ("runtime_role", "secrets_addon_policy", "kms_policy"))  # IAM limits


def test_names_are_validated():
    for good in ("circleci-approver", "a", "prod_2", "a" * 40):
        assert validation_holds("name_prefix", good) and validation_holds("flow_name", good), good
    for bad in ("", "Main", "-x", "x-", "a b", "a/b", "a" * 41):
        assert not validation_holds("name_prefix", bad) and not validation_holds("flow_name", bad), bad
    assert validation_holds("name_prefix", None)


def test_every_created_name_follows_the_prefix():
    first = tf_locals(create={"name_prefix": "alpha"})["names"]
    second = tf_locals(create={"name_prefix": "beta-2"})["names"]
    for key in first:
        if key == "flow":
            continue
        assert "alpha" in first[key].lower() and "beta-2" in second[key].lower(), key
    longest = tf_locals(create={"name_prefix": "a" * 40})["names"]
    assert len(longest["runtime_role"]) <= 64
    assert tf_locals(create={"flow_name": "deploys"})["names"]["runtime"] == "deploys"  # the flow's name by default


def test_an_older_deployment_keeps_its_names():
    names = tf_locals(create={"name_prefix": "main", "flow_name": "ci-approval"})["names"]
    assert names["environment"] == "main" and names["secrets_source"] == "main-sym-secrets"
    assert names["webhook_secret"] == "sym/main/circleci-approver-webhook-secret"
    assert names["approver_integration"] == "circleci-approver-main"


def test_every_name_in_main_tf_comes_from_the_names_map():
    named = 0
    for type_name, name, body in blocks("resource"):
        if "name" in body:
            assert re.fullmatch(r"\$\{local\.names\.\w+\}", body["name"]), "%s.%s: %s" % (type_name, name, body["name"])
            named += 1
    assert named == 7
    for entry in TF["module"]:
        for name, body in entry.items():
            assert body["environment"] == "${local.name_prefix}", name
    (flow,) = [body for t, _, body in blocks("resource") if t == "sym_flow"]
    assert flow["name"] == "${local.names.flow}"


def go_atoi_accepts(text):
    """strconv.Atoi (base 10: optional sign, decimal digits, within int64)."""
    return re.fullmatch(r"[+-]?[0-9]+", text) is not None and -(2**63) <= int(text) < 2**63


def go_parse_bool_accepts(text):
    """strconv.ParseBool."""
    return text in {"1", "t", "T", "TRUE", "true", "True", "0", "f", "F", "FALSE", "false", "False"}


def test_flow_vars_pass_the_providers_checkFlowVars():
    """terraform-provider-sym sym/provider/flow_resource.go checkFlowVars warns for every value
    strconv.Atoi or strconv.ParseBool accepts: none of the kit's may be one."""
    assert go_atoi_accepts("30") and go_parse_bool_accepts("1")  # what the old form produced
    for budget in (1, 30, 300):
        flow_vars = tf_locals(create={"delivery_budget_seconds": budget})["flow_vars"]
        assert flow_vars["delivery_budget_seconds"] == "%ds" % budget
        for key, value in flow_vars.items():
            assert not go_atoi_accepts(value) and not go_parse_bool_accepts(value), (key, value)
    assert [validation_holds("delivery_budget_seconds", v) for v in (0, 1, 300, 301)] == [False, True, True, False]


KEY_ARN = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def test_a_customer_managed_key_grants_the_runtime_role_kms_decrypt_via_secrets_manager_only():
    values = tf_locals(create={"secrets_kms_key_id": KEY_ARN, "aws_region": "eu-west-1"})
    policy = json.loads(values["kms_decrypt_policy"])
    (statement,) = policy["Statement"]
    assert statement["Effect"] == "Allow" and statement["Action"] == "kms:Decrypt"
    assert statement["Resource"] == KEY_ARN
    assert statement["Condition"]["StringEquals"] == {"kms:ViaService": "secretsmanager.eu-west-1.amazonaws.com"}
    assert statement["Condition"]["StringLike"] == {
        "kms:EncryptionContext:SecretARN": "arn:aws:secretsmanager:eu-west-1:*:secret:"
        "sym/circleci-approver/circleci-approver-webhook-secret-*"
    }
    assert values["kms_key_in_region"] is True and values["kms_grant_has_a_role"] is True
    assert tf_locals()["kms_decrypt_policy"] is None
    # main.tf attaches exactly that document to the runtime's role, only when a key is set.
    (grant,) = [body for t, _, body in blocks("resource") if t == "aws_iam_role_policy"]
    assert grant["count"] == "${var.secrets_kms_key_id == null ? 0 : 1}"
    assert grant["role"] == "${local.runtime_role_name}" and grant["policy"] == "${local.kms_decrypt_policy}"
    (secret,) = [body for t, _, body in blocks("resource") if t == "aws_secretsmanager_secret"]
    assert secret["kms_key_id"] == "${var.secrets_kms_key_id}"
    assert preconditions("aws_iam_role_policy") == ["${local.kms_grant_has_a_role}"]
    assert preconditions("aws_secretsmanager_secret") == ["${local.kms_key_in_region}"]


def test_kms_key_plan_checks():
    other_region = tf_locals(create={"secrets_kms_key_id": KEY_ARN, "aws_region": "us-east-1"})
    assert other_region["kms_key_in_region"] is False
    roleless = tf_locals(create={
        "secrets_kms_key_id": KEY_ARN, "aws_region": "eu-west-1",
        "existing_runtime_name": "prod", "existing_secrets_addon_environment": "prod",
    })
    assert roleless["kms_grant_has_a_role"] is False
    assert validation_holds("secrets_kms_key_id", KEY_ARN) and validation_holds("secrets_kms_key_id", None)
    for not_an_arn in ("alias/approver", "1234abcd-12ab-34cd-56ef-1234567890ab", KEY_ARN.replace(":key/", ":alias/")):
        assert not validation_holds("secrets_kms_key_id", not_an_arn), not_an_arn


def preconditions(type_name, name=None):
    found = []
    for t, n, body in blocks("resource") + [("data." + t, n, b) for t, n, b in blocks("data")]:
        if t == type_name and (name is None or n == name):
            for lifecycle in body.get("lifecycle", []):
                found.extend(p["condition"] for p in lifecycle.get("precondition", []))
    return found


def test_an_existing_environment_without_approver_id_fails_the_plan():
    conditions = preconditions("sym_flow")
    assert conditions[0] == "${local.environment_has_approver}"
    assert "sym_integration.approver.id" in conditions[1]
    missing = tf_locals(
        create={"existing_environment_name": "prod"},
        inputs={"existing_environment_integrations": {"slack_id": "5f1c"}},
    )
    assert missing["environment_has_approver"] is False
    empty = tf_locals(create={"existing_environment_name": "prod"}, inputs={"existing_environment_integrations": {}})
    assert empty["environment_has_approver"] is False
    wired = tf_locals(
        create={"existing_environment_name": "prod"},
        inputs={"existing_environment_integrations": {"slack_id": "5f1c", "approver_id": "9a2b"}},
    )
    assert wired["environment_has_approver"] is True
    assert tf_locals()["environment_has_approver"] is True  # created here, with approver_id


def test_an_existing_runtime_must_say_how_its_role_reads_the_secret():
    assert preconditions("data.sym_runtime") == ["${local.existing_runtime_described}"]
    assert tf_locals(create={"existing_runtime_name": "prod"})["existing_runtime_described"] is False
    assert tf_locals(create={"existing_runtime_name": "prod", "existing_runtime_role_name": "SymRuntimeProd"})[
        "existing_runtime_described"
    ] is True
