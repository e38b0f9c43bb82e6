package gohost

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// runExampleHost runs one of go-plugin's example host programs in dir and returns its stdout.
// The hosts log through go-plugin's default hclog logger on their stderr, so a forced kill or an
// error of the plugin shows up there.
func runExampleHost(t *testing.T, dir, hostBin string, env []string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, hostBin, args...)
	cmd.Dir = dir
	cmd.Env = append(append(cleanEnv(), "TMPDIR="+shortTempDir(t)), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\nstdout:\n%s\nstderr:\n%s", filepath.Base(hostBin), strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	log := stderr.String()
	if strings.Contains(log, forcedKillLog) {
		t.Errorf("%s %s: plugin was force-killed; host log:\n%s", filepath.Base(hostBin), strings.Join(args, " "), log)
	}
	if strings.Contains(log, "[ERROR]") {
		t.Errorf("%s %s: host logged errors:\n%s", filepath.Base(hostBin), strings.Join(args, " "), log)
	}
	return stdout.String()
}

// TestExampleKV: spec §19 item 28. go-plugin's own examples/grpc host (KV_PROTO=grpc, plugin
// command in KV_PLUGIN) stores and reads a value through the kv plugin; the value file ends with
// the plugin's marker line.
//
// Mirrors go-plugin examples/grpc (README: `./kv put hello world`, `./kv get hello`), the flow the
// Python reference plugin examples/grpc/plugin-python is checked with.
func TestExampleKV(t *testing.T) {
	eachImpl(t, true, func(t *testing.T, im impl) {
		dir := t.TempDir()
		env := []string{"KV_PLUGIN=" + im.bin(t, im.kv), "KV_PROTO=grpc"}
		if out := runExampleHost(t, dir, goRef.kvHost, env, "put", "hello", "world"); out != "" {
			t.Errorf("put printed %q, want nothing", out)
		}
		want := "world" + im.kvMarker
		b, err := os.ReadFile(filepath.Join(dir, "kv_hello"))
		if err != nil {
			t.Fatalf("value file: %v", err)
		}
		if string(b) != want {
			t.Errorf("kv_hello = %q, want %q", b, want)
		}
		if out := runExampleHost(t, dir, goRef.kvHost, env, "get", "hello"); out != want+"\n" {
			t.Errorf("get printed %q, want %q", out, want+"\n")
		}
	})
}

// TestExampleCounter: spec §19 items 21 and 28. go-plugin's own examples/bidirectional host
// (COUNTER_PLUGIN) adds through the counter plugin, which calls back into the host's AddHelper
// over the broker: `put hello 1` twice, then `get hello` prints 2; the file holds {"Value":2}.
//
// Mirrors go-plugin examples/bidirectional (README: `./counter put hello 1` twice,
// `./counter get hello`).
func TestExampleCounter(t *testing.T) {
	eachImpl(t, true, func(t *testing.T, im impl) {
		dir := t.TempDir()
		env := []string{"COUNTER_PLUGIN=" + im.bin(t, im.counter)}
		for i := 0; i < 2; i++ {
			if out := runExampleHost(t, dir, goRef.counterHost, env, "put", "hello", "1"); out != "" {
				t.Errorf("put #%d printed %q, want nothing", i+1, out)
			}
		}
		if out := runExampleHost(t, dir, goRef.counterHost, env, "get", "hello"); out != "2\n" {
			t.Errorf("get printed %q, want \"2\\n\"", out)
		}
		b, err := os.ReadFile(filepath.Join(dir, "kv_hello"))
		if err != nil {
			t.Fatalf("value file: %v", err)
		}
		if string(b) != `{"Value":2}` {
			t.Errorf("kv_hello = %q, want %q", b, `{"Value":2}`)
		}
	})
}
