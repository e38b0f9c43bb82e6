// Command bench drives the same KV plugin written in Go (go-plugin v1.8.0's
// examples/grpc/plugin-go-grpc) and in Rust (the cargo example kv_plugin) from one Go host
// (go-plugin v1.8.0, the shared Handshake and PluginMap of examples/grpc) and prints the figures
// side by side with Rust/Go ratios, as a Markdown table.
//
//	bench -go PATH -rust PATH [-runs 30] [-calls 5000] [-rounds 5] [-out FILE]
//	bench -plugin PATH [-runs N] [-calls N] [-rounds N]       (one KV plugin, JSON samples)
//	bench -stream PATH [-stream-size B] [-stream-msgs N] [-rounds N]  (streaming, JSON samples)
//	GOPLUGIN_BENCH=stream bench                              (the Go streaming plugin, see stream.go)
//
// Every figure is measured on both plugins in alternation (go, rust, rust, go, ...) so that a
// slow phase of a noisy machine hits both alike; each is reported as the median with its spread.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"github.com/hashicorp/go-plugin/examples/grpc/shared"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/emptypb"
)

// benchKey is the key every Get reads; its file is written into each plugin's working directory
// before the plugin starts, so Get does the same small file read in both implementations.
const benchKey = "bench"

var benchValue = []byte("value")

type impl struct {
	name string // "go" or "rust"
	path string
}

type options struct {
	runs, calls, warmup, rounds int
	out, repro                  string
	goPath, rustPath            string
}

