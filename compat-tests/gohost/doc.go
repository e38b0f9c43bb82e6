// Package gohost is direction A of the interoperability matrix (spec §19): the real go-plugin
// v1.8.0 host library drives plugins, and every test runs once against the Go reference plugin
// (subtest `go`) and once against the Rust example plugin (subtest `rust`). The Go reference
// proves that the test itself is right; the Rust run proves the Rust plugin behaves like it.
//
// Run from the compat-tests directory:
//
//	cargo build --examples                  # in the repository root, builds the Rust plugins
//	go test -count=1 ./...                  # whole suite
//	go test -count=1 -run 'Test.*/go' ./... # Go reference only
//
// GOPLUGIN_EXAMPLES_DIR names the directory holding the Rust example binaries
// (default: ../target/debug/examples relative to compat-tests). The Go references are built into
// a temporary directory by TestMain on every run.
package gohost
