# Sym side of sym-circleci-approver: an API-only approval flow whose after_approve hook
# (impl.py) posts a signed Standard Webhooks event to the approver service.
#
# Order of operations (docs/deploy.md has the full runbook):
#   1. terraform apply (creates the flow and an EMPTY Secrets Manager secret);
#   2. put the webhook secret in it (the same whsec_ value the service is configured with):
#        aws secretsmanager put-secret-value --secret-id <output webhook_secret_name> \
#          --secret-string "$(cat webhook-secret)"
#   3. point CircleCI's sym/request at the flow SRN (output flow_srn).

provider "sym" {
  org = var.sym_org
}

provider "aws" {
  region = var.aws_region
}

############ Secrets: let the Sym runtime read one AWS Secrets Manager secret ############

# An IAM role the Sym runtime assumes; the aws/secretsmgr add-on only grants access to secrets
# tagged SymEnv = <environment>.
module "runtime_connector" {
  # checkov:skip=CKV_TF_1:A Terraform Registry module, pinned by version; registry modules have no commit to pin
  source  = "symopsio/runtime-connector/aws"
  version = "~> 1.0"

  addons      = ["aws/secretsmgr"]
  environment = var.environment_name
}

resource "sym_integration" "runtime_context" {
  type = "permission_context"
  name = "runtime-${var.environment_name}"

  external_id = module.runtime_connector.settings.account_id
  settings    = module.runtime_connector.settings
}

# The secrets source: AWS Secrets Manager, read through the runtime role above.
resource "sym_secrets" "this" {
  type = "aws_secrets_manager"
  name = var.environment_name

  settings = {
    context_id = sym_integration.runtime_context.id
  }
}

# Holds the Standard Webhooks secret (whsec_...). Created empty: the value never passes through
# Terraform state. Rotation is a two-sided, manual procedure (docs/deploy.md), so no automatic
# rotation Lambda is attached.
resource "aws_secretsmanager_secret" "webhook_secret" {
  # checkov:skip=CKV2_AWS_57:Rotation must be coordinated with the approver service (both secrets configured first), see docs/deploy.md
  name        = "sym/${var.environment_name}/circleci-approver-webhook-secret"
  description = "Standard Webhooks secret shared by the Sym CI approval flow and sym-circleci-approver"
  kms_key_id  = var.secrets_kms_key_id

  tags = {
    # Required: must equal the runtime_connector environment (aws/secretsmgr add-on scope).
    SymEnv = var.environment_name
  }
}

# Sym's handle on that secret; impl.py reads it with retrieve_value().
resource "sym_secret" "webhook_secret" {
  path      = aws_secretsmanager_secret.webhook_secret.name
  source_id = sym_secrets.this.id
}

# A custom integration is how hooks get at secrets: impl.py reads
# event.flow.environment.integrations["approver"].settings["secrets"][0].
resource "sym_integration" "approver" {
  type        = "custom"
  name        = "circleci-approver-${var.environment_name}"
  external_id = var.approver_url

  settings = {
    secret_ids_json = jsonencode([sym_secret.webhook_secret.id])
  }
}

############ Environment ############

resource "sym_integration" "slack" {
  type        = "slack"
  name        = "${var.environment_name}-slack"
  external_id = var.slack_workspace_id
}

resource "sym_error_logger" "slack" {
  integration_id = sym_integration.slack.id
  destination    = var.errors_channel
}

resource "sym_environment" "this" {
  name            = var.environment_name
  error_logger_id = sym_error_logger.slack.id

  integrations = {
    slack_id = sym_integration.slack.id
    # The key minus "_id" is the name impl.py uses: integrations["approver"].
    approver_id = sym_integration.approver.id
  }
}

############ The flow ############

resource "sym_flow" "ci_approval" {
  name  = var.flow_name
  label = "CI deploy approval"

  implementation = "${path.module}/impl.py"
  environment_id = sym_environment.this.id

  # Read by impl.py through event.flow.vars.
  vars = {
    approver_url      = var.approver_url
    approvals_channel = var.approvals_channel
  }

  params {
    # Only CircleCI (through the Sym API / orb) may open requests; nobody can start one from
    # Slack by hand.
    allowed_sources = ["api"]

    # Approving releases a CircleCI hold job; that cannot be taken back, so offer no "revoke".
    allow_revoke = false

    # The keys of sym/request's flow_inputs.
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