func main() {
	var o options
	flag.StringVar(&o.goPath, "go", "", "path of the Go KV plugin (examples/grpc/plugin-go-grpc)")
	flag.StringVar(&o.rustPath, "rust", "", "path of the Rust KV plugin (target/release/examples/kv_plugin)")
	flag.IntVar(&o.runs, "runs", 30, "runs per implementation for spawn-to-first-RPC and shutdown")
	flag.IntVar(&o.calls, "calls", 5000, "timed sequential Get calls per latency round")
	flag.IntVar(&o.warmup, "warmup", 500, "untimed Get calls before each latency round")
	flag.IntVar(&o.rounds, "rounds", 5, "latency rounds (a fresh plugin process each) per implementation and mode")
	flag.StringVar(&o.out, "out", "", "also write the Markdown report to this file")
	flag.StringVar(&o.repro, "repro", "", "command line shown as the way to reproduce (default: this one)")
	single := flag.String("plugin", "", "single-plugin mode: measure only this plugin and print one JSON line (see jsonMode)")
	streamPath := flag.String("stream", "", "streaming mode: measure StreamingFromServer of this plugin and print one JSON line (see streamJSON)")
	streamSize := flag.Int("stream-size", 1024, "bytes of payload per streamed message")
	streamMsgs := flag.Int("stream-msgs", 20000, "timed messages per streaming round")
	flag.Parse()
	// Started by a host as the streaming plugin: the host sets the cookie.
	if os.Getenv(streamHandshake.MagicCookieKey) == streamHandshake.MagicCookieValue {
		serveStream()
		return
	}
	if *streamPath != "" {
		if err := streamJSON(*streamPath, *streamSize, *streamMsgs/10, *streamMsgs, o.rounds); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		return
	}
	if *single != "" {
		if err := jsonMode(*single, o); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		return
	}
	if o.goPath == "" || o.rustPath == "" {
		fmt.Fprintln(os.Stderr, "bench: -go and -rust are required")
		flag.Usage()
		os.Exit(2)
	}
	if o.runs < 1 || o.calls < 100 || o.rounds < 1 || o.warmup < 0 {
		fmt.Fprintln(os.Stderr, "bench: need -runs >= 1, -calls >= 100, -rounds >= 1, -warmup >= 0")
		os.Exit(2)
	}
	if o.repro == "" {
		o.repro = strings.Join(os.Args, " ")
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// sample is what one run of one metric produced, per implementation.
type results map[string]map[string][]float64 // metric -> impl -> values

func (r results) add(metric, impl string, v float64) {
	if r[metric] == nil {
		r[metric] = map[string][]float64{}
	}
	r[metric][impl] = append(r[metric][impl], v)
}

func run(o options) error {
	impls := []impl{{"go", o.goPath}, {"rust", o.rustPath}}
	for _, im := range impls {
		if st, err := os.Stat(im.path); err != nil || st.IsDir() {
			return fmt.Errorf("%s plugin %q: not a file (%v)", im.name, im.path, err)
		}
	}
	work, err := os.MkdirTemp("", "goplugin-bench-")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(work) }()
	dirs := map[string]string{}
	for _, im := range impls {
		d := filepath.Join(work, im.name)
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(d, "kv_"+benchKey), benchValue, 0o644); err != nil {
			return err
		}
		dirs[im.name] = d
	}

	// order(i) alternates which implementation goes first, so drift hits both alike.
	order := func(i int) []impl {
		if i%2 == 0 {
			return impls
		}
		return []impl{impls[1], impls[0]}
	}
	res := results{}
	start := time.Now()

	// 1. Spawn to first RPC, without and with AutoMTLS. Kill() of the same clients is timed too.
	for _, mtls := range []bool{false, true} {
		m := modeName(mtls)
		progress("spawn-to-first-RPC (%s): %d runs per implementation", m, o.runs)
		for i := 0; i < o.runs; i++ {
			for _, im := range order(i) {
				d, kill, err := spawnToFirstRPC(im, dirs[im.name], mtls)
				if err != nil {
					return fmt.Errorf("%s spawn (%s) run %d: %w", im.name, m, i+1, err)
				}
				res.add("spawn_"+m, im.name, ms(d))
				res.add("kill_"+m, im.name, ms(kill))
			}
		}
	}

	// 2. Unary Get latency and the peak RSS reached by the end of it, per mode.
	for _, mtls := range []bool{false, true} {
		m := modeName(mtls)
		progress("unary Get latency (%s): %d rounds x %d calls per implementation", m, o.rounds, o.calls)
		for i := 0; i < o.rounds; i++ {
			for _, im := range order(i) {
				lat, hwm, err := latencyRound(im, dirs[im.name], mtls, o.warmup, o.calls)
				if err != nil {
					return fmt.Errorf("%s latency (%s) round %d: %w", im.name, m, i+1, err)
				}
				res.add("p50_"+m, im.name, percentile(lat, 0.50))
				res.add("p99_"+m, im.name, percentile(lat, 0.99))
				res.add("rss_"+m, im.name, hwm)
			}
		}
	}

	// 3. Controller.Shutdown to process exit, over our own connection, exit seen through a pidfd.
	progress("Controller.Shutdown to exit: %d runs per implementation", o.runs)
	for i := 0; i < o.runs; i++ {
		for _, im := range order(i) {
			d, err := shutdownToExit(im, dirs[im.name])
			if err != nil {
				return fmt.Errorf("%s shutdown run %d: %w", im.name, i+1, err)
			}
			res.add("shutdown", im.name, ms(d))
		}
	}
	progress("done in %s", time.Since(start).Round(100*time.Millisecond))

	report := render(o, impls, res, time.Since(start))
	fmt.Print(report)
	if o.out != "" {
		if err := os.WriteFile(o.out, []byte(report), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}

func modeName(mtls bool) string {
	if mtls {
		return "mtls"
	}
	return "plain"
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// newClient is go-plugin's host as a program would set it up for examples/grpc: the shared
// handshake and plugin map, gRPC only, the plugin started directly (no shell, so the pid go-plugin
// reports is the plugin's), host logging at Error so the plugins' Trace/Debug lines stay quiet.
func newClient(im impl, dir string, mtls bool) *plugin.Client {
	cmd := exec.Command(im.path)
	cmd.Dir = dir
	return plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  shared.Handshake,
		Plugins:          shared.PluginMap,
		Cmd:              cmd,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		AutoMTLS:         mtls,
		Logger: hclog.New(&hclog.LoggerOptions{
			Name:   "bench-" + im.name,
			Level:  hclog.Error,
			Output: os.Stderr,
		}),
		SyncStdout: io.Discard,
		SyncStderr: io.Discard,
	})
}

// kvOf connects (if not yet connected) and dispenses the KV plugin.
func kvOf(c *plugin.Client) (shared.KV, error) {
	rpc, err := c.Client()
	if err != nil {
		return nil, err
	}
	raw, err := rpc.Dispense(shared.PluginGRPC)
	if err != nil {
		return nil, err
	}
	kv, ok := raw.(shared.KV)
	if !ok {
		return nil, fmt.Errorf("dispensed %T, not shared.KV", raw)
	}
	return kv, nil
}

func checkValue(v []byte) error {
	if string(v) != string(benchValue) {
		return fmt.Errorf("Get(%q) = %q, want %q", benchKey, v, benchValue)
	}
	return nil
}

// spawnToFirstRPC: from NewClient to the first Get returning its value (exec, handshake line,
// AutoMTLS if asked, gRPC connect, stdio and broker streams, dispense, one RPC); then the time of
// client.Kill() (go-plugin's whole kill sequence, up to its return).
func spawnToFirstRPC(im impl, dir string, mtls bool) (first, kill time.Duration, err error) {
	t0 := time.Now()
	c := newClient(im, dir, mtls)
	defer c.Kill()
	kv, err := kvOf(c)
	if err != nil {
		return 0, 0, err
	}
	v, err := kv.Get(benchKey)
	first = time.Since(t0)
	if err != nil {
		return 0, 0, err
	}
	if err := checkValue(v); err != nil {
		return 0, 0, err
	}
	t1 := time.Now()
	c.Kill()
	kill = time.Since(t1)
	if !c.Exited() {
		return 0, 0, errors.New("plugin has not exited after Kill")
	}
	return first, kill, nil
}

// latencyRound starts a plugin, warms up, times `calls` sequential Gets (µs each) and then reads
// the plugin process's VmHWM (MiB).
func latencyRound(im impl, dir string, mtls bool, warmup, calls int) ([]float64, float64, error) {
	c := newClient(im, dir, mtls)
	defer c.Kill()
	kv, err := kvOf(c)
	if err != nil {
		return nil, 0, err
	}
	rc := c.ReattachConfig()
	if rc == nil || rc.Pid == 0 {
		return nil, 0, errors.New("no plugin pid")
	}
	for i := 0; i < warmup; i++ {
		if _, err := kv.Get(benchKey); err != nil {
			return nil, 0, err
		}
	}
	lat := make([]float64, calls)
	runtime.GC() // not inside the timed loop if avoidable
	for i := 0; i < calls; i++ {
		t := time.Now()
		v, err := kv.Get(benchKey)
		lat[i] = float64(time.Since(t)) / float64(time.Microsecond)
		if err != nil {
			return nil, 0, err
		}
		if i == 0 {
			if err := checkValue(v); err != nil {
				return nil, 0, err
			}
		}
	}
	hwm, err := vmHWM(rc.Pid)
	if err != nil {
		return nil, 0, err
	}
	return lat, hwm, nil
}

// vmHWM is the peak resident set size of pid in MiB, from /proc/<pid>/status.
func vmHWM(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			f := strings.Fields(strings.TrimPrefix(line, "VmHWM:"))
			if len(f) != 2 || f[1] != "kB" {
				return 0, fmt.Errorf("odd VmHWM line %q", line)
			}
			kb, err := strconv.ParseFloat(f[0], 64)
			if err != nil {
				return 0, err
			}
			return kb / 1024, nil
		}
	}
	return 0, fmt.Errorf("no VmHWM in /proc/%d/status", pid)
}

