#!/usr/bin/env bash
# Build Ory Hydra (the peer) from the Go module proxy into ~/.cache/tokenbridge/hydra-<version>/bin/hydra.
# `go install github.com/ory/hydra/v2@<version>` is refused because Hydra's go.mod has replace directives, so
# this builds it through a throw-away wrapper module that repeats the pop replace and takes the published
# github.com/ory/hydra-client-go/v2 that Hydra's go.mod requires (v2.2.1 for v2.3.0) in place of Hydra's in-tree ./internal/httpclient (a nested
# module, so it is not in Hydra's module zip). Nothing of Hydra is kept in this repository.
set -euo pipefail
VERSION="${HYDRA_VERSION:-v2.3.0}"
CACHE="${TOKENBRIDGE_CACHE:-$HOME/.cache/tokenbridge}"
DIR="$CACHE/hydra-$VERSION"
BIN="$DIR/bin/hydra"
if [ -x "$BIN" ]; then echo "$BIN"; exit 0; fi
mkdir -p "$DIR/wrap" "$DIR/bin"
cd "$DIR/wrap"
export CGO_ENABLED=1 GOFLAGS=-buildvcs=false
go mod download -x "github.com/ory/hydra/v2@$VERSION" >/dev/null 2>&1 || go mod download "github.com/ory/hydra/v2@$VERSION"
SRC="$(go env GOMODCACHE)/github.com/ory/hydra/v2@$VERSION"
POP="$(sed -n 's#^replace github.com/gobuffalo/pop/v6 => \(.*\)$#\1#p' "$SRC/go.mod")"
cat > go.mod <<MOD
module tokenbridge.local/hydrabuild

go 1.24

require github.com/ory/hydra/v2 $VERSION

replace github.com/gobuffalo/pop/v6 => $POP
MOD
cat > tools.go <<'GO'
//go:build tools

package tools

import _ "github.com/ory/hydra/v2"
GO
go mod tidy >/dev/null 2>&1 || true
# Use Hydra's own go.sum pins where the wrapper resolves the same versions.
go get "github.com/ory/hydra/v2@$VERSION"
go build -tags sqlite -o "$BIN.tmp" github.com/ory/hydra/v2
mv "$BIN.tmp" "$BIN"
echo "$BIN"
