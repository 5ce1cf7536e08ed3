//go:build tools

// Package etcdbin pins the etcd server the local test cluster runs (hack/cluster/up.sh).
package etcdbin

import _ "go.etcd.io/etcd/server/v3"
