# Sym side of sym-circleci-approver: an API-only approval flow whose after_approve hook
# (impl.py) posts a signed Standard Webhooks event to the approver service.
#
# Works for a new Sym org (everything created here) and for an org that already runs Sym: the
# runtime, the environment, the Slack integration and the secrets source can each name an
# existing one (data sources) instead. Every name created here derives from one prefix
# (locals.tf: name_prefix, the flow's name by default), so nothing collides with Sym's own
# examples or another deployment. docs/deploy.md has the runbook and, for every resource and
# attribute below, the provider documentation and source it was checked against.
#
# Order of operations:
#   1. terraform apply (creates the flow and an EMPTY Secrets Manager secret);
#   2. put the webhook secret in it (the same whsec_ value the service is configured with):
#        aws secretsmanager put-secret-value --secret-id "$(terraform output -raw webhook_secret_name)" \
#          --secret-string "$(cat webhook-secret)"
#   3. point CircleCI's sym/request at the flow SRN (output flow_srn).

provider "sym" {
  org = var.sym_org
}

provider "aws" {
  region = var.aws_region
}

locals {
  # IAM role the Secrets Manager add-on policy (and a KMS grant) is attached to: the new runtime
  # connector's role, or the existing runtime's role when named (null: the existing role already
  # has an add-on, for var.existing_secrets_addon_environment).
  runtime_role_name = local.create_runtime ? one(module.runtime_connector[*].sym_runtime_connector_role.name) : var.existing_runtime_role_name

  # one(concat(...)): exactly one of the two lists has an element, so no [0] on an empty one.
  runtime_id           = one(concat(module.runtime_connector[*].sym_runtime.id, data.sym_runtime.existing[*].id))
  runtime_context_id   = one(concat(module.runtime_connector[*].sym_integration.id, data.sym_runtime.existing[*].context_id))
  secrets_source_id    = one(concat(sym_secrets.this[*].id, data.sym_secrets.existing[*].id))
  slack_integration_id = one(concat(sym_integration.slack[*].id, data.sym_integration.slack[*].id))
  environment_id       = one(concat(sym_environment.this[*].id, data.sym_environment.existing[*].id))

  # The one input locals.tf takes from a data source: an existing environment's integrations map
  # (null when the environment is created here).
  existing_environment_integrations = one(data.sym_environment.existing[*].integrations)
}

############ Runtime: the AWS IAM role Sym assumes, and Secrets Manager access for it ############

# Runtime connector v2: an IAM role for the Sym runtime plus the sym_integration
# (permission_context) and sym_runtime that point Sym at it (module outputs sym_integration,
# sym_runtime, sym_runtime_connector_role).
module "runtime_connector" {
  # checkov:skip=CKV_TF_1:A Terraform Registry module, pinned by version; registry modules have no commit to pin
  count = local.create_runtime ? 1 : 0

  source  = "symopsio/runtime-connector/aws"
  version = "~> 2.0"

  # Names the runtime, its permission-context integration and its IAM role and policy
  # (local.names.runtime, .runtime_context, .runtime_role).
  environment = local.name_prefix
}

data "sym_runtime" "existing" {
  count = local.create_runtime ? 0 : 1

  name = var.existing_runtime_name

  lifecycle {
    precondition {
      condition     = local.existing_runtime_described
      error_message = "existing_runtime_name needs one of: existing_runtime_role_name (the runtime's IAM role: this configuration attaches its own Secrets Manager add-on there), or existing_secrets_addon_environment (the environment the role's add-on was made for: the secret is tagged SymEnv with it). Without either, the secret would not be readable by the runtime."
    }
  }
}

# The Secrets Manager add-on (v2 form: its own module, attached to the runtime role). It grants
# secretsmanager:GetSecretValue/DescribeSecret on secrets tagged SymEnv = environment, and
# nothing in KMS (terraform-aws-secretsmgr-addon main.tf).
module "secrets_manager_access" {
  # checkov:skip=CKV_TF_1:A Terraform Registry module, pinned by version; registry modules have no commit to pin
  count = local.attach_secrets_addon ? 1 : 0

