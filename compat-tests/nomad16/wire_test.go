package nomad16

// The wire contract shared by Nomad 1.6.5's executor and logmon clients: handshake (plugins/base
// Handshake), the plugin-map entries (their GRPCClient just wraps the connection), raw protobuf
// messages, and the persisted reattach config (plugins/shared/structs.ReattachConfig).

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/protobuf/encoding/protowire"
)

// nomadHandshake is Nomad's base.Handshake (same in 1.6.5 and 2.x).
var nomadHandshake = plugin.HandshakeConfig{
	ProtocolVersion:  2,
	MagicCookieKey:   "NOMAD_PLUGIN_MAGIC_COOKIE",
	MagicCookieValue: "e4327c2e01eabfd75a8a67adb114fb34a757d57eee7728d857a8cec6e91a7255",
}

// connPlugin stands in for Nomad's ExecutorPlugin and logmon.Plugin: their GRPCClient wraps the
// connection in a typed client; ours hands out the connection for raw calls.
type connPlugin struct{ plugin.NetRPCUnsupportedPlugin }

func (connPlugin) GRPCServer(*plugin.GRPCBroker, *grpc.Server) error { return nil }
func (connPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (interface{}, error) {
	return c, nil
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

// invoke makes one unary call with raw bytes.
func invoke(conn *grpc.ClientConn, fullMethod string, req []byte, timeout time.Duration) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var resp []byte
	err := conn.Invoke(ctx, fullMethod, &req, &resp, grpc.ForceCodec(rawCodec{}))
	return resp, err
}

// msg builds a protobuf message field by field (proto3: zero values are not sent).
type msg []byte

func (m *msg) str(n protowire.Number, s string) {
	if s != "" {
		*m = protowire.AppendTag(*m, n, protowire.BytesType)
		*m = protowire.AppendString(*m, s)
	}
}

func (m *msg) strs(n protowire.Number, ss []string) {
	for _, s := range ss {
		*m = protowire.AppendTag(*m, n, protowire.BytesType)
		*m = protowire.AppendString(*m, s)
	}
}

func (m *msg) varint(n protowire.Number, v int64) {
	if v != 0 {
		*m = protowire.AppendTag(*m, n, protowire.VarintType)
		*m = protowire.AppendVarint(*m, uint64(v))
	}
}

func (m *msg) boolean(n protowire.Number, b bool) {
	if b {
		m.varint(n, 1)
	}
}

// decoded is one level of a protobuf message: field number → raw values.
type decoded map[protowire.Number][][]byte

func decode(t *testing.T, b []byte) decoded {
	t.Helper()
	out := decoded{}
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

func (d decoded) int32(n protowire.Number) int32 {
	if len(d[n]) == 0 {
		return 0
	}
	v, _ := protowire.ConsumeVarint(d[n][0])
	return int32(v)
}

func (d decoded) int64(n protowire.Number) int64 {
	if len(d[n]) == 0 {
		return 0
	}
	v, _ := protowire.ConsumeVarint(d[n][0])
	return int64(v)
}

func (d decoded) bytes(n protowire.Number) []byte {
	if len(d[n]) == 0 {
		return nil
	}
	v, _ := protowire.ConsumeBytes(d[n][0])
	return v
}

// persistedReattach is Nomad's plugins/shared/structs.ReattachConfig, the form the agent stores
// (driver state, logmon hook state "reattach_config").
type persistedReattach struct {
	Protocol string
	Network  string
	Addr     string
	Pid      int
}

// persist is ReattachConfigFromGoPlugin + json.Marshal.
func persist(t *testing.T, rc *plugin.ReattachConfig) []byte {
	t.Helper()
	b, err := json.Marshal(persistedReattach{
		Protocol: string(rc.Protocol), Network: rc.Addr.Network(), Addr: rc.Addr.String(), Pid: rc.Pid,
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// restore is json.Unmarshal + ReattachConfigToGoPlugin (unix networks only: Linux helpers).
func restore(t *testing.T, b []byte) *plugin.ReattachConfig {
	t.Helper()
	var p persistedReattach
	if err := json.Unmarshal(b, &p); err != nil {
		t.Fatalf("stored reattach config %s: %v", b, err)
	}
	switch p.Network {
	case "unix", "unixgram", "unixpacket":
	default:
		t.Fatalf("stored reattach config %s: network %q", b, p.Network)
	}
	addr, err := net.ResolveUnixAddr(p.Network, p.Addr)
	if err != nil {
		t.Fatal(err)
	}
	return &plugin.ReattachConfig{Protocol: plugin.Protocol(p.Protocol), Addr: addr, Pid: p.Pid}
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// agentLogger stands in for the agent's logger: hclog at Trace into a buffer that is printed
// when the test fails (or always with COMPAT_DUMP_LOGS set).
func agentLogger(t *testing.T) (hclog.Logger, *syncBuffer) {
	t.Helper()
	buf := &syncBuffer{}
	l := hclog.New(&hclog.LoggerOptions{Name: "agent", Level: hclog.Trace, Output: buf})
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("COMPAT_DUMP_LOGS") != "" {
			t.Logf("agent log:\n%s", buf.String())
		}
	})
	return l, buf
}

// waitFor polls cond every 10 ms until it holds or the timeout passes.
func waitFor(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// dropConnection is the agent going away without stopping its plugins: the gRPC connection
// closes (broker and stdio streams with it), no GRPCController.Shutdown is sent, the helper
// keeps running.
func dropConnection(t *testing.T, c *plugin.Client) {
	t.Helper()
	rpc, err := c.Client()
	if err != nil {
		t.Fatalf("Client(): %v", err)
	}
	g, ok := rpc.(*plugin.GRPCClient)
	if !ok {
		t.Fatalf("Client() is %T, want *plugin.GRPCClient", rpc)
	}
	_ = g.Conn.Close()
}

// dispense returns the connection behind a plugin-map entry.
func dispense(t *testing.T, c *plugin.Client, name string) *grpc.ClientConn {
	t.Helper()
	rpc, err := c.Client()
	if err != nil {
		t.Fatalf("Client(): %v", err)
	}
	raw, err := rpc.Dispense(name)
	if err != nil {
		t.Fatalf("Dispense(%q): %v", name, err)
	}
	return raw.(*grpc.ClientConn)
}

// cpuTotalTicks stands in for helper/stats.CpuTotalTicks() of a 1.6 agent: logical cores times
// the highest "cpu MHz" of /proc/cpuinfo.
func cpuTotalTicks(cores int) uint64 {
	b, _ := os.ReadFile("/proc/cpuinfo")
	best := 0.0
	for _, line := range bytes.Split(b, []byte("\n")) {
		var mhz float64
		if _, err := fmt.Sscanf(string(line), "cpu MHz : %f", &mhz); err == nil && mhz > best {
			best = mhz
		}
	}
	if best == 0 {
		best = 1000
	}
	return uint64(math.Floor(best)) * uint64(cores)
}
