#!/bin/sh
# vulndb.sh VERSION: build the Go vulnerability database that govulncheck
# reads with -db file://DIR, offline and deterministically, from a pinned
# version of the golang.org/x/vulndb module. That module holds every OSV
# record of vuln.go.dev (data/osv/GO-*.json) and cmd/indexdb, the tool that
# writes them in the v1 database layout (index/db.json, index/modules.json,
# index/vulns.json, ID/GO-*.json). Both come through the Go module proxy,
# so no access to vuln.go.dev is needed.
#
# The database goes to $VULNDB_DIR (default: $(go env GOCACHE)/tokenwarden-vulndb/VERSION)
# and is built only once per version; delete the directory to rebuild.
# Update VULNDB_VERSION in the Makefile to get newer records:
#   go list -m -versions golang.org/x/vulndb   (pseudo-versions: go list -m golang.org/x/vulndb@master)
set -eu
version=${1:?usage: vulndb.sh VERSION}
GO=${GO:-go}
out=${VULNDB_DIR:-$($GO env GOCACHE)/tokenwarden-vulndb/$version}
if [ -s "$out/index/db.json" ]; then
	exit 0
fi
src=$($GO mod download -json "golang.org/x/vulndb@$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
if [ ! -d "$src/data/osv" ]; then
	echo "vulndb.sh: golang.org/x/vulndb@$version has no data/osv" >&2
	exit 1
fi
mkdir -p "$(dirname "$out")"
tmp="$out.tmp.$$"
rm -rf "$tmp"
trap 'rm -rf "$tmp"' EXIT
echo "vulndb.sh: building the vulnerability database from golang.org/x/vulndb@$version into $out" >&2
$GO run "golang.org/x/vulndb/cmd/indexdb@$version" -vulns "$src/data/osv" -out "$tmp"
rm -rf "$out"
mv "$tmp" "$out"