  source  = "symopsio/secretsmgr-addon/aws"
  version = "~> 1.1"

  # Names its policy (local.names.secrets_addon_policy) and is the SymEnv tag value it grants.
  environment   = local.name_prefix
  iam_role_name = local.runtime_role_name
}

# With a customer-managed KMS key, reading the secret also needs kms:Decrypt on that key, which
# the add-on does not grant: without this, every retrieve_value() in impl.py is denied. Scoped to
# Secrets Manager in this region and to this secret (locals.tf, kms_decrypt_policy).
resource "aws_iam_role_policy" "webhook_secret_kms" {
  count = var.secrets_kms_key_id == null ? 0 : 1

  name   = local.names.kms_policy
  role   = local.runtime_role_name
  policy = local.kms_decrypt_policy

  lifecycle {
    precondition {
      condition     = local.kms_grant_has_a_role
      error_message = "secrets_kms_key_id is set, so the runtime's role needs kms:Decrypt on that key: with existing_runtime_name, also set existing_runtime_role_name (or grant kms:Decrypt to that role yourself and leave secrets_kms_key_id unset here)."
    }
  }
}

############ Secrets: the Standard Webhooks secret, read by impl.py through Sym ############

# The secrets source: AWS Secrets Manager, read with the runtime's permission context.
resource "sym_secrets" "this" {
  count = local.create_secrets_source ? 1 : 0

  type = "aws_secrets_manager"
  name = local.names.secrets_source

  settings = {
    context_id = local.runtime_context_id
  }
}

data "sym_secrets" "existing" {
  count = local.create_secrets_source ? 0 : 1

  type = "aws_secrets_manager"
  name = var.existing_secrets_source_name
}

# Holds the Standard Webhooks secret (whsec_...). Created empty: the value never passes through
# Terraform state. Rotation is a two-sided, manual procedure (docs/deploy.md), so no automatic
# rotation Lambda is attached.
resource "aws_secretsmanager_secret" "webhook_secret" {
  # checkov:skip=CKV2_AWS_57:Rotation must be coordinated with the approver service (both secrets configured first), see docs/deploy.md
  name        = local.names.webhook_secret
  description = "Standard Webhooks secret shared by the Sym CI approval flow and sym-circleci-approver"
  kms_key_id  = var.secrets_kms_key_id

  tags = {
    # Required: the Secrets Manager add-on only grants access to secrets whose SymEnv tag equals
    # its environment.
    SymEnv = local.secrets_tag_value
  }

  lifecycle {
    precondition {
      condition     = local.kms_key_in_region
      error_message = "secrets_kms_key_id must be a key in aws_region (the secret is created there, and Secrets Manager uses a key of its own region)."
    }
  }
}

# Sym's handle on that secret; impl.py reads it with retrieve_value().
resource "sym_secret" "webhook_secret" {
  path      = aws_secretsmanager_secret.webhook_secret.name
  source_id = local.secrets_source_id
  label     = "sym-circleci-approver webhook secret"
}

# A custom integration is how hooks get at secrets: impl.py reads
# event.flow.environment.integrations["approver"].settings["secrets"][0].
resource "sym_integration" "approver" {
  type        = "custom"
  name        = local.names.approver_integration
  external_id = var.approver_url

  settings = {
    secret_ids_json = jsonencode([sym_secret.webhook_secret.id])
  }
}

############ Environment: new (with its Slack integration and error logger) or existing ############

resource "sym_integration" "slack" {
  count = local.create_slack ? 1 : 0

  type        = "slack"
  name        = local.names.slack_integration
  external_id = var.slack_workspace_id

  lifecycle {
    precondition {
      condition     = var.slack_workspace_id != null
      error_message = "slack_workspace_id is required when this configuration creates the Slack integration (set it, or name an existing one with existing_slack_integration_name)."
    }
  }
}

data "sym_integration" "slack" {
  count = local.create_environment && !local.create_slack ? 1 : 0

  type = "slack"
  name = var.existing_slack_integration_name
}

