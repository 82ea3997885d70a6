"""deploy/sym/*.tf parsed with python-hcl2 and checked against the provider's documented schema.

`terraform validate` needs the providers and modules from the Terraform registry, which this
machine cannot reach; so this test (and `terraform fmt -check` where terraform is installed) is
what checks the configuration here. Every attribute used must be in the schema below, which was
copied from the provider's own docs and source (docs/deploy.md cites each file), and every
required one must be set.
"""

import re

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

# hashicorp/aws: aws_secretsmanager_secret (the attributes used here).
AWS_RESOURCES = {
    "aws_secretsmanager_secret": (set(), {"name", "description", "kms_key_id", "tags"}),
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
    assert {p.name for p in SYM_DIR.glob("*.tf")} == {"main.tf", "variables.tf", "versions.tf"}
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
    assert set(flow["vars"]) == {"approver_url", "approvals_channel", "delivery_budget_seconds"}


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
    assert secret["tags"] == {"SymEnv": "${var.environment_name}"}
    (addon,) = [body for entry in TF["module"] for name, body in entry.items() if name == "secrets_manager_access"]
    assert addon["environment"] == "${var.environment_name}"

