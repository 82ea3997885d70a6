#!/usr/bin/env bash
# Sends a generic approval event to sym-circleci-approver, signed as Standard Webhooks, from any
# system that can run a script after an approval (a Slack workflow step, a ticketing system's
# automation). Needs bash, openssl, curl and coreutils; nothing else.
#
#   APPROVER_URL=https://approver.example.com \
#   APPROVER_WEBHOOK_SECRET=whsec_... \
#     send-approval.sh <workflow_id> <approve|deny> <approver> [hold_job_name] [request_id]
#
# The body follows docs/approval-event.schema.json. request_id identifies the request in your
# system (default: a random one): the same request id and decision sent again is answered
# "duplicate" and changes nothing, so retrying this script is safe. Exit 0 on a 2xx answer.
#
# The secret is read from the environment (or APPROVER_WEBHOOK_SECRET_FILE), never from the
# command line. openssl receives the HMAC key as an argument (hexkey:...), so it is visible to
# other users of the same machine while it runs: run this where nobody else can list processes
# (a CI container, a serverless function).
set -euo pipefail

usage() {
  echo "usage: APPROVER_URL=... APPROVER_WEBHOOK_SECRET=whsec_... $0 <workflow_id> <approve|deny> <approver> [hold_job_name] [request_id]" >&2
  exit 2
}
[ "$#" -ge 3 ] || usage
workflow_id=$1
decision=$2
approver=$3
hold_job_name=${4:-}
request_id=${5:-req_$(openssl rand -hex 12)}
: "${APPROVER_URL:?APPROVER_URL is not set (the base URL of the service)}"
if [ -n "${APPROVER_WEBHOOK_SECRET_FILE:-}" ]; then
  APPROVER_WEBHOOK_SECRET=$(cat "${APPROVER_WEBHOOK_SECRET_FILE}")
fi
: "${APPROVER_WEBHOOK_SECRET:?APPROVER_WEBHOOK_SECRET (or APPROVER_WEBHOOK_SECRET_FILE) is not set}"

case "${decision}" in
  approve | deny) ;;
  *) echo "decision must be approve or deny, not '${decision}'" >&2; exit 2 ;;
esac
uuid_re='^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$'
if ! [[ "${workflow_id}" =~ ${uuid_re} ]]; then
  echo "workflow_id must be a CircleCI workflow UUID" >&2
  exit 2
fi

# A JSON string: backslash and double quote escaped; control characters refused.
json_string() {
  local s=$1
  if [[ "${s}" =~ [[:cntrl:]] ]]; then
    echo "control characters are not allowed in '${s}'" >&2
    exit 2
  fi
  local bs=\\ q='"'
  s=${s//"${bs}"/"${bs}${bs}"}
  s=${s//"${q}"/"${bs}${q}"}
  printf '"%s"' "${s}"
}

body="{\"request_id\":$(json_string "${request_id}"),\"decision\":\"${decision}\""
body="${body},\"workflow_id\":\"${workflow_id}\",\"approver\":$(json_string "${approver}")"
if [ -n "${hold_job_name}" ]; then
  body="${body},\"hold_job_name\":$(json_string "${hold_job_name}")"
fi
body="${body}}"

# Standard Webhooks: HMAC-SHA256 over "<msg id>.<timestamp>.<body>" with the base64-decoded
# part of the whsec_ secret, base64, sent as "v1,<signature>".
secret=${APPROVER_WEBHOOK_SECRET#whsec_}
while [ $((${#secret} % 4)) -ne 0 ]; do secret="${secret}="; done
key_hex=$(printf '%s' "${secret}" | base64 -d | od -An -v -tx1 | tr -d ' \n')
msg_id="msg_$(openssl rand -hex 16)"
timestamp=$(date +%s)
signature=$(printf '%s.%s.%s' "${msg_id}" "${timestamp}" "${body}" |
  openssl dgst -sha256 -mac HMAC -macopt "hexkey:${key_hex}" -binary | openssl base64 -A)

curl -sS --fail-with-body --max-time 30 --retry 3 \
  -X POST "${APPROVER_URL%/}/webhooks/approval" \
  -H 'Content-Type: application/json' \
  -H "webhook-id: ${msg_id}" \
  -H "webhook-timestamp: ${timestamp}" \
  -H "webhook-signature: v1,${signature}" \
  --data-binary "${body}"
echo
