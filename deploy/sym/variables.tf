variable "sym_org" {
  description = "Your Sym organization slug (the first part of every SRN, e.g. acme)."
  type        = string
}

variable "environment_name" {
  description = "Name of the Sym environment; also the SymEnv tag that lets the Sym runtime read the AWS secret."
  type        = string
  default     = "main"
}

variable "aws_region" {
  description = "AWS region holding the Secrets Manager secret with the webhook secret."
  type        = string
  default     = "us-east-1"
}

variable "slack_workspace_id" {
  description = "Slack workspace (team) id, e.g. T123ABC, where approvers answer requests."
  type        = string
}

variable "approvals_channel" {
  description = "Slack channel that receives the approval requests."
  type        = string
  default     = "#ci-approvals"
}

variable "errors_channel" {
  description = "Slack channel that receives Sym flow errors (for example a failed delivery to the approver)."
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
