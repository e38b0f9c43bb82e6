package gohost

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/goplugin-rs/compat-tests/internal/testplugin"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
)

// TestGRPCBasic: spec §19 item 1. Handshake accepted with protocol grpc and version 1,
// Double(21) == 42, then Kill: the plugin exits by itself (no SIGKILL) within 2 s.
//
// Mirrors go-plugin TestClient_grpc (client_test.go).
func TestGRPCBasic(t *testing.T) {
	eachImpl(t, true, func(t *testing.T, im impl) {
		h := newHost(t, im.bin(t, im.grpctest), hostOpts{})
		if _, err := h.c.Start(); err != nil {
			t.Fatalf("Start: %v", err)
		}
		if p := h.c.Protocol(); p != plugin.ProtocolGRPC {
			t.Fatalf("Protocol() = %q, want %q", p, plugin.ProtocolGRPC)
		}
		if v := h.c.NegotiatedVersion(); v != 1 {
			t.Fatalf("NegotiatedVersion() = %d, want 1", v)
		}
		tc := h.dispense(t)
		mustDouble(t, tc, 21, 42)
		h.killGracefully(t)
	})
}

// TestGRPCNotAllowed: spec §19 item 2. A host that allows only netrpc (go-plugin's default)
// refuses a plugin announcing grpc, already in Start.
//
// Mirrors go-plugin TestClient_grpcNotAllowed (client_test.go).
func TestGRPCNotAllowed(t *testing.T) {
	eachImpl(t, true, func(t *testing.T, im impl) {
		logger, _ := newHostLogger(t, hclog.Trace)
		cmd := exec.Command(im.bin(t, im.grpctest))
		cmd.Env = append(cleanEnv(), "TMPDIR="+shortTempDir(t)) // the refused plugin is SIGKILLed
		c := plugin.NewClient(&plugin.ClientConfig{
			Cmd:             cmd,
			HandshakeConfig: testplugin.Handshake,
			Plugins:         testplugin.PluginSet(),
			Logger:          logger,
			SkipHostEnv:     true,
		})
		t.Cleanup(c.Kill)
		_, err := c.Start()
		if err == nil {
			t.Fatal("Start succeeded, want an unsupported-protocol error")
		}
		if want := `unsupported plugin protocol "grpc"`; !strings.Contains(err.Error(), want) {
			t.Fatalf("Start error %q does not contain %q", err, want)
		}
	})
}

// TestCleanShutdownNoErrorLogs: spec §19 item 3. Client() then Kill() leaves not a single
// Error-level line in the host log (which also receives the plugin's forwarded stderr), both with
// go-plugin's default process start and with a runner whose stdout reads are delayed, so that a
// stdout-scanner race with process exit would show up as an error.
//
// Mirrors go-plugin TestClient_testCleanup and TestClient_noStdoutScannerRace (client_test.go).
func TestCleanShutdownNoErrorLogs(t *testing.T) {
	cases := []struct {
		name   string
		runner *runnerOpts
	}{
		{"cmd", nil},
		{"delayed-stdout-runner", &runnerOpts{delayStdout: 100 * time.Millisecond}},
	}
	eachImpl(t, true, func(t *testing.T, im impl) {
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				h := newHost(t, im.bin(t, im.grpctest), hostOpts{runner: tc.runner})
				if _, err := h.c.Client(); err != nil {
					t.Fatalf("Client(): %v", err)
				}
				h.killGracefully(t)
				if errs := h.errorLines(); len(errs) != 0 {
					t.Errorf("host logged %d Error lines, want 0:\n%s", len(errs), strings.Join(errs, "\n"))
				}
			})
		}
	})
}

