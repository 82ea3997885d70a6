variable "sym_org" {
  description = "Your Sym organization slug (the first part of every SRN, e.g. acme)."
  type        = string
}

variable "environment_name" {
  description = "Name of the Sym environment created here, and the SymEnv tag value the Secrets Manager add-on grants access to. With an existing runtime, use the environment its Secrets Manager add-on was configured with."
  type        = string
  default     = "main"
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
  description = "With existing_runtime_name: the IAM role name of that runtime's connector, to attach the Secrets Manager add-on to. null: the role already has the add-on for environment_name."
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
  description = "Slack channel that receives Sym flow errors (for example a failed delivery to the approver); used by the environment created here."
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
  description = "Total time the after_approve hook keeps retrying one delivery to the service (429/503 with Retry-After, other 5xx, connection errors)."
  type        = number
  default     = 30

  validation {
    condition     = var.delivery_budget_seconds >= 1 && var.delivery_budget_seconds <= 300
    error_message = "delivery_budget_seconds must be between 1 and 300."
  }
}

variable "flow_name" {
  description = "Name of the Sym flow; CircleCI refers to it as <sym_org>:flow:<flow_name>:latest."
  type        = string
  default     = "ci-approval"
}

variable "secrets_kms_key_id" {
  description = "Optional customer-managed KMS key (id or ARN) for the webhook secret; null uses the AWS managed key."
  type        = string
  default     = null
}