// shutdownToExit starts a plugin (no AutoMTLS), does one Get, dials the plugin's socket with our
// own gRPC connection (connected before the clock starts), then measures from calling
// /plugin.GRPCController/Shutdown to the kernel reporting the process gone (a pidfd becoming
// readable: the moment of exit, independent of when go-plugin reaps it). go-plugin's own
// connection, with its stdio and broker streams, stays open meanwhile, as in a host that
// calls Shutdown itself.
func shutdownToExit(im impl, dir string) (time.Duration, error) {
	c := newClient(im, dir, false)
	defer c.Kill()
	kv, err := kvOf(c)
	if err != nil {
		return 0, err
	}
	if _, err := kv.Get(benchKey); err != nil {
		return 0, err
	}
	rc := c.ReattachConfig()
	if rc == nil || rc.Pid == 0 || rc.Addr == nil {
		return 0, errors.New("no plugin pid or address")
	}
	exited, closeWatch, err := watchExit(rc.Pid)
	if err != nil {
		return 0, err
	}
	defer closeWatch()

	addr := rc.Addr
	conn, err := grpc.Dial("passthrough:///plugin",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, addr.Network(), addr.String())
		}),
		grpc.WithBlock())
	if err != nil {
		return 0, fmt.Errorf("dialing %s: %w", addr, err)
	}
	defer func() { _ = conn.Close() }()

	t0 := time.Now()
	go func() {
		// Go plugins tear the connection down before answering; any outcome is fine here.
		_ = conn.Invoke(context.Background(), "/plugin.GRPCController/Shutdown",
			&emptypb.Empty{}, &emptypb.Empty{})
	}()
	if err := exited(10 * time.Second); err != nil {
		return 0, err
	}
	return time.Since(t0), nil
}