// TestCleanupMode: the plugin's serve call returns after GRPCController.Shutdown, so code after
// it runs (mode `cleanup PATH` writes "foo" to PATH) before the process exits; no host errors.
//
// Mirrors go-plugin TestClient_testCleanup (client_test.go).
func TestCleanupMode(t *testing.T) {
	eachImpl(t, true, func(t *testing.T, im impl) {
		path := filepath.Join(t.TempDir(), "output")
		h := newHost(t, im.bin(t, im.grpctest), hostOpts{args: []string{"cleanup", path}})
		if _, err := h.c.Client(); err != nil {
			t.Fatalf("Client(): %v", err)
		}
		if _, err := os.Stat(path); err == nil {
			t.Fatalf("%s exists before Kill", path)
		}
		h.killGracefully(t)
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("after Kill: %v (serve did not return gracefully)", err)
		}
		if string(b) != "foo" {
			t.Fatalf("%s = %q, want \"foo\"", path, b)
		}
		if errs := h.errorLines(); len(errs) != 0 {
			t.Errorf("host logged %d Error lines, want 0:\n%s", len(errs), strings.Join(errs, "\n"))
		}
	})
}

// TestServerCrash: spec §19 item 4. SIGKILL of the plugin process cancels the context go-plugin
// handed to the dispensed client and marks the client exited, within 2 s.
//
// Mirrors go-plugin TestClient_grpc_servercrash (client_test.go).
func TestServerCrash(t *testing.T) {
	eachImpl(t, true, func(t *testing.T, im impl) {
		h := newHost(t, im.bin(t, im.grpctest), hostOpts{})
		tc := h.dispense(t)
		mustDouble(t, tc, 5, 10)
		rc := h.c.ReattachConfig()
		if rc == nil || rc.Pid == 0 {
			t.Fatalf("ReattachConfig() = %s, want a pid", describe(rc))
		}
		if err := syscall.Kill(rc.Pid, syscall.SIGKILL); err != nil {
			t.Fatalf("kill %d: %v", rc.Pid, err)
		}
		select {
		case <-tc.DoneCtx.Done():
		case <-time.After(gracefulExit):
			t.Fatal("client context not cancelled within 2 s of SIGKILL")
		}
		if !waitFor(gracefulExit, h.c.Exited) {
			t.Fatal("Exited() still false 2 s after SIGKILL")
		}
	})
}

// TestSyncStdio: spec §19 item 5. What the plugin writes to its stdout/stderr after the handshake
// reaches ClientConfig.SyncStdout/SyncStderr byte for byte (through GRPCStdio, not through the
// stderr log pipe); ReattachConfig has the pid (0 when started through a RunnerFunc).
//
// Mirrors go-plugin TestClient_grpcSyncStdio (client_test.go).
func TestSyncStdio(t *testing.T) {
	cases := []struct {
		name   string
		runner *runnerOpts
	}{
		{"default", nil},
		{"runner-func", &runnerOpts{}},
	}
	eachImpl(t, true, func(t *testing.T, im impl) {
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				var syncOut, syncErr syncBuffer
				h := newHost(t, im.bin(t, im.grpctest), hostOpts{
					syncOut: &syncOut,
					syncErr: &syncErr,
					runner:  c.runner,
				})
				tc := h.dispense(t)

				rc := h.c.ReattachConfig()
				if rc == nil {
					t.Fatal("ReattachConfig() = nil")
				}
				if c.runner == nil && rc.Pid == 0 {
					t.Errorf("ReattachConfig().Pid = 0, want the plugin pid")
				}
				if c.runner != nil && rc.Pid != 0 {
					t.Errorf("ReattachConfig().Pid = %d with a RunnerFunc, want 0", rc.Pid)
				}

				stdout := "hello\nworld!"
				stderr := "and some error\n messages!"
				if err := tc.PrintStdio(callCtx(t), []byte(stdout), []byte(stderr)); err != nil {
					t.Fatalf("PrintStdio: %v", err)
				}
				waitFor(5*time.Second, func() bool {
					return syncOut.Len() >= len(stdout) && syncErr.Len() >= len(stderr)
				})
				// Anything extra would arrive right behind; give it a moment.
				time.Sleep(100 * time.Millisecond)
				if got := syncOut.String(); got != stdout {
					t.Errorf("SyncStdout = %q, want %q", got, stdout)
				}
				if got := syncErr.String(); got != stderr {
					t.Errorf("SyncStderr = %q, want %q", got, stderr)
				}
				h.killGracefully(t)
			})
		}
	})
}

