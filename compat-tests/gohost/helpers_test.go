package gohost

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/goplugin-rs/compat-tests/internal/testplugin"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"github.com/hashicorp/go-plugin/runner"
)

// gracefulExit is go-plugin's window between GRPCController.Shutdown and SIGKILL (spec §14).
const gracefulExit = 2 * time.Second

// startTimeout bounds the wait for the handshake line (go-plugin's default is a minute).
const startTimeout = 20 * time.Second

// forcedKillLog is the warning go-plugin logs right before it SIGKILLs a plugin.
const forcedKillLog = "plugin failed to exit gracefully"

// syncBuffer is a bytes.Buffer safe for concurrent writers and readers.
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

func (b *syncBuffer) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Len()
}

// lines returns the buffer's complete lines.
func (b *syncBuffer) lines() []string {
	s := b.String()
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	} else {
		return nil
	}
	return strings.Split(s, "\n")
}

// newHostLogger returns an hclog text logger named "test-logger" writing into a buffer; the
// buffer is printed when the test fails, or always when COMPAT_DUMP_LOGS is set.
func newHostLogger(t testing.TB, level hclog.Level) (hclog.Logger, *syncBuffer) {
	t.Helper()
	buf := &syncBuffer{}
	logger := hclog.New(&hclog.LoggerOptions{
		Name:   "test-logger",
		Level:  level,
		Output: buf,
	})
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("COMPAT_DUMP_LOGS") != "" {
			t.Logf("host log:\n%s", buf.String())
		}
	})
	return logger, buf
}

// hostOpts describes a go-plugin host for the `test` plugin.
type hostOpts struct {
	args []string // plugin argv after the binary: the mode and its arguments
	// level of the host logger; zero means Trace.
	level hclog.Level
	// versions, when set, makes the host offer exactly these versions (VersionedPlugins);
	// otherwise it offers protocol version 1 (Handshake + Plugins).
	versions []int
	autoMTLS bool
	tls      *tls.Config // ClientConfig.TLSConfig: pre-shared TLS
	mux      bool        // GRPCBrokerMultiplex
	env      []string
	stderr   io.Writer // ClientConfig.Stderr
	syncOut  io.Writer
	syncErr  io.Writer
	unix     *plugin.UnixSocketConfig
	minPort  uint
	maxPort  uint
	// runner, when set, starts the plugin through ClientConfig.RunnerFunc with our own runner
	// (go-plugin's own cmdrunner is internal) instead of ClientConfig.Cmd.
	runner *runnerOpts
}

type runnerOpts struct {
	// delayStdout delays every read of the plugin's stdout (TestClient_noStdoutScannerRace).
	delayStdout time.Duration
	// inspect is called inside RunnerFunc with go-plugin's cmd and socket dir.
	inspect func(cmd *exec.Cmd, socketDir string)
}

// host is a go-plugin client of a `test` plugin process.
type host struct {
	c    *plugin.Client
	log  *syncBuffer
	cmd  *exec.Cmd // the plugin process (also when started through our RunnerFunc)
	path string
}

func newHost(t *testing.T, path string, o hostOpts) *host {
	t.Helper()
	level := o.level
	if level == hclog.NoLevel {
		level = hclog.Trace
	}
	logger, logBuf := newHostLogger(t, level)

	cfg := &plugin.ClientConfig{
		HandshakeConfig:     testplugin.Handshake,
		AllowedProtocols:    []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:              logger,
		AutoMTLS:            o.autoMTLS,
		TLSConfig:           o.tls,
		GRPCBrokerMultiplex: o.mux,
		Stderr:              o.stderr,
		SyncStdout:          o.syncOut,
		SyncStderr:          o.syncErr,
		UnixSocketConfig:    o.unix,
		MinPort:             o.minPort,
		MaxPort:             o.maxPort,
		StartTimeout:        startTimeout,
	}
	if o.versions == nil {
		cfg.Plugins = testplugin.PluginSet()
	} else {
		cfg.HandshakeConfig = testplugin.VersionedHandshake
		cfg.VersionedPlugins = map[int]plugin.PluginSet{}
		for _, v := range o.versions {
			cfg.VersionedPlugins[v] = testplugin.PluginSet()
		}
	}

	// The plugin gets the test process's environment minus anything go-plugin or the Rust plugin
	// interpret (cleanEnv), plus o.env. SkipHostEnv stops go-plugin from appending os.Environ()
	// after cmd.Env, where it would override o.env.
	// TMPDIR points at a per-test directory so sockets of killed plugins do not pile up in /tmp.
	cfg.SkipHostEnv = true
	cmd := exec.Command(path, o.args...)
	cmd.Env = append(append(cleanEnv(), "TMPDIR="+shortTempDir(t)), o.env...)
	h := &host{log: logBuf, path: path, cmd: cmd}
	if o.runner == nil {
		cfg.Cmd = cmd
	} else {
		ro := *o.runner
		cfg.RunnerFunc = func(l hclog.Logger, spec *exec.Cmd, socketDir string) (runner.Runner, error) {
			if ro.inspect != nil {
				ro.inspect(spec, socketDir)
			}
			cmd.Env = append(cmd.Env, spec.Env...)
			cmd.Stdin = spec.Stdin
			return newCmdRunner(cmd, ro.delayStdout)
		}
	}
	h.c = plugin.NewClient(cfg)
	t.Cleanup(h.c.Kill)
	return h
}

// dispense connects (if not yet connected) and returns the `test` plugin client.
func (h *host) dispense(t *testing.T) *testplugin.Client {
	t.Helper()
	proto, err := h.c.Client()
	if err != nil {
		t.Fatalf("Client(): %v", err)
	}
	raw, err := proto.Dispense(testplugin.Name)
	if err != nil {
		t.Fatalf("Dispense(%q): %v", testplugin.Name, err)
	}
	tc, ok := raw.(*testplugin.Client)
	if !ok {
		t.Fatalf("Dispense returned %T", raw)
	}
	return tc
}

