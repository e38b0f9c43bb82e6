package gohost

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"github.com/hashicorp/go-plugin/examples/grpc/shared"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// bigValue is over grpc-go's and tonic's 4 MiB default message limit.
var bigValue = bytes.Repeat([]byte("0123456789abcdef"), 6<<20/16)

// TestMessagesOver4MiB: spec go-plugin-wire.md §7.3. go-plugin's Go host dials with
// MaxCallRecvMsgSize/MaxCallSendMsgSize(math.MaxInt32); its Go plugins serve with grpc-go's
// defaults (send up to MaxInt32, receive up to 4 MiB). Both plugins answer a 6 MiB Get (the
// value file is written straight into their directory). A 6 MiB Put is refused by the Go
// plugin with RESOURCE_EXHAUSTED, grpc-go's server default, and taken by the Rust plugin, whose
// server accepts what the Go host may send (goplugin::MAX_MESSAGE_SIZE): the one place the two
// differ, and the more permissive one.
func TestMessagesOver4MiB(t *testing.T) {
	eachImpl(t, true, func(t *testing.T, im impl) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "kv_big"), bigValue, 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(im.bin(t, im.kv))
		cmd.Dir = dir
		cmd.Env = cleanEnv()
		c := plugin.NewClient(&plugin.ClientConfig{
			HandshakeConfig:  shared.Handshake,
			Plugins:          shared.PluginMap,
			Cmd:              cmd,
			AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
			Logger:           hclog.New(&hclog.LoggerOptions{Level: hclog.Error, Output: os.Stderr}),
		})
		defer c.Kill()
		rpc, err := c.Client()
		if err != nil {
			t.Fatal(err)
		}
		raw, err := rpc.Dispense(shared.PluginGRPC)
		if err != nil {
			t.Fatal(err)
		}
		kv := raw.(shared.KV)
		got, err := kv.Get("big")
		if err != nil {
			t.Fatalf("6 MiB Get: %v", err)
		}
		if !bytes.Equal(got, bigValue) {
			t.Fatalf("6 MiB Get returned %d bytes, want the %d written", len(got), len(bigValue))
		}
		err = kv.Put("big2", bigValue)
		switch im.name {
		case "go":
			if status.Code(err) != codes.ResourceExhausted {
				t.Fatalf("6 MiB Put to the Go plugin: %v, want RESOURCE_EXHAUSTED (grpc-go's 4 MiB server default)", err)
			}
		default:
			if err != nil {
				t.Fatalf("6 MiB Put to the Rust plugin: %v", err)
			}
			stored, err := os.ReadFile(filepath.Join(dir, "kv_big2"))
			if err != nil || !bytes.HasPrefix(stored, bigValue) {
				t.Fatalf("kv_big2 after the Put: %d bytes, %v", len(stored), err)
			}
		}
	})
}