// TestSyncStdioStderrPipe: spec §11 and §13. What the plugin application prints to stderr after
// the handshake reaches SyncStderr through GRPCStdio in both implementations. Where it also goes
// differs on purpose: a Go plugin has swapped os.Stderr for the GRPCStdio pipe, so the bytes stay
// out of the stderr pipe go-plugin parses as the plugin's log; the Rust plugin captures fd 2 itself
// (C code and child processes included) and also copies it to the log pipe, so the host still logs
// it (README "Differences from a Go plugin, on purpose"). Each side is held to its own behaviour.
//
// Mirrors go-plugin TestClient_grpcSyncStdio (client_test.go), the stderr-pipe side of it.
func TestSyncStdioStderrPipe(t *testing.T) {
	eachImpl(t, true, func(t *testing.T, im impl) {
		var syncErr, rawStderr syncBuffer
		h := newHost(t, im.bin(t, im.grpctest), hostOpts{syncErr: &syncErr, stderr: &rawStderr})
		tc := h.dispense(t)
		const marker = "stdio-only 4711\n"
		if err := tc.PrintStdio(callCtx(t), nil, []byte(marker)); err != nil {
			t.Fatalf("PrintStdio: %v", err)
		}
		if !waitFor(5*time.Second, func() bool { return syncErr.String() == marker }) {
			t.Fatalf("SyncStderr = %q, want %q", syncErr.String(), marker)
		}
		h.killGracefully(t) // drains the stderr pipe
		onLogPipe := strings.Contains(rawStderr.String(), "stdio-only 4711")
		wantOnLogPipe := im.name == "rust"
		if onLogPipe != wantOnLogPipe {
			t.Errorf("%s plugin: PrintStdio's stderr bytes on the log pipe = %v, want %v. ClientConfig.Stderr got:\n%s",
				im.name, onLogPipe, wantOnLogPipe, rawStderr.String())
		}
	})
}

// TestReattach: spec §19 item 6. A second client built from the first one's ReattachConfig (default
// attach, and through a ReattachFunc) reaches the same process: Double(21) == 42; its Kill shuts
// the plugin down gracefully. Afterwards the same ReattachConfig fails with ErrProcessNotFound,
// and the plugin removed its unix socket.
//
// Mirrors go-plugin TestClient_reattachGRPC and TestClient_reattachNotFound (client_test.go).
func TestReattach(t *testing.T) {
	cases := []struct {
		name         string
		reattachFunc bool
	}{
		{"default", false},
		{"reattach-func", true},
	}
	eachImpl(t, true, func(t *testing.T, im impl) {
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				first := newHost(t, im.bin(t, im.grpctest), hostOpts{})
				if _, err := first.c.Client(); err != nil {
					t.Fatalf("Client(): %v", err)
				}
				rc := first.c.ReattachConfig()
				if rc == nil || rc.Pid == 0 || rc.Protocol != plugin.ProtocolGRPC {
					t.Fatalf("ReattachConfig() = %s", describe(rc))
				}
				stale := *rc
				if c.reattachFunc {
					rc = &plugin.ReattachConfig{
						Protocol:     rc.Protocol,
						Addr:         rc.Addr,
						ReattachFunc: reattachFunc(rc.Pid, rc.Addr),
					}
				}

				logger, logBuf := newHostLogger(t, hclog.Trace)
				second := plugin.NewClient(&plugin.ClientConfig{
					Reattach:         rc,
					HandshakeConfig:  testplugin.Handshake,
					Plugins:          testplugin.PluginSet(),
					AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
					Logger:           logger,
				})
				t.Cleanup(second.Kill)
				h2 := &host{c: second, log: logBuf, path: first.path}
				tc := h2.dispense(t)
				mustDouble(t, tc, 21, 42)
				h2.killGracefully(t)

				// The original client sees the exit too.
				if !waitFor(gracefulExit, first.c.Exited) {
					t.Errorf("first client: Exited() still false after the reattached Kill")
				}
				if first.cmd.ProcessState != nil && first.cmd.ProcessState.ExitCode() != 0 {
					t.Errorf("plugin exit status %v, want 0", first.cmd.ProcessState)
				}

				if stale.Addr.Network() == "unix" {
					if _, err := os.Stat(stale.Addr.String()); !errors.Is(err, os.ErrNotExist) {
						t.Errorf("unix socket %s still present after exit (stat: %v)", stale.Addr, err)
					}
				}

				again := plugin.NewClient(&plugin.ClientConfig{
					Reattach:         &stale,
					HandshakeConfig:  testplugin.Handshake,
					Plugins:          testplugin.PluginSet(),
					AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
					Logger:           hclog.NewNullLogger(),
				})
				t.Cleanup(again.Kill)
				if _, err := again.Start(); !errors.Is(err, plugin.ErrProcessNotFound) {
					t.Errorf("reattach to the exited plugin: err = %v, want ErrProcessNotFound", err)
				}
			})
		}
	})
}

