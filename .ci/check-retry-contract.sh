#!/usr/bin/env bash
# The hook's retry contract, as deploy/sym/impl.py implements it: Sym does not retry a failed
# hook (nothing Sym documents says it does); each hook retries its own delivery, within
# delivery_budget_seconds (1-300 s, default 30 s). Any statement in the docs, the deploy kit or
# the source comments that has Sym retrying or redelivering contradicts it, and misleads whoever
# sizes downtime, retention or alerts on it.
#
#   bash .ci/check-retry-contract.sh          # run by .ci/deploy-checks.sh
#
# Prints every offending line (file:line: text) and exits 1 if there is one.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Sym (or Sym's) retries / retried / will retry / redelivers / retry window ..., "retried by Sym".
pattern="\\bSym('s)?( own)? (retries|retried|retry|retrying|will retry|re-?deliver[a-z]*|re-?sends?)\\b"
pattern="${pattern}|\\b(retried|redelivered|re-?sent) by Sym\\b"
pattern="${pattern}|\\bSym('s)? retry (window|policy|budget)\\b"

files=()
while IFS= read -r -d '' file; do
  [ -f "${file}" ] && files+=("${file}")
done < <(git ls-files -z --cached --others --exclude-standard -- README.md 'docs/*.md' 'deploy/*' '.ci/*' \
  'src/*.rs' 'tests/*.rs' |
  grep -z -v -e '^\.ci/check-retry-contract\.sh$' -e '\.json$' -e '\.svg$')

if [ "${#files[@]}" -eq 0 ]; then
  echo "no files to check" >&2
  exit 1
fi

if grep -n -i -E "${pattern}" "${files[@]}"; then
  echo "retry contract: the lines above say Sym retries or redelivers; the hook retries itself" \
    "(deploy/sym/impl.py, delivery_budget_seconds) and Sym does not: reword them." >&2
  exit 1
fi
echo "retry contract: ${#files[@]} files checked, no statement that Sym retries"