// watchExit returns a function that blocks until pid has exited (or the timeout passes). It
// uses a pidfd (Linux 5.3+), which becomes readable at exit even though go-plugin, not we, is
// the parent that reaps the child; without pidfd it polls /proc/<pid>/stat for a zombie or a
// vanished process every 100 µs.
func watchExit(pid int) (func(time.Duration) error, func(), error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err == nil {
		wait := func(timeout time.Duration) error {
			deadline := time.Now().Add(timeout)
			for {
				left := time.Until(deadline)
				if left <= 0 {
					return fmt.Errorf("pid %d still running after %s", pid, timeout)
				}
				fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
				n, err := unix.Poll(fds, int(math.Ceil(float64(left)/float64(time.Millisecond))))
				if errors.Is(err, unix.EINTR) {
					continue
				}
				if err != nil {
					return fmt.Errorf("poll on pidfd: %w", err)
				}
				if n > 0 {
					return nil
				}
			}
		}
		return wait, func() { _ = unix.Close(fd) }, nil
	}
	if !errors.Is(err, unix.ENOSYS) {
		return nil, nil, fmt.Errorf("pidfd_open(%d): %w", pid, err)
	}
	wait := func(timeout time.Duration) error {
		deadline := time.Now().Add(timeout)
		for time.Now().Before(deadline) {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
			if err != nil {
				return nil // reaped
			}
			if i := strings.LastIndexByte(string(b), ')'); i > 0 && i+2 < len(b) && b[i+2] == 'Z' {
				return nil
			}
			time.Sleep(100 * time.Microsecond)
		}
		return fmt.Errorf("pid %d still running after %s", pid, timeout)
	}
	return wait, func() {}, nil
}

// --- statistics -------------------------------------------------------------------------------

func sorted(v []float64) []float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s
}

// percentile by linear interpolation between closest ranks.
func percentile(v []float64, p float64) float64 {
	s := sorted(v)
	if len(s) == 0 {
		return math.NaN()
	}
	pos := p * float64(len(s)-1)
	lo := int(math.Floor(pos))
	hi := int(math.Ceil(pos))
	return s[lo] + (s[hi]-s[lo])*(pos-float64(lo))
}

type summary struct {
	n                      int
	median, q1, q3, lo, hi float64
}

func summarize(v []float64) summary {
	s := sorted(v)
	return summary{
		n:      len(s),
		median: percentile(s, 0.5),
		q1:     percentile(s, 0.25),
		q3:     percentile(s, 0.75),
		lo:     s[0],
		hi:     s[len(s)-1],
	}
}

// --- report -----------------------------------------------------------------------------------

type row struct {
	key, label, unit string
	// limit, if > 0, is an absolute target (same unit) for each implementation's median.
	limit float64
	iqr   bool // show the IQR (enough samples); otherwise min–max only
}