// TestVersionNegotiation: spec §19 item 9 and §3. The plugin answers with the highest version both
// sides have; without a common version it announces its lowest and the Go host refuses it.
//
// Mirrors go-plugin TestClient_versionedClient, TestClient_legacyServer and
// TestClientStart_badNegotiatedVersion (client_test.go).
func TestVersionNegotiation(t *testing.T) {
	cases := []struct {
		name    string
		mode    string
		host    []int
		want    int    // negotiated version; 0 = Start must fail
		wantErr string // substring of the Start error
	}{
		{name: "versioned/host-2-3", mode: "test-versioned", host: []int{2, 3}, want: 3},
		{name: "versioned/host-2", mode: "test-versioned", host: []int{2}, want: 2},
		{name: "versioned/host-3-4", mode: "test-versioned", host: []int{3, 4}, want: 3},
		{name: "versioned/host-1", mode: "test-versioned", host: []int{1},
			wantErr: "incompatible API version with plugin. Plugin version: 2, Client versions: [1]"},
		{name: "versioned/host-4", mode: "test-versioned", host: []int{4},
			wantErr: "incompatible API version with plugin. Plugin version: 2, Client versions: [4]"},
		{name: "single-v2/host-2", mode: "test-mtls", host: []int{2}, want: 2},
		{name: "single-v1/host-1-2", mode: "test-grpc", host: []int{1, 2}, want: 1},
		{name: "single-v1/host-2", mode: "test-grpc", host: []int{2},
			wantErr: "incompatible API version with plugin. Plugin version: 1, Client versions: [2]"},
	}
	eachImpl(t, true, func(t *testing.T, im impl) {
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				h := newHost(t, im.bin(t, im.grpctest), hostOpts{args: []string{c.mode}, versions: c.host})
				_, err := h.c.Start()
				if c.want == 0 {
					if err == nil {
						t.Fatalf("Start succeeded with version %d, want an error", h.c.NegotiatedVersion())
					}
					if !strings.Contains(err.Error(), c.wantErr) {
						t.Fatalf("Start error %q does not contain %q", err, c.wantErr)
					}
					return
				}
				if err != nil {
					t.Fatalf("Start: %v", err)
				}
				if v := h.c.NegotiatedVersion(); v != c.want {
					t.Fatalf("NegotiatedVersion() = %d, want %d", v, c.want)
				}
				if p := h.c.Protocol(); p != plugin.ProtocolGRPC {
					t.Fatalf("Protocol() = %q, want grpc", p)
				}
				mustDouble(t, h.dispense(t), 21, 42)
				h.killGracefully(t)
			})
		}
	})
}

// stderrLines are what mode `stderr` writes to its stderr right after the handshake.
var stderrLines = []string{"HELLO", "WORLD", `["HELLO"]`, "12345", `{"a":1}`, "[WARN] test line 98765"}

