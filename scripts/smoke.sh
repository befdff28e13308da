#!/usr/bin/env bash
# Smoke test with curl only: submit a digits job, poll it, download the PNG, check it is one.
#   scripts/smoke.sh [BASE_URL]        (API_KEY=... when the service requires keys)
set -euo pipefail
BASE="${1:-http://127.0.0.1:8000}"
AUTH=()
if [[ -n "${API_KEY:-}" ]]; then AUTH=(-H "Authorization: Bearer ${API_KEY}"); fi
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

curl -fsS --max-time 10 "$BASE/healthz" >/dev/null
job="$(curl -fsS --max-time 30 "${AUTH[@]}" -H 'Content-Type: application/json' \
  -d '{"model": "digits", "prompt": "7", "num_inference_steps": 10, "seed": 7}' "$BASE/v1/txt2img")"
id="$(printf '%s' "$job" | grep -o '"id":"job_[0-9a-f]*"' | head -n1 | cut -d'"' -f4)"
[[ -n "$id" ]] || { echo "smoke: no job id in: $job" >&2; exit 1; }
echo "smoke: submitted $id"

status=""
deadline=$((SECONDS + 120))
while (( SECONDS < deadline )); do
  body="$(curl -fsS --max-time 40 "${AUTH[@]}" "$BASE/v1/jobs/$id?wait=30")"
  status="$(printf '%s' "$body" | grep -o '"status":"[a-z]*"' | head -n1 | cut -d'"' -f4)"
  case "$status" in succeeded|failed|canceled) break ;; esac
done
[[ "$status" == "succeeded" ]] || { echo "smoke: job ended '$status': $body" >&2; exit 1; }

url="$(printf '%s' "$body" | grep -o '"url":"[^"]*"' | head -n1 | cut -d'"' -f4)"
curl -fsS --max-time 30 -o "$out/out.png" "$url"
magic="$(head -c 8 "$out/out.png" | od -An -tx1 | tr -d ' \n')"
[[ "$magic" == "89504e470d0a1a0a" ]] || { echo "smoke: not a PNG (magic $magic)" >&2; exit 1; }
echo "smoke: ok ($id, $(wc -c <"$out/out.png") bytes of PNG)"
