package gohost

// The Rust task driver (`goplugin_exec`) under a go-plugin v1.8.0 host set up as Nomad's plugin
// loader sets up an external driver (nomad-driver-plugin.md §2, §3): the binary is started from
// a plugin_dir by its file name with no arguments, Nomad's cookie, protocol 2, gRPC. Nomad's
// driver client cannot be fetched here, so the calls are made with grpc-go on the exact method
// paths and field numbers of plugins/base/proto/base.proto and plugins/drivers/proto/driver.proto,
// encoded with protowire; the task config is go-cty's msgpack written by hand.

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protowire"
)

type connPlugin struct{ plugin.NetRPCUnsupportedPlugin }

func (connPlugin) GRPCServer(*plugin.GRPCBroker, *grpc.Server) error { return nil }
func (connPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (interface{}, error) {
	return c, nil
}

func driverCall(conn *grpc.ClientConn, service, method string, req []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var resp []byte
	err := conn.Invoke(ctx, "/hashicorp.nomad.plugins."+service+"/"+method, &req, &resp,
		grpc.ForceCodec(rawCodec{}))
	return resp, err
}

// ctyStr appends a msgpack fixstr (all strings here are < 32 bytes).
func ctyStr(b []byte, s string) []byte {
	return append(append(b, 0xa0|byte(len(s))), s...)
}

// taskConfig is go-cty's msgpack of `config { command = cmd  args = ["-c", script] }` under the
// driver's schema: all nine keys in ascending order, nil for unset, defaults 10 and 10.
func taskConfig(cmd, script string) []byte {
	b := []byte{0x89}
	b = ctyStr(b, "args")
	b = append(b, 0x92)
	b = ctyStr(b, "-c")
	b = append(b, 0xd9, byte(len(script)))
	b = append(b, script...)
	for _, k := range []string{"cgroup_v1_override", "cgroup_v2_override"} {
		b = append(ctyStr(b, k), 0xc0)
	}
	b = ctyStr(ctyStr(b, "command"), cmd)
	b = append(ctyStr(b, "denied_envvars"), 0xc0)
	b = append(ctyStr(b, "max_file_size"), 10)
	b = append(ctyStr(b, "max_files"), 10)
	b = append(ctyStr(b, "oom_score_adj"), 0xc0)
	b = append(ctyStr(b, "work_dir"), 0xc0)
	return b
}

// TestDriverUnderNomadsLoaderConfig: PluginInfo, SetConfig, Capabilities, StartTask, WaitTask
// (result always set, exit code 3), the task's output in Nomad's log file, DestroyTask, Kill.
func TestDriverUnderNomadsLoaderConfig(t *testing.T) {
	pluginDir := t.TempDir()
	bin := filepath.Join(pluginDir, "goplugin_exec")
	if err := os.Symlink(gopluginBinary(t), bin); err != nil {
		t.Fatal(err)
	}
	logger, _ := newHostLogger(t, hclog.Debug)
	c := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  nomadHandshake,
		Plugins:          map[string]plugin.Plugin{"base": connPlugin{}, "driver": connPlugin{}},
		Cmd:              exec.Command(bin),
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:           logger,
	})
	t.Cleanup(c.Kill)
	rpc, err := c.Client()
	if err != nil {
		t.Fatalf("Client(): %v", err)
	}
	raw, err := rpc.Dispense("driver")
	if err != nil {
		t.Fatal(err)
	}
	conn := raw.(*grpc.ClientConn)

	resp, err := driverCall(conn, "base.proto.BasePlugin", "PluginInfo", nil)
	if err != nil {
		t.Fatalf("PluginInfo: %v", err)
	}
	info := fields(t, resp)
	if typ := varintField(t, info, 1); typ != 2 {
		t.Fatalf("PluginInfo type = %d, want DRIVER (2)", typ)
	}
	if name := string(bytesField(info, 4)); name != "goplugin_exec" {
		t.Fatalf("PluginInfo name = %q", name)
	}
	if api := string(bytesField(info, 2)); api != "v0.1.0" {
		t.Fatalf("PluginInfo api = %q", api)
	}
	// SetConfig: empty config (the defaults) and nomad_config{driver{ports}} as a 1.6 agent sends.
	var ports []byte
	ports = protowire.AppendTag(ports, 1, protowire.VarintType)
	ports = protowire.AppendVarint(ports, 14512)
	ports = protowire.AppendTag(ports, 2, protowire.VarintType)
	ports = protowire.AppendVarint(ports, 14000)
	var nomadCfg []byte
	nomadCfg = protowire.AppendTag(nomadCfg, 1, protowire.BytesType)
	nomadCfg = protowire.AppendBytes(nomadCfg, ports)
	var setCfg []byte
	setCfg = protowire.AppendTag(setCfg, 2, protowire.BytesType)
	setCfg = protowire.AppendBytes(setCfg, nomadCfg)
	setCfg = protowire.AppendTag(setCfg, 3, protowire.BytesType)
	setCfg = protowire.AppendString(setCfg, "v0.1.0")
	if _, err := driverCall(conn, "base.proto.BasePlugin", "SetConfig", setCfg); err != nil {
		t.Fatalf("SetConfig: %v", err)
	}
	// A config of the wrong type is refused with a message naming the key.
	bad := protowire.AppendTag(nil, 1, protowire.BytesType)
	bad = protowire.AppendBytes(bad, append(ctyStr([]byte{0x81}, "enabled"), ctyStr(nil, "yes")...))
	if _, err := driverCall(conn, "base.proto.BasePlugin", "SetConfig", bad); err == nil ||
		!strings.Contains(err.Error(), `"enabled" must be a bool`) {
		t.Fatalf("SetConfig with enabled = \"yes\": %v", err)
	}

	resp, err = driverCall(conn, "drivers.proto.Driver", "Capabilities", nil)
	if err != nil {
		t.Fatalf("Capabilities: %v", err)
	}
	caps := fields(t, bytesField(fields(t, resp), 1))
	if varintField(t, caps, 8) != 1 || varintField(t, caps, 3) != 0 {
		t.Fatalf("capabilities: disable_log_collection/fs_isolation = %d/%d",
			varintField(t, caps, 8), varintField(t, caps, 3))
	}

	alloc := t.TempDir()
	logs := filepath.Join(alloc, "alloc", "logs")
	if err := os.MkdirAll(logs, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(alloc, "t"), 0o755); err != nil {
		t.Fatal(err)
	}
	id := "alloc1/t/0001"
	var task []byte
	str := func(n protowire.Number, s string) {
		task = protowire.AppendTag(task, n, protowire.BytesType)
		task = protowire.AppendString(task, s)
	}
	str(1, id)
	str(2, "t")
	task = protowire.AppendTag(task, 3, protowire.BytesType)
	task = protowire.AppendBytes(task, taskConfig("/bin/sh", "echo hello from the driver; exit 3"))
	str(10, alloc)
	str(11, filepath.Join(logs, ".t.stdout.fifo"))
	str(12, filepath.Join(logs, ".t.stderr.fifo"))
	str(15, "alloc1")
	start := protowire.AppendTag(nil, 1, protowire.BytesType)
	start = protowire.AppendBytes(start, task)
	resp, err = driverCall(conn, "drivers.proto.Driver", "StartTask", start)
	if err != nil {
		t.Fatalf("StartTask: %v", err)
	}
	handle := fields(t, bytesField(fields(t, resp), 3))
	if v := varintField(t, handle, 1); v != 1 || len(bytesField(handle, 4)) == 0 {
		t.Fatalf("handle version %d, driver_state %d bytes", v, len(bytesField(handle, 4)))
	}

	wait := protowire.AppendTag(nil, 1, protowire.BytesType)
	wait = protowire.AppendString(wait, id)
	resp, err = driverCall(conn, "drivers.proto.Driver", "WaitTask", wait)
	if err != nil {
		t.Fatalf("WaitTask: %v", err)
	}
	w := fields(t, resp)
	if len(w[1]) == 0 {
		t.Fatal("WaitTaskResponse.result missing: a Nomad 1.6 agent would panic")
	}
	if code := varintField(t, fields(t, bytesField(w, 1)), 1); code != 3 {
		t.Fatalf("exit code = %d, want 3", code)
	}
	if !waitFor(5*time.Second, func() bool {
		out, _ := os.ReadFile(filepath.Join(logs, "t.stdout.0"))
		return string(out) == "hello from the driver\n"
	}) {
		out, _ := os.ReadFile(filepath.Join(logs, "t.stdout.0"))
		t.Fatalf("t.stdout.0 = %q", out)
	}
	destroy := append(append([]byte(nil), wait...), protowire.AppendVarint(protowire.AppendTag(nil, 2, protowire.VarintType), 1)...)
	if _, err := driverCall(conn, "drivers.proto.Driver", "DestroyTask", destroy); err != nil {
		t.Fatalf("DestroyTask: %v", err)
	}
	if _, err := driverCall(conn, "drivers.proto.Driver", "WaitTask", wait); err == nil ||
		!strings.Contains(err.Error(), "task not found") {
		t.Fatalf("WaitTask after destroy: %v", err)
	}
	begin := time.Now()
	c.Kill()
	if time.Since(begin) > 2*time.Second {
		t.Fatalf("Kill took %v", time.Since(begin))
	}
}