// TestStderr: spec §19 items 10-12 and §13. Raw stderr lines reach ClientConfig.Stderr verbatim;
// in the host log, plain text and non-object JSON (and an object without @level) appear verbatim
// at Debug, and a "[WARN]"-prefixed line at Warn, so it survives a Warn-level host logger while
// the Debug lines do not.
//
// Mirrors go-plugin TestClient_Stderr, TestClient_StderrJSON and TestClient_textLogLevel
// (client_test.go).
func TestStderr(t *testing.T) {
	eachImpl(t, true, func(t *testing.T, im impl) {
		t.Run("trace", func(t *testing.T) {
			var stderr syncBuffer
			h := newHost(t, im.bin(t, im.grpctest), hostOpts{args: []string{"stderr"}, stderr: &stderr})
			if _, err := h.c.Start(); err != nil {
				t.Fatalf("Start: %v", err)
			}
			want := strings.Join(stderrLines, "\n") + "\n"
			if !waitFor(5*time.Second, func() bool { return strings.Contains(stderr.String(), want) }) {
				t.Fatalf("Stderr writer does not contain the six lines in order.\nwant substring %q\ngot %q", want, stderr.String())
			}
			if !waitFor(2*time.Second, func() bool { return strings.Contains(h.log.String(), "test line 98765") }) {
				t.Fatal("host log does not contain the [WARN] line")
			}
			logged := h.log.lines()
			for i, line := range stderrLines {
				level := "DEBUG"
				if i == len(stderrLines)-1 {
					level = "WARN"
				}
				wantLine := h.pluginLogPrefix(level) + line
				if !containsSuffix(logged, wantLine) {
					t.Errorf("host log has no line ending in %q", wantLine)
				}
			}
			h.killGracefully(t)
		})
		t.Run("warn", func(t *testing.T) {
			var stderr syncBuffer
			h := newHost(t, im.bin(t, im.grpctest), hostOpts{args: []string{"stderr"}, stderr: &stderr, level: hclog.Warn})
			if _, err := h.c.Start(); err != nil {
				t.Fatalf("Start: %v", err)
			}
			if !waitFor(5*time.Second, func() bool { return strings.Contains(h.log.String(), "test line 98765") }) {
				t.Fatal("Warn-level host log does not contain \"test line 98765\"")
			}
			if !waitFor(2*time.Second, func() bool { return strings.Contains(stderr.String(), "[WARN] test line 98765\n") }) {
				t.Fatal("Stderr writer does not contain the [WARN] line")
			}
			if strings.Contains(h.log.String(), "HELLO") {
				t.Errorf("Warn-level host log contains the Debug-level HELLO lines")
			}
			h.killGracefully(t)
		})
	})
}

func containsSuffix(lines []string, suffix string) bool {
	for _, l := range lines {
		if strings.HasSuffix(l, suffix) {
			return true
		}
	}
	return false
}

// TestLogger: spec §19 item 13 and §13. PrintKV makes the plugin log hclog JSON on stderr; the host
// re-emits it at Info with the key/value pair (foo=bar, foo=12) and the parsed timestamp.
//
// Mirrors go-plugin TestClient_logger, grpc subtest (client_test.go).
func TestLogger(t *testing.T) {
	eachImpl(t, true, func(t *testing.T, im impl) {
		h := newHost(t, im.bin(t, im.grpctest), hostOpts{level: hclog.Debug})
		tc := h.dispense(t)
		seen := 0
		for _, c := range []struct {
			value interface{}
			want  string
		}{
			{"bar", "foo=bar"},
			{12, "foo=12"},
		} {
			if err := tc.PrintKV(callCtx(t), "foo", c.value); err != nil {
				t.Fatalf("PrintKV(foo, %v): %v", c.value, err)
			}
			prefix := h.pluginLogPrefix("INFO") + "PrintKV called:"
			var line string
			waitFor(5*time.Second, func() bool {
				n := 0
				for _, l := range h.log.lines() {
					if strings.Contains(l, prefix) {
						n++
						line = l
					}
				}
				return n > seen
			})
			if line == "" || !strings.Contains(line, prefix) {
				t.Fatalf("no host log line containing %q", prefix)
			}
			seen++
			if !strings.Contains(line, " "+c.want+" ") && !strings.HasSuffix(line, " "+c.want) {
				t.Errorf("PrintKV log line %q does not contain %q", line, c.want)
			}
			if !strings.Contains(line, " timestamp=") {
				t.Errorf("PrintKV log line %q has no timestamp= pair (was @timestamp parsed?)", line)
			}
		}
		h.killGracefully(t)
	})
}

