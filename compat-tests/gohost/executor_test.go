package gohost

// The Rust executor (`goplugin executor <json>`) under a go-plugin v1.8.0 host set up as Nomad's
// CreateExecutor sets it up (nomad-executor-logmon.md §2.1, §3): argv JSON, cookie, protocol 2,
// gRPC. Nomad's executor client package cannot be fetched here (the module proxy refuses
// github.com/hashicorp/nomad), so the Executor calls are made with grpc-go on the exact method
// paths and field numbers of drivers/shared/executor/proto/executor.proto, encoded with protowire.

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protowire"
)

type executorPlugin struct{ plugin.NetRPCUnsupportedPlugin }

func (executorPlugin) GRPCServer(*plugin.GRPCBroker, *grpc.Server) error { return nil }
func (executorPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (interface{}, error) {
	return c, nil
}

func executorCall(conn *grpc.ClientConn, method string, req []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var resp []byte
	err := conn.Invoke(ctx, "/hashicorp.nomad.plugins.executor.proto.Executor/"+method, &req, &resp,
		grpc.ForceCodec(rawCodec{}))
	return resp, err
}

// fields decodes one level of a protobuf message into field number → raw values.
func fields(t *testing.T, b []byte) map[protowire.Number][][]byte {
	t.Helper()
	out := map[protowire.Number][][]byte{}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			t.Fatalf("bad tag in %x", b)
		}
		b = b[n:]
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			t.Fatalf("bad field %d in %x", num, b)
		}
		out[num] = append(out[num], b[:m])
		b = b[m:]
	}
	return out
}

func varintField(t *testing.T, f map[protowire.Number][][]byte, n protowire.Number) int64 {
	t.Helper()
	if len(f[n]) == 0 {
		return 0
	}
	v, _ := protowire.ConsumeVarint(f[n][0])
	return int64(int32(v))
}

func bytesField(f map[protowire.Number][][]byte, n protowire.Number) []byte {
	if len(f[n]) == 0 {
		return nil
	}
	v, _ := protowire.ConsumeBytes(f[n][0])
	return v
}

// TestExecutorUnderNomadsClientConfig: Version, Launch, Wait (exit code 3 and output), Kill.
// Mirrors Nomad TestExecutor_Start_Wait and TestExecutor_Start_Wait_Failure_Code
// (drivers/shared/executor) in their black-box parts.
func TestExecutorUnderNomadsClientConfig(t *testing.T) {
	dir := t.TempDir()
	cfg, _ := json.Marshal(map[string]any{
		"LogFile": filepath.Join(dir, "executor.out"), "LogLevel": "debug",
		"FSIsolation": false, "Compute": map[string]any{"tc": 4000, "nc": 2},
	})
	logger, _ := newHostLogger(t, hclog.Trace)
	c := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  nomadHandshake,
		Plugins:          map[string]plugin.Plugin{"executor": executorPlugin{}},
		Cmd:              exec.Command(gopluginBinary(t), "executor", string(cfg)),
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:           logger,
	})
	t.Cleanup(c.Kill)
	rpc, err := c.Client()
	if err != nil {
		t.Fatalf("Client(): %v", err)
	}
	raw, err := rpc.Dispense("executor")
	if err != nil {
		t.Fatal(err)
	}
	conn := raw.(*grpc.ClientConn)

	resp, err := executorCall(conn, "Version", nil)
	if err != nil {
		t.Fatalf("Version: %v", err)
	}
	if v := string(bytesField(fields(t, resp), 1)); v != "2.0.0" {
		t.Fatalf("Version = %q, want 2.0.0", v)
	}

	stdout := filepath.Join(dir, "stdout")
	stderr := filepath.Join(dir, "stderr")
	for _, p := range []string{stdout, stderr} {
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var req []byte
	str := func(n protowire.Number, s string) {
		req = protowire.AppendTag(req, n, protowire.BytesType)
		req = protowire.AppendString(req, s)
	}
	str(1, "/bin/sh")
	str(2, "-c")
	str(2, "echo hello from go; exit 3")
	str(4, stdout)
	str(5, stderr)
	str(6, "PATH=/usr/bin:/bin")
	str(8, dir)
	resp, err = executorCall(conn, "Launch", req)
	if err != nil {
		t.Fatalf("Launch: %v", err)
	}
	launched := fields(t, bytesField(fields(t, resp), 1))
	if pid := varintField(t, launched, 1); pid <= 0 {
		t.Fatalf("Launch pid = %d", pid)
	}
	if code := varintField(t, launched, 2); code != -1 {
		t.Fatalf("Launch exit_code = %d, want -1 while running", code)
	}
	resp, err = executorCall(conn, "Wait", nil)
	if err != nil {
		t.Fatalf("Wait: %v", err)
	}
	state := fields(t, bytesField(fields(t, resp), 1))
	if code := varintField(t, state, 2); code != 3 {
		t.Fatalf("Wait exit_code = %d, want 3", code)
	}
	if out, _ := os.ReadFile(stdout); string(out) != "hello from go\n" {
		t.Fatalf("stdout = %q", out)
	}
	start := time.Now()
	c.Kill()
	if time.Since(start) > 2*time.Second {
		t.Fatalf("Kill took %v", time.Since(start))
	}
}
