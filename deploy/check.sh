#!/usr/bin/env bash
# Checks every deployment file offline (after deploy/tools.sh installed the tools once):
#
#   - the Helm chart: `helm lint --strict` and `helm template` with the default values, with
#     helm/corriente/values-production.yaml, and with a variant turning on what neither does;
#     every rendered manifest validated against the Kubernetes 1.35 schemas
#     (kubernetes-validate --strict). The ServiceMonitor is a Prometheus Operator CRD that
#     kubernetes-validate has no schema for: it is taken out before that validation and
#     checked here instead (its port must be a port of the Services it selects);
#   - deploy/Dockerfile with hadolint;
#   - deploy/docker-compose.yml and deploy/docker-stack.yml against the Compose
#     specification schema (the one check-jsonschema ships as vendor.compose-spec).
#
# The rendered manifests stay in target/deploy-check/. Exits non-zero on any failure.
# tests/tests/deploy.rs checks the other half: that every container's command line and
# environment in these files is one the corriente binary accepts.
set -euo pipefail
cd "$(dirname "$0")/.."

deploy/tools.sh
tools="${TOOLS_DIR:-$PWD/target/tools}"
helm="$tools/helm/helm"
bin="$tools/venv/bin"
chart=helm/corriente
out=target/deploy-check
kube_version=1.35.0
rm -rf "$out"
mkdir -p "$out"

failures=0
step() { printf '\n== %s\n' "$*"; }
fail() {
  echo "FAILED: $*" >&2
  failures=$((failures + 1))
}

# Splits a rendered chart: ServiceMonitors are checked against the Services they select and
# written apart; everything else goes to the file kubernetes-validate reads.
split_and_check_servicemonitors() {
  "$bin/python" - "$@" <<'PY'
import sys, yaml

src, rest, monitors = sys.argv[1:4]
docs = [d for d in yaml.safe_load_all(open(src)) if d]
others = [d for d in docs if d.get("kind") != "ServiceMonitor"]
found = [d for d in docs if d.get("kind") == "ServiceMonitor"]
yaml.safe_dump_all(others, open(rest, "w"), sort_keys=False)
yaml.safe_dump_all(found, open(monitors, "w"), sort_keys=False)
services = [d for d in others if d.get("kind") == "Service"]
ok = True
for sm in found:
    name = sm["metadata"]["name"]
    want = sm["spec"]["selector"]["matchLabels"]
    selected = [s for s in services
                if all(s["metadata"].get("labels", {}).get(k) == v for k, v in want.items())]
    if not selected:
        print(f"ServiceMonitor {name} selects no Service"); ok = False
    for ep in sm["spec"]["endpoints"]:
        for s in selected:
            if ep["port"] not in [p.get("name") for p in s["spec"]["ports"]]:
                print(f"ServiceMonitor {name}: Service {s['metadata']['name']} has no port {ep['port']}")
                ok = False
    print(f"ServiceMonitor {name}: selects {', '.join(s['metadata']['name'] for s in selected)}; "
          "not schema-validated (CRD unknown to kubernetes-validate)")
print(f"{len(others)} objects to validate, {len(found)} ServiceMonitor(s) checked apart")
sys.exit(0 if ok else 1)
PY
}