// TestPanic: spec §19 item 15. Panic("invalid foo bar") crashes the plugin; the host logs
// "panic: invalid foo bar" at Error followed by at least 10 more Error lines (panic mode), and the
// RPC returns an error.
//
// Mirrors go-plugin TestServerLogPanic (client_test.go).
func TestPanic(t *testing.T) {
	eachImpl(t, true, func(t *testing.T, im impl) {
		h := newHost(t, im.bin(t, im.grpctest), hostOpts{level: hclog.Error})
		tc := h.dispense(t)
		if err := tc.Panic(callCtx(t), "invalid foo bar"); err == nil {
			t.Error("Panic RPC returned no error")
		}
		// Once the process has exited, go-plugin has read its whole stderr.
		if !waitFor(5*time.Second, h.c.Exited) {
			t.Fatal("plugin still running 5 s after Panic (a panic must end the process, as in Go)")
		}
		if h.cmd.ProcessState.Success() {
			t.Errorf("plugin exit status %v after a panic, want failure (Go exits 2)", h.cmd.ProcessState)
		}
		panicLine := h.pluginLogPrefix("ERROR") + "panic: invalid foo bar"
		found, after := false, 0
		for _, l := range h.log.lines() {
			if !found {
				found = strings.Contains(l, panicLine)
				continue
			}
			if strings.Contains(l, h.pluginLogPrefix("ERROR")) {
				after++
			}
		}
		if !found {
			t.Fatalf("host log has no line containing %q", panicLine)
		}
		if after < 10 {
			t.Fatalf("only %d Error lines from the plugin after the panic line, want >= 10", after)
		}
	})
}

// TestStdin: spec §19 item 16. The plugin inherits the host's stdin: with "hello" on it (a file,
// as upstream does, and a pipe), mode `stdin` exits 0.
//
// Mirrors go-plugin TestClient_Stdin (client_test.go). Not parallel: it swaps os.Stdin.
func TestStdin(t *testing.T) {
	sources := []struct {
		name string
		open func(t *testing.T) *os.File
	}{
		{"file", func(t *testing.T) *os.File {
			f, err := os.CreateTemp(t.TempDir(), "stdin")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteString("hello"); err != nil {
				t.Fatal(err)
			}
			if _, err := f.Seek(0, 0); err != nil {
				t.Fatal(err)
			}
			return f
		}},
		{"pipe", func(t *testing.T) *os.File {
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.WriteString("hello"); err != nil {
				t.Fatal(err)
			}
			_ = w.Close()
			return r
		}},
	}
	eachImpl(t, false, func(t *testing.T, im impl) {
		path := im.bin(t, im.grpctest)
		for _, src := range sources {
			t.Run(src.name, func(t *testing.T) {
				f := src.open(t)
				defer func() { _ = f.Close() }()
				old := os.Stdin
				os.Stdin = f
				h := newHost(t, path, hostOpts{args: []string{"stdin"}})
				_, err := h.c.Start() // go-plugin hands os.Stdin to the child here
				os.Stdin = old
				if err != nil {
					t.Fatalf("Start: %v", err)
				}
				if !waitFor(5*time.Second, h.c.Exited) {
					t.Fatal("plugin did not exit within 5 s after reading stdin")
				}
				if !h.cmd.ProcessState.Success() {
					t.Fatalf("plugin exit status %v, want 0 (it should have read \"hello\")", h.cmd.ProcessState)
				}
			})
		}
	})
}

// TestAutoMTLS: spec §19 item 19 and §6. An AutoMTLS host and mode `test-mtls` (version 2):
// field 6 is accepted, Ping works, Double(3) == 6, Kill is graceful.
//
// Mirrors go-plugin TestClient_mtlsClient (client_test.go).
func TestAutoMTLS(t *testing.T) {
	eachImpl(t, true, func(t *testing.T, im impl) {
		h := newHost(t, im.bin(t, im.grpctest), hostOpts{args: []string{"test-mtls"}, versions: []int{2}, autoMTLS: true})
		if _, err := h.c.Start(); err != nil {
			t.Fatalf("Start: %v", err)
		}
		if p := h.c.Protocol(); p != plugin.ProtocolGRPC {
			t.Fatalf("Protocol() = %q", p)
		}
		if v := h.c.NegotiatedVersion(); v != 2 {
			t.Fatalf("NegotiatedVersion() = %d, want 2", v)
		}
		proto, err := h.c.Client()
		if err != nil {
			t.Fatalf("Client(): %v", err)
		}
		if err := proto.Ping(); err != nil {
			t.Fatalf("Ping over mTLS: %v", err)
		}
		mustDouble(t, h.dispense(t), 3, 6)
		h.killGracefully(t)
	})
}