func render(o options, impls []impl, res results, took time.Duration) string {
	rows := []row{
		{"spawn_plain", "Spawn → first RPC (NewClient → first Get returns)", "ms", 0, true},
		{"spawn_mtls", "Spawn → first RPC, AutoMTLS", "ms", 0, true},
		{"p50_plain", "Unary Get p50, unix socket", "µs", 0, false},
		{"p99_plain", "Unary Get p99, unix socket", "µs", 0, false},
		{"p50_mtls", "Unary Get p50, unix socket + AutoMTLS", "µs", 0, false},
		{"p99_mtls", "Unary Get p99, unix socket + AutoMTLS", "µs", 0, false},
		{"rss_plain", "Peak RSS of the plugin (VmHWM) after the latency run", "MiB", 0, false},
		{"rss_mtls", "Peak RSS of the plugin (VmHWM) after the latency run, AutoMTLS", "MiB", 0, false},
		{"shutdown", "Controller.Shutdown → process exit", "ms", 100, true},
		{"kill_plain", "client.Kill() → returns (go-plugin's kill sequence)", "ms", 0, true},
	}
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }

	w("## The same KV plugin in Go and in Rust under go-plugin v1.8.0's host\n\n")
	w("Each cell: **median**, then the spread: IQR (25th–75th percentile) and min–max over the runs, or min–max over the rounds. Ratio = Rust median / Go median.\n\n")
	w("| Metric | Go | Rust | Rust/Go | Target | Met |\n")
	w("|---|---|---|---|---|---|\n")
	for _, r := range rows {
		g, rs := summarize(res[r.key]["go"]), summarize(res[r.key]["rust"])
		ratio := rs.median / g.median
		target := "ratio ≤ 1.0"
		met := ratio <= 1.0
		if r.limit > 0 {
			target += fmt.Sprintf("; Rust < %g %s", r.limit, r.unit)
			met = met && rs.median < r.limit
		}
		if r.key == "kill_plain" {
			target = "(context)"
		}
		verdict := "yes"
		if r.key == "kill_plain" {
			verdict = "–"
		} else if !met {
			verdict = "**no**"
			if overlaps(g, rs, r.iqr) {
				verdict = "**no** (within spread)"
			}
		}
		w("| %s | %s | %s | %.2f | %s | %s |\n", r.label, cell(g, r), cell(rs, r), ratio, target, verdict)
	}
	w("\n")
	w("Samples: %d runs per implementation for spawn, Shutdown and Kill; %d rounds × %d timed Get calls (after %d warm-up calls, a fresh plugin process per round) for latency and RSS. Benchmark took %s.\n\n",
		o.runs, o.rounds, o.calls, o.warmup, took.Round(time.Second))

	w("### Machine\n\n")
	w("| | |\n|---|---|\n")
	w("| CPUs (nproc) | %d |\n", runtime.NumCPU())
	w("| CPU | %s |\n", cpuModel())
	w("| Kernel | %s |\n", kernel())
	w("| Go (driver and Go plugin) | %s |\n", runtime.Version())
	w("| rustc | %s |\n", rustcVersion())
	w("| go-plugin | %s |\n", goPluginVersion())
	for _, im := range impls {
		if st, err := os.Stat(im.path); err == nil {
			w("| %s plugin binary | `%s`, %.1f MiB |\n", im.name, im.path, float64(st.Size())/(1<<20))
		}
	}
	w("\nReproduce: `%s`\n", o.repro)
	return b.String()
}

func overlaps(a, b summary, iqr bool) bool {
	if iqr {
		return a.q1 <= b.q3 && b.q1 <= a.q3
	}
	return a.lo <= b.hi && b.lo <= a.hi
}

func cell(s summary, r row) string {
	f := func(v float64) string {
		switch {
		case v >= 100:
			return fmt.Sprintf("%.0f", v)
		case v >= 10:
			return fmt.Sprintf("%.1f", v)
		default:
			return fmt.Sprintf("%.2f", v)
		}
	}
	if r.iqr {
		return fmt.Sprintf("**%s %s** (IQR %s–%s; %s–%s)", f(s.median), r.unit, f(s.q1), f(s.q3), f(s.lo), f(s.hi))
	}
	return fmt.Sprintf("**%s %s** (%s–%s)", f(s.median), r.unit, f(s.lo), f(s.hi))
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "model name") {
			if i := strings.IndexByte(line, ':'); i >= 0 {
				return strings.TrimSpace(line[i+1:])
			}
		}
	}
	return "unknown"
}

