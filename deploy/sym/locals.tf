# Everything this configuration computes from its variables alone: the names of what it creates,
# the flow's variables, the KMS grant, and the plan-time checks. No provider, module or data
# source is referenced here except through the one input main.tf defines
# (local.existing_environment_integrations), so deploy/sym/tests/test_terraform.py evaluates this
# file with `terraform console`, offline, against variables.tf.

locals {
  # ---- Names: every name this configuration creates derives from one prefix ----
  #
  # The default prefix is the flow's name, so a second deployment (another flow_name) and Sym's
  # own examples (runtime "main", integration "main-runtime-context", role "SymRuntimeMain",
  # policy "SymSecretsManagerMain", "main-slack", "main-sym-secrets", flow "ci-approval") never
  # collide with what is created here. With name_prefix set to an older deployment's
  # environment_name (default "main") and flow_name = "ci-approval", every name stays what this
  # kit used to create.
  name_prefix = coalesce(var.name_prefix, var.flow_name)

  names = {
    # Made by module "runtime_connector" from its `environment` input (terraform-aws-runtime-
    # connector v2 main.tf: sym_runtime name, "<environment>-runtime-context", role and policy
    # "SymRuntime${title(environment)}").
    runtime         = local.name_prefix
    runtime_context = "${local.name_prefix}-runtime-context"
    runtime_role    = "SymRuntime${title(local.name_prefix)}"
    # Made by module "secrets_manager_access" (terraform-aws-secretsmgr-addon main.tf:
    # "SymSecretsManager${title(environment)}").
    secrets_addon_policy = "SymSecretsManager${title(local.name_prefix)}"
    # Made here.
    secrets_source       = "${local.name_prefix}-sym-secrets"
    webhook_secret       = "sym/${local.name_prefix}/circleci-approver-webhook-secret"
    approver_integration = "circleci-approver-${local.name_prefix}"
    slack_integration    = "${local.name_prefix}-slack"
    environment          = local.name_prefix
    kms_policy           = "${local.name_prefix}-webhook-secret-kms"
    flow                 = var.flow_name
  }

  # ---- What exists already (data sources) and what is created ----
  create_runtime        = var.existing_runtime_name == null
  create_environment    = var.existing_environment_name == null
  create_slack          = local.create_environment && var.existing_slack_integration_name == null
  create_secrets_source = var.existing_secrets_source_name == null

  # The kit attaches its own Secrets Manager add-on (and, with a KMS key, its kms:Decrypt grant)
  # to the runtime's role when it creates the runtime or is told the existing runtime's role.
  attach_secrets_addon = local.create_runtime || var.existing_runtime_role_name != null

  # The SymEnv tag the secret needs: the kit's own add-on grants secrets tagged with the prefix;
  # an existing runtime whose role already carries an add-on grants its own environment's tag.
  secrets_tag_value = local.attach_secrets_addon ? local.name_prefix : var.existing_secrets_addon_environment

  # ---- The flow's variables (event.flow.vars in impl.py; all strings) ----
  #
  # The provider warns about every value that strconv.Atoi or strconv.ParseBool accepts
  # (terraform-provider-sym sym/provider/flow_resource.go, checkFlowVars), so the budget is
  # written with its unit: "30s", which impl.py reads back.
  flow_vars = {
    approver_url            = var.approver_url
    approvals_channel       = var.approvals_channel
    delivery_budget_seconds = format("%ds", var.delivery_budget_seconds)
  }

  # ---- A customer-managed KMS key: the runtime role may decrypt with it, via Secrets Manager only ----
  #
  # The Secrets Manager add-on grants secretsmanager:GetSecretValue/DescribeSecret and nothing
  # in KMS; a secret encrypted with a customer-managed key also needs kms:Decrypt on that key
  # (AWS Secrets Manager user guide, "Secret encryption and decryption", "Permissions for the
  # KMS key"). kms:ViaService limits the grant to calls Secrets Manager makes on the role's
  # behalf in this region, and the encryption context to this one secret (Secrets Manager puts
  # the secret's ARN in it as kms:EncryptionContext:SecretARN).
  kms_key_partition = var.secrets_kms_key_id == null ? null : split(":", var.secrets_kms_key_id)[1]
  kms_key_region    = var.secrets_kms_key_id == null ? null : split(":", var.secrets_kms_key_id)[3]
  kms_decrypt_policy = var.secrets_kms_key_id == null ? null : jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid      = "DecryptTheWebhookSecretThroughSecretsManager"
      Effect   = "Allow"
      Action   = "kms:Decrypt"
      Resource = var.secrets_kms_key_id
      Condition = {
        StringEquals = {
          "kms:ViaService" = "secretsmanager.${var.aws_region}.amazonaws.com"
        }
        StringLike = {
          "kms:EncryptionContext:SecretARN" = "arn:${local.kms_key_partition}:secretsmanager:${var.aws_region}:*:secret:${local.names.webhook_secret}-*"
        }
      }
    }]
  })

  # ---- Plan-time checks (preconditions in main.tf; messages there) ----

  # An existing runtime: the kit must know either its role (to attach its add-on and KMS grant)
  # or the environment its role's add-on was made for (to tag the secret so it can be read).
  existing_runtime_described = local.attach_secrets_addon || var.existing_secrets_addon_environment != null

  # A KMS grant needs a role to attach to.
  kms_grant_has_a_role = var.secrets_kms_key_id == null || local.attach_secrets_addon

  # The secret and its key live in one region.
  kms_key_in_region = var.secrets_kms_key_id == null || local.kms_key_region == var.aws_region

  # An existing environment must carry approver_id, or every approval fails at the hook
  # (impl.py reads event.flow.environment.integrations["approver"]). The data source reads the
  # environment's integrations map at plan time (terraform-provider-sym
  # sym/provider/environment_data_source.go: "integrations", set from the API's Environment).
  environment_has_approver = local.create_environment || can(local.existing_environment_integrations["approver_id"])
}