// brokerModes is the matrix of AutoMTLS off/on and broker default/multiplexed.
var brokerModes = []struct {
	name     string
	autoMTLS bool
	mux      bool
}{
	{"plain/default", false, false},
	{"plain/mux", false, true},
	{"mtls/default", true, false},
	{"mtls/mux", true, true},
}

// brokerHost starts the plugin for one cell of brokerModes (AutoMTLS uses mode test-mtls, v2).
func brokerHost(t *testing.T, im impl, autoMTLS, mux bool) *host {
	o := hostOpts{autoMTLS: autoMTLS, mux: mux}
	if autoMTLS {
		o.args = []string{"test-mtls"}
		o.versions = []int{2}
	}
	return newHost(t, im.bin(t, im.grpctest), o)
}

// TestBidirectional: spec §19 items 20-22 (§8, §9). Double(21) == 42, then Bidirectional twice:
// the host serves PingPong on a broker id that the plugin dials, and the plugin serves PingPong on
// an id of its own that the host dials; over plain and AutoMTLS connections, with the default and
// the multiplexed broker.
//
// Mirrors go-plugin TestGRPC_App default/mux (grpc_client_test.go) and
// TestServer_testMode_AutoMTLS (server_test.go).
func TestBidirectional(t *testing.T) {
	eachImpl(t, true, func(t *testing.T, im impl) {
		for _, m := range brokerModes {
			t.Run(m.name, func(t *testing.T) {
				h := brokerHost(t, im, m.autoMTLS, m.mux)
				tc := h.dispense(t)
				mustDouble(t, tc, 21, 42)
				for i := 0; i < 2; i++ {
					if err := tc.Bidirectional(callCtx(t)); err != nil {
						t.Fatalf("Bidirectional #%d: %v", i+1, err)
					}
				}
				mustDouble(t, tc, 4, 8)
				h.killGracefully(t)
			})
		}
	})
}

// TestStream: spec §19 item 23. Test.Stream echoes 21..26 one message at a time and ends with OK
// after the host closes its side; default and multiplexed broker.
//
// Mirrors go-plugin TestGRPCC_Stream default/mux (grpc_client_test.go).
func TestStream(t *testing.T) {
	eachImpl(t, true, func(t *testing.T, im impl) {
		for _, m := range brokerModes[:2] {
			t.Run(m.name, func(t *testing.T) {
				h := brokerHost(t, im, m.autoMTLS, m.mux)
				tc := h.dispense(t)
				got, err := tc.Stream(callCtx(t), 21, 27)
				if err != nil {
					t.Fatalf("Stream: %v (got %v so far)", err, got)
				}
				if want := []int32{21, 22, 23, 24, 25, 26}; !reflect.DeepEqual(got, want) {
					t.Fatalf("Stream(21, 27) = %v, want %v", got, want)
				}
				h.killGracefully(t)
			})
		}
	})
}

// TestPing: spec §19 item 24 and §12. Two Pings (health Check "plugin") succeed; after Kill Ping
// fails. Default and multiplexed broker.
//
// Mirrors go-plugin TestGRPC_Ping default/mux (grpc_client_test.go) and TestClient_ping
// (client_test.go).
func TestPing(t *testing.T) {
	eachImpl(t, true, func(t *testing.T, im impl) {
		for _, m := range brokerModes[:2] {
			t.Run(m.name, func(t *testing.T) {
				h := brokerHost(t, im, m.autoMTLS, m.mux)
				proto, err := h.c.Client()
				if err != nil {
					t.Fatalf("Client(): %v", err)
				}
				for i := 0; i < 2; i++ {
					if err := proto.Ping(); err != nil {
						t.Fatalf("Ping #%d: %v", i+1, err)
					}
				}
				h.killGracefully(t)
				if err := proto.Ping(); err == nil {
					t.Fatal("Ping after Kill succeeded")
				}
			})
		}
	})
}