resource "sym_error_logger" "slack" {
  count = local.create_environment ? 1 : 0

  integration_id = local.slack_integration_id
  destination    = var.errors_channel
}

resource "sym_environment" "this" {
  count = local.create_environment ? 1 : 0

  name            = local.names.environment
  runtime_id      = local.runtime_id
  error_logger_id = one(sym_error_logger.slack[*].id)

  integrations = {
    slack_id = local.slack_integration_id
    # The key minus "_id" is the name impl.py uses: integrations["approver"].
    approver_id = sym_integration.approver.id
  }
}

# An existing environment is managed elsewhere: add
#   approver_id = "<terraform output approver_integration_id>"
# to its integrations map there, or the hook cannot read the webhook secret. The flow's
# preconditions below stop the plan until it is there (docs/deploy.md: apply
# -target=sym_integration.approver first, wire the id, then apply).
data "sym_environment" "existing" {
  count = local.create_environment ? 0 : 1

  name = var.existing_environment_name
}

############ The flow ############

resource "sym_flow" "ci_approval" {
  name  = local.names.flow
  label = "CI deploy approval"

  # Provider 3.x takes the file's contents (docs/guides/version-3-upgrade).
  implementation = file("${path.module}/impl.py")
  environment_id = local.environment_id

  # Read by impl.py through event.flow.vars (all values are strings; locals.tf).
  vars = local.flow_vars

  params {
    # Only CircleCI (through the Sym API / orb) may open requests; nobody can start one from
    # Slack by hand.
    allowed_sources = ["api"]

    # Nothing is escalated (no strategy), so there is nothing to revoke; schedule_deescalation
    # keeps its default (true), so "at least one of the two is true" holds.
    allow_revoke = false

    # The keys of sym/request's flow_inputs. prompt_field.required defaults to true.
    prompt_field {
      name     = "workflow_id"
      label    = "CircleCI workflow id"
      type     = "string"
      required = true
    }

    prompt_field {
      name     = "workflow_url"
      label    = "CircleCI workflow URL"
      type     = "string"
      required = false
    }

    prompt_field {
      name     = "merging_user"
      label    = "User who triggered the deploy"
      type     = "string"
      required = false
    }

    # Which approval job to release (staging and production gates in one workflow); empty means
    # the service's default. The service approves only names listed in its HOLD_JOB_NAMES.
    prompt_field {
      name     = "hold_job_name"
      label    = "CircleCI approval job to release"
      type     = "string"
      required = false
    }
  }

  lifecycle {
    precondition {
      condition     = local.environment_has_approver
      error_message = "The existing Sym environment (existing_environment_name) has no approver_id in its integrations, so every approval would fail at the hook (it reads the webhook secret from event.flow.environment.integrations[\"approver\"]). Create the integration first (terraform apply -target=sym_integration.approver), add approver_id = <terraform output approver_integration_id> to that environment's integrations where it is managed, then apply again."
    }
    precondition {
      # Unknown until sym_integration.approver exists: then checked at apply, before the flow is written.
      condition     = local.create_environment || try(local.existing_environment_integrations["approver_id"], null) == sym_integration.approver.id
      error_message = "The existing Sym environment's approver_id is not this configuration's approver integration (terraform output approver_integration_id): the hook would read another integration's secret. Set approver_id to that output where the environment is managed."
    }
  }
}

output "flow_srn" {
  description = "Use as flow_srn in CircleCI's sym/request job."
  value       = "${var.sym_org}:flow:${sym_flow.ci_approval.name}:latest"
}

output "webhook_secret_name" {
  description = "Secrets Manager secret to fill with the whsec_ webhook secret."
  value       = aws_secretsmanager_secret.webhook_secret.name
}

output "approver_integration_id" {
  description = "The custom integration holding the webhook secret; an existing environment needs approver_id = this in its integrations."
  value       = sym_integration.approver.id
}

output "environment_id" {
  description = "The Sym environment the flow runs in (created here, or the existing one)."
  value       = local.environment_id
}

output "created_names" {
  description = "The name of everything this configuration creates (all derived from name_prefix); pieces named by existing_* variables are not created."
  value       = local.names
}