# render NAME [helm template args...]: lint, render, validate.
render() {
  local name="$1"
  shift
  # helm lint takes the values, not --api-versions.
  local lint_args=() skip=0 arg
  for arg in "$@"; do
    if ((skip)); then
      skip=0
    elif [ "$arg" = --api-versions ]; then
      skip=1
    else
      lint_args+=("$arg")
    fi
  done
  step "helm lint --strict ($name)"
  "$helm" lint --strict "$chart" "${lint_args[@]}" || fail "helm lint ($name)"
  step "helm template ($name)"
  if ! "$helm" template corriente "$chart" --namespace streaming --kube-version "$kube_version" \
    "$@" >"$out/$name.yaml"; then
    fail "helm template ($name)"
    return
  fi
  echo "rendered $out/$name.yaml ($(grep -c '^kind:' "$out/$name.yaml") objects)"
  split_and_check_servicemonitors "$out/$name.yaml" "$out/$name.validate.yaml" \
    "$out/$name.servicemonitors.yaml" || fail "ServiceMonitor check ($name)"
  step "kubernetes-validate --strict -k $kube_version ($name)"
  local report
  if ! report="$("$bin/kubernetes-validate" --strict -k "$kube_version" "$out/$name.validate.yaml" 2>&1)"; then
    echo "$report"
    fail "kubernetes-validate ($name)"
    return
  fi
  echo "$report"
  # An apiVersion or kind without a schema is only a warning there: a typo here.
  if grep -q "Couldn't find schema" <<<"$report"; then
    fail "kubernetes-validate ($name): a manifest of unknown kind"
  fi
}

render default
render production -f "$chart/values-production.yaml"
# What neither file turns on: every autoscaler, NodePort/ClusterIP Services, no
# NetworkPolicy, external Redis without a password, the ServiceMonitor found by API
# discovery, a preStop hook on origins, TLS on unprivileged ports (no sysctl) without the
# HTTPS redirect; recording origins (a StatefulSet with volume claims), restreaming from a
# Secret.
render variants \
  --api-versions monitoring.coreos.com/v1 \
  --set controlPlane.autoscaling.enabled=true,origin.autoscaling.enabled=true \
  --set ingest.type=NodePort,playback.type=ClusterIP,networkPolicy.enabled=false \
  --set redis.bundled.enabled=false,redis.external.url=redis://redis.example:6379 \
  --set origin.preStopSleep=2s,serviceAccount.create=false \
  --set tls.enabled=true,tls.secretName=corriente-tls,origin.rtmps.port=1936 \
  --set edge.https.port=8443,edge.rtmps.port=1937 \
  --set origin.recording.enabled=true,origin.recording.storageClassName=fast \
  --set origin.forwards.existingSecret=corriente-forwards

step "helm template must refuse invalid values"
if "$helm" template corriente "$chart" --set edge.drainDelay=5 >/dev/null 2>&1; then
  fail "values.schema.json accepted a duration without a unit"
else
  echo "ok: a duration without a unit is refused"
fi
if "$helm" template corriente "$chart" --set redis.bundled.enabled=false >/dev/null 2>&1; then
  fail "the chart rendered without any Redis"
else
  echo "ok: no Redis at all is refused"
fi
if "$helm" template corriente "$chart" --set tls.enabled=true >/dev/null 2>&1; then
  fail "the chart rendered TLS listeners without a certificate Secret"
else
  echo "ok: tls.enabled without tls.secretName is refused"
fi
if "$helm" template corriente "$chart" --set edge.httpsRedirect=true >/dev/null 2>&1; then
  fail "the chart rendered an HTTPS redirect without HTTPS"
else
  echo "ok: edge.httpsRedirect without tls.enabled is refused"
fi
if "$helm" template corriente "$chart" --set tls.enabled=true,tls.secretName=x,edge.https.port=8080 \
  >/dev/null 2>&1; then
  fail "the chart rendered an edge HTTPS port clashing with its HTTP port"
else
  echo "ok: a TLS port clashing with another port is refused"
fi

step "hadolint deploy/Dockerfile"
if "$bin/hadolint" deploy/Dockerfile; then echo "ok"; else fail "hadolint"; fi

step "Compose specification schema (check-jsonschema vendor.compose-spec)"
"$bin/check-jsonschema" --builtin-schema vendor.compose-spec \
  deploy/docker-compose.yml deploy/docker-stack.yml || fail "compose schema"

if command -v shellcheck >/dev/null 2>&1; then
  step "shellcheck"
  if shellcheck deploy/tools.sh deploy/check.sh; then echo "ok"; else fail "shellcheck"; fi
fi

echo
if ((failures)); then
  echo "deploy/check.sh: $failures check(s) failed" >&2
  exit 1
fi
echo "deploy/check.sh: all deployment checks passed"
