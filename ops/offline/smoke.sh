#!/usr/bin/env bash
# Smoke test of a running chatq: the model registry checks out, /readyz answers ready,
# then one job runs to success.
#
#   ./smoke.sh                      # against http://127.0.0.1:8000
#   CHATQ_URL=http://host:8000 CHATQ_API_KEY=... ./smoke.sh
#
# The registry check runs `python -m shared.registry check` in the running api
# container (every model's options, every GGUF file under /models; the workers hold
# the options against their own llama.cpp build, and an upstream worker its API key
# variable, when they start). CHATQ_SMOKE_CHECK
# replaces that command (e.g. `.venv/bin/python -m shared.registry check FILE` outside
# Docker); CHATQ_SMOKE_CHECK=skip skips it.
# CHATQ_SMOKE_TIMEOUT (seconds, default 120) bounds the wait for readiness and
# for the job; CHATQ_SMOKE_MODEL picks a model (default: the default model).
# Exits 0 when the job succeeded, nonzero with the reason otherwise.
set -euo pipefail
url=${CHATQ_URL:-http://127.0.0.1:8000}
timeout=${CHATQ_SMOKE_TIMEOUT:-120}
auth=()
[ -z "${CHATQ_API_KEY:-}" ] || auth=(-H "Authorization: Bearer $CHATQ_API_KEY")
fail() { echo "smoke: FAILED: $*" >&2; exit 1; }
field() { grep -o "\"$1\":\"[^\"]*\"" | head -1 | cut -d'"' -f4; }
deadline=$((SECONDS + timeout))

check=${CHATQ_SMOKE_CHECK:-docker-compose exec -T api python -m shared.registry check --no-build --no-keys /etc/chatq/models.toml}
if [ "$check" != skip ]; then
  report=$(bash -c "$check" 2>&1) || fail "the model registry does not check out ($check):
$report"
  echo "smoke: the model registry checks out"
  sed 's/^/smoke:   /' <<<"$report"
fi

while :; do
  ready=$(curl -s -o /dev/null -w '%{http_code}' "$url/readyz" || true)
  [ "$ready" = 200 ] && break
  [ "$SECONDS" -lt "$deadline" ] ||
    fail "$url/readyz answered ${ready:-nothing} for ${timeout}s: $(curl -s "$url/readyz" || true)"
  sleep 1
done
echo "smoke: $url/readyz is ready"

model=""
[ -z "${CHATQ_SMOKE_MODEL:-}" ] || model="\"model\":\"$CHATQ_SMOKE_MODEL\","
body="{$model\"messages\":[{\"role\":\"user\",\"content\":\"Say hello.\"}],\"max_tokens\":8}"
response=$(curl -s -w '\n%{http_code}' -X POST "$url/v1/jobs" "${auth[@]}" \
  -H 'Content-Type: application/json' -H 'Prefer: respond-async' -d "$body") ||
  fail "POST $url/v1/jobs: no answer"
code=$(tail -n1 <<<"$response")
[ "$code" = 202 ] || fail "POST /v1/jobs answered $code: $(head -n -1 <<<"$response")"
job=$(head -n -1 <<<"$response" | field id)
[ -n "$job" ] || fail "POST /v1/jobs gave no job id: $response"
echo "smoke: job $job queued"

while :; do
  current=$(curl -s "${auth[@]}" "$url/v1/jobs/$job") || fail "GET /v1/jobs/$job: no answer"
  status=$(field status <<<"$current")
  case "$status" in
    succeeded) echo "smoke: job $job succeeded: $current"; exit 0 ;;
    failed|cancelled) fail "job $job $status: $current" ;;
  esac
  [ "$SECONDS" -lt "$deadline" ] || fail "job $job still ${status:-unknown} after ${timeout}s"
  sleep 0.5
done
