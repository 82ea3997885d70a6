variable "sym_org" {
  description = "Your Sym organization slug (the first part of every SRN, e.g. acme)."
  type        = string
}

variable "name_prefix" {
  description = "Prefix of every name this configuration creates (runtime, its IAM role and policies, secrets source, secret, integrations, environment; `terraform output created_names` lists them). null: the flow's name. An older deployment of this kit keeps its names with name_prefix = its former environment_name (default \"main\") and flow_name = \"ci-approval\"."
  type        = string
  default     = null

  validation {
    condition     = var.name_prefix == null || can(regex("^[a-z0-9]([a-z0-9_-]{0,38}[a-z0-9])?$", var.name_prefix))
    error_message = "name_prefix must be 1-40 lowercase letters, digits, '-' or '_' (it becomes Sym slugs and AWS IAM names), starting and ending with a letter or digit."
  }
}

variable "aws_region" {
  description = "AWS region holding the Secrets Manager secret with the webhook secret."
  type        = string
  default     = "us-east-1"
}

# ---- An org that already runs Sym: name what exists instead of creating it ----

variable "existing_runtime_name" {
  description = "Name of an existing sym_runtime to use (data source). null: create one with the runtime connector v2 module."
  type        = string
  default     = null
}

variable "existing_runtime_role_name" {
  description = "With existing_runtime_name: the IAM role name of that runtime's connector; this configuration attaches its own Secrets Manager add-on (and, with secrets_kms_key_id, a kms:Decrypt grant) to it. null: the role already has an add-on, named by existing_secrets_addon_environment."
  type        = string
  default     = null
}

variable "existing_secrets_addon_environment" {
  description = "With existing_runtime_name and no existing_runtime_role_name: the `environment` the role's Secrets Manager add-on was made for; the webhook secret is tagged SymEnv with it so that add-on can read it. Ignored otherwise (the secret is then tagged with the name prefix, which the add-on attached here grants)."
  type        = string
  default     = null
}

variable "existing_secrets_source_name" {
  description = "Name of an existing sym_secrets source of type aws_secrets_manager (data source). null: create one."
  type        = string
  default     = null
}

variable "existing_environment_name" {
  description = "Name of an existing sym_environment for the flow (data source). null: create one, with the Slack integration and an error logger. An existing environment must list approver_id = <output approver_integration_id> in its integrations."
  type        = string
  default     = null
}

variable "existing_slack_integration_name" {
  description = "Name of an existing Slack sym_integration for the environment created here (data source). null: create one (needs slack_workspace_id)."
  type        = string
  default     = null
}

variable "slack_workspace_id" {
  description = "Slack workspace (team) id, e.g. T123ABC; required only when the Slack integration is created here."
  type        = string
  default     = null
}

# ---- The flow ----

variable "approvals_channel" {
  description = "Slack channel that receives the approval requests."
  type        = string
  default     = "#ci-approvals"
}

variable "errors_channel" {
  description = "Slack channel that receives Sym flow errors (for example a failed approve delivery, which the hook raises after telling the approver); used by the environment created here."
  type        = string
  default     = "#sym-errors"
}

variable "approver_url" {
  description = "Base URL of the sym-circleci-approver service as Sym reaches it (HTTPS), without a trailing slash; the hook posts to <approver_url>/webhooks/sym."
  type        = string

  validation {
    condition     = can(regex("^https://[^/]+(/.*[^/])?$", var.approver_url))
    error_message = "approver_url must be an https:// URL without a trailing slash."
  }
}

variable "delivery_budget_seconds" {
  description = "Total time each hook (after_request, after_approve, after_deny) keeps retrying one delivery to the service (429/503 with Retry-After, other 5xx, connection errors). Passed to the flow as \"<n>s\"."
  type        = number
  default     = 30

  validation {
    condition     = var.delivery_budget_seconds >= 1 && var.delivery_budget_seconds <= 300
    error_message = "delivery_budget_seconds must be between 1 and 300."
  }
}

variable "flow_name" {
  description = "Name of the Sym flow; CircleCI refers to it as <sym_org>:flow:<flow_name>:latest. Also the default name_prefix. (Sym's own CircleCI example is called ci-approval: the default differs so both can live in one org.)"
  type        = string
  default     = "circleci-approver"

  validation {
    condition     = can(regex("^[a-z0-9]([a-z0-9_-]{0,38}[a-z0-9])?$", var.flow_name))
    error_message = "flow_name must be 1-40 lowercase letters, digits, '-' or '_', starting and ending with a letter or digit."
  }
}

variable "secrets_kms_key_id" {
  description = "Optional customer-managed KMS key for the webhook secret, as a key ARN (arn:aws:kms:<region>:<account>:key/<id>) in aws_region; the runtime's role is granted kms:Decrypt on it through Secrets Manager. The key policy must let IAM policies of the account grant it (the default key policy does). null: the AWS managed key aws/secretsmanager."
  type        = string
  default     = null

  validation {
    condition     = var.secrets_kms_key_id == null || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[A-Za-z0-9-]+$", var.secrets_kms_key_id))
    error_message = "secrets_kms_key_id must be a KMS key ARN (arn:aws:kms:<region>:<account>:key/<key id>): an IAM grant names the key by ARN (an alias or bare key id is not enough)."
  }
}
