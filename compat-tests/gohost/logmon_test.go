package gohost

// The Rust logmon (`goplugin logmon`) under a go-plugin v1.8.0 host configured as Nomad configures
// its logmon client (nomad-executor-logmon.md §2.1, §7): cookie NOMAD_PLUGIN_MAGIC_COOKIE, app
// protocol 2, gRPC only, no AutoMTLS. Nomad's own client package cannot be fetched here (the module
// proxy refuses github.com/hashicorp/nomad), so the LogMon calls are made with grpc-go on the exact
// method paths and field numbers of client/logmon/proto/logmon.proto, encoded with protowire.

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/protobuf/encoding/protowire"
)

var nomadHandshake = plugin.HandshakeConfig{
	ProtocolVersion:  2,
	MagicCookieKey:   "NOMAD_PLUGIN_MAGIC_COOKIE",
	MagicCookieValue: "e4327c2e01eabfd75a8a67adb114fb34a757d57eee7728d857a8cec6e91a7255",
}

// rawCodec sends and receives already-encoded protobuf bytes.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

var _ encoding.Codec = rawCodec{}

// logmonPlugin hands out the raw connection; Nomad's logmon.Plugin wraps the same connection.
type logmonPlugin struct{ plugin.NetRPCUnsupportedPlugin }

func (logmonPlugin) GRPCServer(*plugin.GRPCBroker, *grpc.Server) error { return nil }
func (logmonPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (interface{}, error) {
	return c, nil
}

type startRequest struct {
	logDir, stdoutName, stderrName string
	maxFiles, maxFileSizeMB        uint64
	stdoutFifo, stderrFifo         string
}

func (r startRequest) encode() []byte {
	var b []byte
	str := func(n protowire.Number, s string) {
		if s != "" {
			b = protowire.AppendTag(b, n, protowire.BytesType)
			b = protowire.AppendString(b, s)
		}
	}
	num := func(n protowire.Number, v uint64) {
		if v != 0 {
			b = protowire.AppendTag(b, n, protowire.VarintType)
			b = protowire.AppendVarint(b, v)
		}
	}
	str(1, r.logDir)
	str(2, r.stdoutName)
	str(3, r.stderrName)
	num(4, r.maxFiles)
	num(5, r.maxFileSizeMB)
	str(6, r.stdoutFifo)
	str(7, r.stderrFifo)
	return b
}

func gopluginBinary(t *testing.T) string {
	t.Helper()
	p := filepath.Join(rustExamplesDir(), "..", "goplugin")
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("goplugin binary missing (%v): run `cargo build --bins` first", err)
	}
	return p
}

func newLogmonClient(t *testing.T, reattach *plugin.ReattachConfig) (*plugin.Client, *grpc.ClientConn, *syncBuffer) {
	t.Helper()
	logger, logs := newHostLogger(t, hclog.Trace)
	cfg := &plugin.ClientConfig{
		HandshakeConfig:  nomadHandshake,
		Plugins:          map[string]plugin.Plugin{"logmon": logmonPlugin{}},
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:           logger,
	}
	if reattach != nil {
		cfg.Reattach = reattach
	} else {
		cfg.Cmd = exec.Command(gopluginBinary(t), "logmon")
	}
	c := plugin.NewClient(cfg)
	t.Cleanup(c.Kill)
	rpc, err := c.Client()
	if err != nil {
		t.Fatalf("Client(): %v", err)
	}
	if err := rpc.Ping(); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	raw, err := rpc.Dispense("logmon")
	if err != nil {
		t.Fatalf("Dispense: %v", err)
	}
	return c, raw.(*grpc.ClientConn), logs
}

func logmonCall(conn *grpc.ClientConn, method string, req []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var resp []byte
	return conn.Invoke(ctx, "/hashicorp.nomad.client.logmon.proto.LogMon/"+method, &req, &resp,
		grpc.ForceCodec(rawCodec{}))
}

func waitFile(t *testing.T, path, want string) {
	t.Helper()
	if !waitFor(5*time.Second, func() bool {
		got, _ := os.ReadFile(path)
		return string(got) == want
	}) {
		got, _ := os.ReadFile(path)
		t.Fatalf("%s = %q, want %q", path, got, want)
	}
}

// TestLogmonUnderNomadsClientConfig: spec nomad-executor-logmon.md §7.2-§7.6 through a Go host
// set up like Nomad's logmon launcher. Mirrors Nomad TestLogmon_Start_restart (client/logmon)
// in its black-box parts: Start, copy, restart of the writer, Stop, reattach with Ping + Start.
func TestLogmonUnderNomadsClientConfig(t *testing.T) {
	dir := t.TempDir()
	req := startRequest{
		logDir: dir, stdoutName: "web.stdout", stderrName: "web.stderr",
		maxFiles: 3, maxFileSizeMB: 1,
		stdoutFifo: filepath.Join(dir, ".web.stdout.fifo"),
		stderrFifo: filepath.Join(dir, ".web.stderr.fifo"),
	}
	c, conn, _ := newLogmonClient(t, nil)
	if err := logmonCall(conn, "Start", req.encode()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	w, err := os.OpenFile(req.stdoutFifo, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(w, "hello from the task")
	waitFile(t, filepath.Join(dir, "web.stdout.0"), "hello from the task\n")

	// The agent goes away; a new one reattaches (Nomad: ReattachConfig + Ping), Starts again.
	rc := c.ReattachConfig()
	fmt.Fprintln(w, "while the agent was away")
	c2, conn2, _ := newLogmonClient(t, rc)
	if err := logmonCall(conn2, "Start", req.encode()); err != nil {
		t.Fatalf("Start after reattach: %v", err)
	}
	// The task restarts: its writer closes and a new one opens.
	_ = w.Close()
	w2, err := os.OpenFile(req.stdoutFifo, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(w2, "after the task restarted")
	_ = w2.Close()
	waitFile(t, filepath.Join(dir, "web.stdout.0"),
		"hello from the task\nwhile the agent was away\nafter the task restarted\n")

	if err := logmonCall(conn2, "Stop", nil); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if err := logmonCall(conn2, "Stop", nil); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	start := time.Now()
	c2.Kill()
	if time.Since(start) > 2*time.Second {
		t.Fatalf("Kill took %v: logmon did not exit on Shutdown", time.Since(start))
	}
}

// TestLogmonStartErrors: bad Start requests come back as gRPC errors a Go client can show.
// Mirrors Nomad TestFileRotator_IncorrectPath (through Start).
func TestLogmonStartErrors(t *testing.T) {
	_, conn, _ := newLogmonClient(t, nil)
	err := logmonCall(conn, "Start", startRequest{
		logDir: "/nonexistent/alloc/logs", stdoutName: "a.stdout", stderrName: "a.stderr",
		maxFiles: 3, maxFileSizeMB: 1,
		stdoutFifo: "/nonexistent/alloc/logs/.a.stdout.fifo", stderrFifo: "/nonexistent/alloc/logs/.a.stderr.fifo",
	}.encode())
	if err == nil || !strings.Contains(err.Error(), "failed to create stdout logfile") {
		t.Fatalf("Start with a missing log dir: %v", err)
	}
}
