// Package nomad16 is the differential suite at Nomad 1.6's go-plugin: go-plugin v1.4.10 (the
// version Nomad 1.6.5 links) hosts drive Nomad's own Go helpers (`$NOMAD_BIN executor <json>`,
// `$NOMAD_BIN logmon`) and the Rust ones (`goplugin executor <json>`, `goplugin logmon`) with the
// ClientConfig of Nomad 1.6.5's CreateExecutor / ReattachToExecutor and LaunchLogMon, and
// compare what they do (spec nomad-versions.md §1.3, §6, §9).
//
// Nomad's Go packages cannot be a dependency (the module proxy refuses github.com/hashicorp/nomad),
// so the Executor and LogMon calls are made with grpc-go on the method paths and field numbers of
// Nomad 1.6.5's executor.proto and logmon.proto, encoded with protowire.
//
// Run from this directory (the Rust binary first: `cargo build --bin goplugin` in the repository root):
//
//	go test -count=1 ./...                                   # Rust helpers only
//	NOMAD_BIN=/path/to/nomad-1.6.x go test -count=1 ./...    # and the Nomad reference
//
// GOPLUGIN_BIN names the Rust binary (default ../../target/debug/goplugin). NOMAD_BIN (else
// `nomad` on PATH) names the reference; its subtests run only when `$NOMAD_BIN version` is
// v1.6.x (TestNomad16Reference says why they do not). The tests need root and cgroup v1 for the
// cgroup parts (raw_exec sets basic_process_cgroup only as root).
package nomad16
