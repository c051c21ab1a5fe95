#!/usr/bin/env bash
# Builds (or reuses) helm from its own Go module, outside the control plane's go.mod so their k8s.io versions
# never meet. Cached under ${TOKENBRIDGE_CACHE:-~/.cache/tokenbridge}/helm-<version>/bin; prints that directory.
set -euo pipefail
version=v3.22.0
bin="${TOKENBRIDGE_CACHE:-$HOME/.cache/tokenbridge}/helm-${version}/bin"
if [ ! -x "$bin/helm" ]; then
  echo ">> building helm $version from helm.sh/helm/v3 (about a minute on 2 cores)" >&2
  mkdir -p "$bin"
  GOBIN="$bin" CGO_ENABLED=0 go install -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$version" "helm.sh/helm/v3/cmd/helm@$version"
fi
echo "$bin"
