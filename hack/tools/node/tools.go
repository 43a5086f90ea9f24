//go:build tools

// Package tools pins the node's commands that hack/build-tools.sh builds for
// hack/node.sh (kubelet, kube-controller-manager, kube-scheduler), so that
// `go mod tidy` keeps every module they need in go.mod and go.sum. A module
// of its own, so that adding them leaves the stamp of kube-apiserver and
// kubectl (../go.mod) and so their cached build untouched.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