// killGracefully calls Kill and checks that the plugin exited on its own after
// GRPCController.Shutdown, i.e. within go-plugin's 2 s window, without SIGKILL, with status 0.
func (h *host) killGracefully(t *testing.T) {
	t.Helper()
	start := time.Now()
	h.c.Kill()
	elapsed := time.Since(start)
	if !h.c.Exited() {
		t.Errorf("after Kill: Exited() = false")
	}
	if strings.Contains(h.log.String(), forcedKillLog) {
		t.Errorf("plugin was force-killed: host logged %q (Kill took %v)", forcedKillLog, elapsed)
	}
	if elapsed >= gracefulExit {
		t.Errorf("Kill took %v, want < %v", elapsed, gracefulExit)
	}
	if h.cmd != nil && h.cmd.ProcessState != nil {
		if code := h.cmd.ProcessState.ExitCode(); code != 0 {
			t.Errorf("plugin exit status after Kill: %v, want 0", h.cmd.ProcessState)
		}
	}
}

// errorLines returns the host log's Error-level lines.
func (h *host) errorLines() []string {
	var out []string
	for _, l := range h.log.lines() {
		if strings.Contains(l, "[ERROR]") {
			out = append(out, l)
		}
	}
	return out
}

// pluginLogPrefix is how the host logger prints a line forwarded from the plugin's stderr at the
// given level, e.g. "[INFO]  test-logger.grpctest-plugin-go: ".
func (h *host) pluginLogPrefix(level string) string {
	pad := ""
	if len(level) == 4 {
		pad = " "
	}
	return "[" + level + "]" + pad + " test-logger." + shortName(h.path) + ": "
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

func callCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func mustDouble(t *testing.T, tc *testplugin.Client, in, want int32) {
	t.Helper()
	got, err := tc.Double(callCtx(t), in)
	if err != nil {
		t.Fatalf("Double(%d): %v", in, err)
	}
	if got != want {
		t.Fatalf("Double(%d) = %d, want %d", in, got, want)
	}
}

// cmdRunner is a minimal runner.Runner for a plain child process, standing in for go-plugin's
// internal cmdrunner so tests can use ClientConfig.RunnerFunc.
type cmdRunner struct {
	cmd         *exec.Cmd
	stdout      io.ReadCloser
	stderr      io.ReadCloser
	delayStdout time.Duration
}

var _ runner.Runner = (*cmdRunner)(nil)

func newCmdRunner(cmd *exec.Cmd, delayStdout time.Duration) (*cmdRunner, error) {
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	return &cmdRunner{cmd: cmd, stdout: stdout, stderr: stderr, delayStdout: delayStdout}, nil
}

func (r *cmdRunner) Start(context.Context) error     { return r.cmd.Start() }
func (r *cmdRunner) Diagnose(context.Context) string { return "" }
func (r *cmdRunner) Stderr() io.ReadCloser           { return r.stderr }
func (r *cmdRunner) Name() string                    { return r.cmd.Path }
func (r *cmdRunner) Wait(context.Context) error      { return r.cmd.Wait() }

func (r *cmdRunner) Stdout() io.ReadCloser {
	if r.delayStdout > 0 {
		return &delayedReader{ReadCloser: r.stdout, delay: r.delayStdout}
	}
	return r.stdout
}

func (r *cmdRunner) Kill(context.Context) error {
	if r.cmd.Process == nil {
		return nil
	}
	if err := r.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	return nil
}

func (r *cmdRunner) ID() string {
	if r.cmd.Process == nil {
		return ""
	}
	return strconv.Itoa(r.cmd.Process.Pid)
}

func (r *cmdRunner) PluginToHost(network, addr string) (string, string, error) {
	return network, addr, nil
}

func (r *cmdRunner) HostToPlugin(network, addr string) (string, string, error) {
	return network, addr, nil
}

type delayedReader struct {
	io.ReadCloser
	delay time.Duration
}

func (d *delayedReader) Read(p []byte) (int, error) {
	time.Sleep(d.delay)
	return d.ReadCloser.Read(p)
}

// reattachFunc is our ReattachFunc (go-plugin's cmdrunner.ReattachFunc is internal): it proves
// the plugin is alive by dialing its address, then watches the pid.
func reattachFunc(pid int, addr net.Addr) runner.ReattachFunc {
	return func() (runner.AttachedRunner, error) {
		conn, err := net.Dial(addr.Network(), addr.String())
		if err != nil {
			return nil, plugin.ErrProcessNotFound
		}
		_ = conn.Close()
		return &attachedRunner{pid: pid}, nil
	}
}

type attachedRunner struct{ pid int }

func (a *attachedRunner) Wait(context.Context) error {
	for syscall.Kill(a.pid, 0) == nil {
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}

func (a *attachedRunner) Kill(context.Context) error {
	if err := syscall.Kill(a.pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	return nil
}

func (a *attachedRunner) ID() string { return strconv.Itoa(a.pid) }

func (a *attachedRunner) PluginToHost(network, addr string) (string, string, error) {
	return network, addr, nil
}

func (a *attachedRunner) HostToPlugin(network, addr string) (string, string, error) {
	return network, addr, nil
}

// describe formats a ReattachConfig for messages.
func describe(rc *plugin.ReattachConfig) string {
	if rc == nil {
		return "<nil>"
	}
	return fmt.Sprintf("{Protocol:%s Addr:%s/%s Pid:%d}", rc.Protocol, rc.Addr.Network(), rc.Addr.String(), rc.Pid)
}