func kernel() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(u.Sysname[:]) + " " + unix.ByteSliceToString(u.Release[:]) + " " + unix.ByteSliceToString(u.Machine[:])
}

func rustcVersion() string {
	out, err := exec.Command("rustc", "--version").Output()
	if err != nil {
		return "unknown (rustc not on PATH)"
	}
	return strings.TrimSpace(string(out))
}

func goPluginVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == "github.com/hashicorp/go-plugin" {
				return d.Path + " " + d.Version
			}
		}
	}
	return "unknown"
}

// --- single-plugin JSON mode ------------------------------------------------------------------

// jsonMode measures one plugin and prints one JSON object whose values are lists of samples:
// spawn_to_first_rpc_us (NewClient to the first Put returning), rpc_p50_us/rpc_p99_us and
// mtls_p50_us/mtls_p99_us (per round: one process, 200 warm-up Gets, -calls timed Gets),
// peak_rss_kb (VmHWM after each latency round), idle_rss_kb and threads (VmRSS and Threads 300 ms
// after the first call), shutdown_to_exit_us (as shutdownToExit). Used by scripts that pool
// samples of several invocations themselves.
func jsonMode(path string, o options) error {
	dir, err := os.MkdirTemp("", "goplugin-bench-")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	if err := os.WriteFile(filepath.Join(dir, "kv_"+benchKey), benchValue, 0o644); err != nil {
		return err
	}
	im := impl{name: "plugin", path: path}
	out := map[string][]float64{}
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	for i := 0; i < o.runs; i++ {
		t0 := time.Now()
		c := newClient(im, dir, false)
		kv, err := kvOf(c)
		if err == nil {
			err = kv.Put(benchKey+"-put", []byte("v"))
		}
		d := time.Since(t0)
		if err == nil && i == 0 {
			time.Sleep(300 * time.Millisecond)
			if rc := c.ReattachConfig(); rc != nil {
				var rss, threads float64
				rss, threads, err = statusFields(rc.Pid)
				out["idle_rss_kb"] = append(out["idle_rss_kb"], rss)
				out["threads"] = append(out["threads"], threads)
			}
		}
		c.Kill()
		if err != nil {
			return fmt.Errorf("spawn run %d: %w", i+1, err)
		}
		out["spawn_to_first_rpc_us"] = append(out["spawn_to_first_rpc_us"], us(d))
	}
	for _, mtls := range []bool{false, true} {
		prefix := "rpc_"
		if mtls {
			prefix = "mtls_"
		}
		for r := 0; r < o.rounds; r++ {
			lat, hwm, err := latencyRound(im, dir, mtls, 200, o.calls)
			if err != nil {
				return fmt.Errorf("latency round %d: %w", r+1, err)
			}
			out[prefix+"p50_us"] = append(out[prefix+"p50_us"], percentile(lat, 0.50))
			out[prefix+"p99_us"] = append(out[prefix+"p99_us"], percentile(lat, 0.99))
			out["peak_rss_kb"] = append(out["peak_rss_kb"], hwm*1024)
		}
	}
	for i := 0; i < o.runs; i++ {
		d, err := shutdownToExit(im, dir)
		if err != nil {
			return fmt.Errorf("shutdown run %d: %w", i+1, err)
		}
		out["shutdown_to_exit_us"] = append(out["shutdown_to_exit_us"], us(d))
	}
	keys := make([]string, 0, len(out))
	for k := range out {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString("{")
	for i, k := range keys {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, "%q:[", k)
		for j, v := range out[k] {
			if j > 0 {
				b.WriteString(",")
			}
			b.WriteString(strconv.FormatFloat(v, 'f', 1, 64))
		}
		b.WriteString("]")
	}
	b.WriteString("}\n")
	fmt.Print(b.String())
	return nil
}

// statusFields reads VmRSS (kB) and Threads from /proc/<pid>/status.
func statusFields(pid int) (rssKB, threads float64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "VmRSS:":
			rssKB, _ = strconv.ParseFloat(f[1], 64)
		case "Threads:":
			threads, _ = strconv.ParseFloat(f[1], 64)
		}
	}
	return rssKB, threads, nil
}
