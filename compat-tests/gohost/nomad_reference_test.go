package gohost

// Differential tests against a real Nomad 1.7+/2.x binary (NOMAD_BIN, else `nomad` on PATH):
// `$NOMAD_BIN executor <json>` and `$NOMAD_BIN logmon` are Nomad's own Go helpers (go-plugin
// v1.8.0, as this module), and each test drives them and the Rust ones (`goplugin executor`,
// `goplugin logmon`) the way a Nomad 2.x client does (drivers/shared/executor/utils.go
// CreateExecutor and ReattachToExecutor, client/logmon/plugin.go LaunchLogMon, raw_exec's
// StartTask / RecoverTask / StopTask, the logmon hook), then compares. Nomad 1.6 is compared
// by the nomad16 module (go-plugin v1.4.10). Spec: nomad-versions.md §1, §3, §4.2-§4.3, §6, §9.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
)

const refNoNomadLine = "skipping: no Nomad binary (set NOMAD_BIN=/path/to/nomad)"

var refNomadOnce struct {
	sync.Once
	bin, version, skip string
	err                error
}

var refVersionLine = regexp.MustCompile(`Nomad v(\d+)\.(\d+)\.(\d+)\S*`)

// refNomad finds the reference binary and decides whether it is one this file compares against
// (1.7 and later: go-plugin v1.8.0, reattach + Version, logmon reattach + Ping).
func refNomad() (bin, version, skip string, err error) {
	o := &refNomadOnce
	o.Do(func() {
		b := os.Getenv("NOMAD_BIN")
		if b == "" {
			p, lerr := exec.LookPath("nomad")
			if lerr != nil {
				o.skip = refNoNomadLine
				return
			}
			b = p
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, verr := exec.CommandContext(ctx, b, "version").Output()
		if verr != nil {
			o.err = fmt.Errorf("NOMAD_BIN=%s: `version` failed: %v", b, verr)
			return
		}
		v := refVersionLine.FindSubmatch(out)
		if v == nil {
			o.err = fmt.Errorf("NOMAD_BIN=%s: `version` printed no Nomad version: %q", b, out)
			return
		}
		major, _ := strconv.Atoi(string(v[1]))
		minor, _ := strconv.Atoi(string(v[2]))
		o.bin, o.version = b, fmt.Sprintf("%s.%s.%s", v[1], v[2], v[3])
		if major < 1 || (major == 1 && minor < 7) {
			o.skip = fmt.Sprintf("skipping: %s is Nomad v%s; these reference tests need Nomad 1.7+ "+
				"(go-plugin v1.8.0); Nomad 1.6 is compared by compat-tests/nomad16", b, o.version)
		}
	})
	return o.bin, o.version, o.skip, o.err
}

// TestNomadReference2x: Nomad 2.x's way of driving the helpers, against `$NOMAD_BIN` and the
// Rust binary (subtests nomad, rust). The whole test skips, in one line, without a 1.7+ binary.
func TestNomadReference2x(t *testing.T) {
	bin, version, skip, err := refNomad()
	if err != nil {
		t.Fatal(err)
	}
	if skip != "" {
		t.Skip(skip)
	}
	t.Logf("reference: %s (Nomad v%s)", bin, version)
	t.Run("ExecutorLaunchCgroupsV1", refExecutorLaunchCgroups)
	t.Run("ExecutorReattachVersion", refExecutorReattachVersion)
	t.Run("LogmonReattachPing", refLogmonReattachPing)
}

type refHelper struct{ name, bin string }

// refEach runs fn for the Nomad reference, then for the Rust binary, one after the other (they
// share the agent's cgroup parents).
func refEach(t *testing.T, fn func(t *testing.T, h refHelper)) {
	bin, _, _, _ := refNomad()
	t.Run("nomad", func(t *testing.T) { fn(t, refHelper{"nomad", bin}) })
	t.Run("rust", func(t *testing.T) { fn(t, refHelper{"rust", gopluginBinary(t)}) })
}

// refMsg builds a protobuf message (proto3: zero values are not sent).
type refMsg []byte

func (m *refMsg) str(n protowire.Number, ss ...string) {
	for _, s := range ss {
		if s != "" {
			*m = protowire.AppendTag(*m, n, protowire.BytesType)
			*m = protowire.AppendString(*m, s)
		}
	}
}

func (m *refMsg) varint(n protowire.Number, v int64) {
	if v != 0 {
		*m = protowire.AppendTag(*m, n, protowire.VarintType)
		*m = protowire.AppendVarint(*m, uint64(v))
	}
}

func (m *refMsg) double(n protowire.Number, f float64) {
	if f != 0 {
		*m = protowire.AppendTag(*m, n, protowire.Fixed64Type)
		*m = protowire.AppendFixed64(*m, math.Float64bits(f))
	}
}

func (m *refMsg) sub(n protowire.Number, b refMsg) {
	*m = protowire.AppendTag(*m, n, protowire.BytesType)
	*m = protowire.AppendBytes(*m, b)
}

// refAlloc is an alloc dir as the helpers see it: <dir>/<allocID>/{alloc/logs,<task>/local}.
type refAlloc struct {
	allocID, task, allocDir, taskDir, workDir, logDir, stdout, stderr string
}

func newRefAlloc(t *testing.T, task string) refAlloc {
	t.Helper()
	b := make([]byte, 16)
	f, err := os.Open("/dev/urandom")
	if err != nil {
		t.Fatal(err)
	}
	_, _ = f.Read(b)
	_ = f.Close()
	id := fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
	a := refAlloc{allocID: id, task: task, allocDir: filepath.Join(t.TempDir(), id)}
	a.taskDir = filepath.Join(a.allocDir, task)
	a.workDir = filepath.Join(a.taskDir, "local")
	a.logDir = filepath.Join(a.allocDir, "alloc", "logs")
	a.stdout, a.stderr = filepath.Join(a.taskDir, "stdout"), filepath.Join(a.taskDir, "stderr")
	for _, d := range []string{a.logDir, a.workDir, filepath.Join(a.taskDir, "secrets"), filepath.Join(a.taskDir, "tmp")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{a.stdout, a.stderr} {
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return a
}

func (a refAlloc) env() []string {
	env := []string{
		"NOMAD_ALLOC_DIR=" + filepath.Join(a.allocDir, "alloc"),
		"NOMAD_ALLOC_ID=" + a.allocID,
		"NOMAD_PARENT_CGROUP=nomad.slice",
		"NOMAD_TASK_DIR=" + a.workDir,
		"NOMAD_TASK_NAME=" + a.task,
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
	}
	sort.Strings(env)
	return env
}

// normalize replaces the per-run names in s.
func (a refAlloc) normalize(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, a.taskDir, "<task_dir>"), a.allocID, "<alloc>")
}

// refProc names a process by pid and start time, so a recycled pid is never signalled.
type refProc struct {
	pid   int
	start string
}

func refProcStat(pid int) (state, start string, ok bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", "", false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return "", "", false
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return "", "", false
	}
	return f[0], f[19], true
}

func refProcOf(t *testing.T, pid int) refProc {
	t.Helper()
	_, start, ok := refProcStat(pid)
	if !ok {
		t.Fatalf("pid %d: no such process", pid)
	}
	return refProc{pid, start}
}

func (p refProc) alive() bool {
	state, start, ok := refProcStat(p.pid)
	return ok && p.start != "" && start == p.start && state != "Z"
}

func (p refProc) killGroup() {
	if p.pid > 0 && p.alive() {
		_ = syscall.Kill(-p.pid, syscall.SIGKILL)
		_ = syscall.Kill(p.pid, syscall.SIGKILL)
	}
}

const refCgroupRoot = "/sys/fs/cgroup"

// refCgroups creates the cgroups a Nomad 2.x client creates on cgroup v1 before a task starts
// (client/lib/cgroupslib Init: /nomad in freezer, memory, cpu, cpuset with cpuset.cpus/mems and
// clone_children=0, partition `share`; the wrangler hook's Setup: {freezer,cpu,memory}/nomad/
// <allocID>.<task>), and removes them, and any cgroup the helper made for the task, afterwards.
type refCgroups struct {
	t       *testing.T
	task    string // <allocID>.<task>
	share   string // the cpuset partition directory
	created []string
	mu      sync.Mutex
	extra   map[string]bool
	// parents: the helper's own cgroup parents (/sys/fs/cgroup/*/goplugin) that existed before
	parents map[string]bool
}

func setupRefCgroups(t *testing.T, a refAlloc) *refCgroups {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: creating the agent's cgroups needs root")
	}
	if _, err := os.Stat(filepath.Join(refCgroupRoot, "freezer")); err != nil {
		t.Skip("skipping: no cgroup v1 freezer hierarchy at /sys/fs/cgroup/freezer")
	}
	c := &refCgroups{t: t, task: a.allocID + "." + a.task, extra: map[string]bool{}, parents: map[string]bool{}}
	existing, _ := filepath.Glob(filepath.Join(refCgroupRoot, "*", "goplugin"))
	for _, p := range existing {
		c.parents[p] = true
	}
	c.share = filepath.Join(refCgroupRoot, "cpuset", "nomad", "share")
	t.Cleanup(c.teardown)
	for _, ctrl := range []string{"freezer", "memory", "cpu", "cpuset"} {
		c.mkdir(filepath.Join(refCgroupRoot, ctrl, "nomad"))
	}
	cpuset := filepath.Join(refCgroupRoot, "cpuset")
	c.inherit(cpuset, filepath.Join(cpuset, "nomad"))
	c.mkdir(c.share)
	c.inherit(filepath.Join(cpuset, "nomad"), c.share)
	for _, ctrl := range []string{"freezer", "cpu", "memory"} {
		c.mkdir(c.taskDir(ctrl))
	}
	return c
}

func (c *refCgroups) taskDir(ctrl string) string {
	return filepath.Join(refCgroupRoot, ctrl, "nomad", c.task)
}

func (c *refCgroups) mkdir(d string) {
	c.t.Helper()
	err := os.Mkdir(d, 0o755)
	switch {
	case err == nil:
		c.created = append(c.created, d)
	case errors.Is(err, os.ErrExist):
	default:
		c.t.Fatalf("mkdir %s: %v", d, err)
	}
}

// inherit copies cpuset.cpus and cpuset.mems from parent into child (when child's are empty)
// and disables clone_children below child, as Nomad's Init does.
func (c *refCgroups) inherit(parent, child string) {
	c.t.Helper()
	for _, f := range []string{"cpuset.mems", "cpuset.cpus"} {
		cur, _ := os.ReadFile(filepath.Join(child, f))
		if strings.TrimSpace(string(cur)) != "" {
			continue
		}
		v, err := os.ReadFile(filepath.Join(parent, f))
		if err != nil {
			c.t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(child, f), v, 0o644); err != nil {
			c.t.Fatalf("write %s/%s: %v", child, f, err)
		}
	}
	_ = os.WriteFile(filepath.Join(child, "cgroup.clone_children"), []byte("0"), 0o644)
}

// track records the cgroups of pid outside the agent's tree and the test's own: the helper made
// them (to be removed at the end).
func (c *refCgroups) track(pid int) {
	self, _ := refProcCgroups(os.Getpid())
	theirs, _ := refProcCgroups(pid)
	c.mu.Lock()
	defer c.mu.Unlock()
	for h, p := range theirs {
		if p == "/" || self[h] == p || strings.HasPrefix(p, "/nomad") {
			continue
		}
		dir := filepath.Join(refCgroupRoot, h, p)
		if strings.HasPrefix(h, "name=") {
			dir = filepath.Join(refCgroupRoot, strings.TrimPrefix(h, "name="), p)
		}
		c.extra[dir] = true
	}
}

// teardown is the client's Kill (freeze, SIGKILL what is left, thaw) and Teardown, for the
// task's directories only; then the share partition and /nomad when this test created them.
func (c *refCgroups) teardown() {
	var dirs []string
	for _, ctrl := range []string{"freezer", "cpu", "memory"} {
		dirs = append(dirs, c.taskDir(ctrl))
	}
	c.mu.Lock()
	for d := range c.extra {
		dirs = append(dirs, d)
	}
	c.mu.Unlock()
	sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
	for _, d := range dirs {
		refRemoveCgroup(c.t, d)
	}
	// The agent-level directories this test created, and new helper parents: only when empty
	// (another test may be using them meanwhile).
	parents, _ := filepath.Glob(filepath.Join(refCgroupRoot, "*", "goplugin"))
	for _, p := range parents {
		if !c.parents[p] {
			_ = syscall.Rmdir(p)
		}
	}
	for i := len(c.created) - 1; i >= 0; i-- {
		if err := syscall.Rmdir(c.created[i]); err != nil && !errors.Is(err, syscall.ENOENT) {
			c.t.Logf("cleanup: left %s: %v", c.created[i], err)
		}
	}
}

// refRemoveCgroup removes one task cgroup directory, SIGKILLing the processes still in it.
func refRemoveCgroup(t *testing.T, d string) {
	if _, err := os.Stat(d); err != nil {
		return
	}
	_ = os.WriteFile(filepath.Join(d, "freezer.state"), []byte("THAWED"), 0o644)
	ok := waitFor(10*time.Second, func() bool {
		for _, p := range refCgroupPids(d) {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
		err := syscall.Rmdir(d)
		return err == nil || errors.Is(err, syscall.ENOENT)
	})
	if !ok {
		t.Errorf("cleanup: cannot remove cgroup %s (pids %v)", d, refCgroupPids(d))
	}
}

func refCgroupPids(dir string) []int {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return nil
	}
	var out []int
	for _, f := range strings.Fields(string(b)) {
		if n, err := strconv.Atoi(f); err == nil {
			out = append(out, n)
		}
	}
	return out
}

// refProcCgroups maps each hierarchy's controller list (as in /proc/<pid>/cgroup) to the path.
func refProcCgroups(pid int) (map[string]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if f := strings.SplitN(line, ":", 3); len(f) == 3 {
			out[f[1]] = f[2]
		}
	}
	return out, nil
}

// refCgroupOf is pid's cgroup path in the hierarchy that holds controller.
func refCgroupOf(all map[string]string, controller string) string {
	for h, p := range all {
		for _, c := range strings.Split(h, ",") {
			if c == controller {
				return p
			}
		}
	}
	return ""
}

// refExecutor is one executor helper under a v1.8.0 host.
type refExecutor struct {
	c    *plugin.Client
	cmd  *exec.Cmd
	conn *grpc.ClientConn
	rc   *plugin.ReattachConfig
	proc refProc
}

// refCreateExecutor is Nomad 2.x's CreateExecutor as raw_exec calls it: argv JSON with Compute
// ({"tc","nc"}), setsid, ports client_min_port/client_max_port (defaults 14000/14512), gRPC only,
// logger named "executor".
func refCreateExecutor(t *testing.T, h refHelper, a refAlloc) *refExecutor {
	t.Helper()
	cfg, err := json.Marshal(struct {
		LogFile     string
		LogLevel    string
		FSIsolation bool
		Compute     struct {
			TotalCompute uint64 `json:"tc"`
			NumCores     int    `json:"nc"`
		}
	}{
		LogFile: filepath.Join(a.taskDir, "executor.out"), LogLevel: "debug",
		Compute: struct {
			TotalCompute uint64 `json:"tc"`
			NumCores     int    `json:"nc"`
		}{uint64(runtime.NumCPU()) * 2000, runtime.NumCPU()},
	})
	if err != nil {
		t.Fatal(err)
	}
	logger, _ := newHostLogger(t, hclog.Trace)
	cmd := exec.Command(h.bin, "executor", string(cfg))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	c := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  nomadHandshake,
		Plugins:          map[string]plugin.Plugin{"executor": executorPlugin{}},
		Cmd:              cmd,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:           logger.Named("executor"),
		MinPort:          14000,
		MaxPort:          14512,
	})
	e := &refExecutor{c: c, cmd: cmd}
	t.Cleanup(func() { refRemoveStaleSocket(e.rc, e.proc) })
	t.Cleanup(c.Kill)
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(a.taskDir, "executor.out"))
			lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
			if len(lines) > 60 {
				lines = lines[len(lines)-60:]
			}
			t.Logf("executor.out (last lines):\n%s", strings.Join(lines, "\n"))
		}
	})
	e.conn = refDispense(t, c, "executor")
	e.rc = c.ReattachConfig()
	e.proc = refProcOf(t, e.rc.Pid)
	return e
}

func refRemoveStaleSocket(rc *plugin.ReattachConfig, p refProc) {
	if rc != nil && !p.alive() {
		_ = os.Remove(rc.Addr.String())
	}
}

func refDispense(t *testing.T, c *plugin.Client, name string) *grpc.ClientConn {
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

// refDrop is the agent going away: the connection closes, no Shutdown is sent.
func refDrop(t *testing.T, c *plugin.Client) {
	t.Helper()
	rpc, err := c.Client()
	if err != nil {
		t.Fatalf("Client(): %v", err)
	}
	_ = rpc.(*plugin.GRPCClient).Conn.Close()
}

// refPersist / refRestore: pstructs.ReattachConfig through JSON, as the agent stores it.
func refPersist(t *testing.T, rc *plugin.ReattachConfig) []byte {
	t.Helper()
	b, err := json.Marshal(struct {
		Protocol, Network, Addr string
		Pid                     int
	}{string(rc.Protocol), rc.Addr.Network(), rc.Addr.String(), rc.Pid})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func refRestore(t *testing.T, b []byte) *plugin.ReattachConfig {
	t.Helper()
	var p struct {
		Protocol, Network, Addr string
		Pid                     int
	}
	if err := json.Unmarshal(b, &p); err != nil {
		t.Fatal(err)
	}
	addr, err := net.ResolveUnixAddr(p.Network, p.Addr)
	if err != nil {
		t.Fatalf("stored reattach config %s: %v", b, err)
	}
	return &plugin.ReattachConfig{Protocol: plugin.Protocol(p.Protocol), Addr: addr, Pid: p.Pid}
}

// refReattachExecutor is Nomad 2.x's ReattachToExecutor: dial, Dispense, then Version; any
// error fails the reattach (nomad#24538). It returns the client, Version's answer, and the error.
func refReattachExecutor(t *testing.T, rc *plugin.ReattachConfig) (*plugin.Client, *grpc.ClientConn, error) {
	t.Helper()
	logger, _ := newHostLogger(t, hclog.Trace)
	c := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  nomadHandshake,
		Reattach:         rc,
		Plugins:          map[string]plugin.Plugin{"executor": executorPlugin{}},
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:           logger.Named("executor"),
	})
	rpc, err := c.Client()
	if err != nil {
		return nil, nil, fmt.Errorf("error creating rpc client for executor plugin: %w", err)
	}
	raw, err := rpc.Dispense("executor")
	if err != nil {
		return nil, nil, err
	}
	conn := raw.(*grpc.ClientConn)
	resp, err := executorCall(conn, "Version", nil)
	if err != nil {
		return nil, nil, err
	}
	if v := string(bytesField(fields(t, resp), 1)); v != "2.0.0" {
		return nil, nil, fmt.Errorf("Version = %q, want 2.0.0", v)
	}
	t.Cleanup(c.Kill)
	return c, conn, nil
}

// refLaunch2x is Launch of a Nomad 2.x raw_exec task (StartTask): resources with
// linux_resources.cpuset_cgroup = the share partition (cgroupslib.LinuxResourcesPath), task_dir
// <alloc dir>/<task>, oom_score_adj (22) and work_dir (23) from the task config; no field 10.
func refLaunch2x(t *testing.T, conn *grpc.ClientConn, a refAlloc, oomScoreAdj int64, cmd string, args ...string) (refProc, int32) {
	t.Helper()
	const memMB, shares = 64, 500
	var cpu, mem, alloc, linux, res refMsg
	cpu.varint(1, shares)
	mem.varint(2, memMB)
	alloc.sub(1, cpu)
	alloc.sub(2, mem)
	linux.varint(3, shares)
	linux.varint(4, memMB<<20)
	linux.double(8, float64(shares)/float64(runtime.NumCPU()*2000))
	linux.str(9, filepath.Join(refCgroupRoot, "cpuset", "nomad", "share"))
	res.sub(1, alloc)
	res.sub(2, linux)
	var m refMsg
	m.str(1, cmd)
	m.str(2, args...)
	m.sub(3, res)
	m.str(4, a.stdout)
	m.str(5, a.stderr)
	m.str(6, a.env()...)
	m.str(8, a.taskDir)
	m.varint(22, oomScoreAdj)
	m.str(23, a.workDir)
	resp, err := executorCall(conn, "Launch", m)
	if err != nil {
		t.Fatalf("Launch: %v", err)
	}
	ps := fields(t, bytesField(fields(t, resp), 1))
	pid := varintField(t, ps, 1)
	if pid <= 0 {
		t.Fatalf("Launch pid = %d", pid)
	}
	_, start, _ := refProcStat(int(pid)) // a short task may be gone already: then never matches
	task := refProc{int(pid), start}
	t.Cleanup(task.killGroup)
	return task, int32(varintField(t, ps, 2))
}

type refExit struct {
	pid, exitCode, signal int32
	oomKilled             bool
}

func refWaitResult(t *testing.T, resp []byte) refExit {
	t.Helper()
	ps := fields(t, bytesField(fields(t, resp), 1))
	return refExit{int32(varintField(t, ps, 1)), int32(varintField(t, ps, 2)), int32(varintField(t, ps, 3)),
		varintField(t, ps, 5) != 0}
}

func refShutdown(t *testing.T, conn *grpc.ClientConn, signal string, grace time.Duration) {
	t.Helper()
	var m refMsg
	m.str(1, signal)
	m.varint(2, grace.Nanoseconds())
	if _, err := executorCall(conn, "Shutdown", m); err != nil {
		t.Fatalf("Shutdown(%q, %v): %v", signal, grace, err)
	}
}

// refKill is pluginClient.Kill() of a client that launched the helper: the helper must exit on
// GRPCController.Shutdown with status 0 within go-plugin's 2 s window.
func refKill(t *testing.T, c *plugin.Client, cmd *exec.Cmd, rc *plugin.ReattachConfig) {
	t.Helper()
	start := time.Now()
	c.Kill()
	if d := time.Since(start); d >= gracefulExit {
		t.Errorf("Kill took %v: the helper did not exit on GRPCController.Shutdown", d)
	}
	if ps := cmd.ProcessState; ps == nil || ps.ExitCode() != 0 {
		t.Errorf("helper exit status after Kill: %v, want 0", ps)
	}
	refSocketRemoved(t, rc)
}

// refSocketRemoved: a helper that exited on Shutdown has removed its socket (go-plugin's Go
// server unlinks it when the gRPC server stops).
func refSocketRemoved(t *testing.T, rc *plugin.ReattachConfig) {
	t.Helper()
	if _, err := os.Lstat(rc.Addr.String()); err == nil {
		t.Errorf("socket %s still there after the helper exited on Shutdown", rc.Addr.String())
	}
}

// refExecutorLaunchCgroups: a Nomad 2.x raw_exec Launch on cgroup v1 with the agent's cgroups
// in place. The task prints its cwd (work_dir) and oom_score_adj, then sleeps; while it runs its
// /proc/<pid>/cgroup must show /nomad/<allocID>.<task> for freezer, cpu and memory and
// /nomad/share for cpuset, those task cgroups must hold the task alone (not the executor),
// memory.limit_in_bytes and cpu.shares must be the request's; Shutdown(SIGTERM) ends it with
// 143/15. Mirrors Nomad's TestUniversalExecutor_cg1_no_executor_pid,
// TestUniversalExecutor_setOomAdj (executor_universal_linux_test.go), TestExecutor_WorkDir and
// TestRawExecDriver_StartWait (black-box parts).
func refExecutorLaunchCgroups(t *testing.T) {
	type outcome struct {
		launchExit      int32
		exit            refExit
		stdout, stderr  string
		cgroups         string // freezer, cpu, memory, cpuset paths, normalized
		taskAloneInCg   bool
		memLimit, share string
	}
	const oomAdj = 300
	got := map[string]outcome{}
	refEach(t, func(t *testing.T, h refHelper) {
		a := newRefAlloc(t, "web")
		cg := setupRefCgroups(t, a)
		e := refCreateExecutor(t, h, a)
		task, launchExit := refLaunch2x(t, e.conn, a, oomAdj, "/bin/sh", "-c",
			"echo to stderr >&2; pwd; cat /proc/self/oom_score_adj; exec /bin/sleep 300")
		cg.track(task.pid)
		wantOut := a.workDir + "\n" + strconv.Itoa(oomAdj) + "\n"
		if !waitFor(10*time.Second, func() bool {
			b, _ := os.ReadFile(a.stdout)
			comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", task.pid))
			return string(b) == wantOut && string(comm) == "sleep\n"
		}) {
			b, _ := os.ReadFile(a.stdout)
			t.Errorf("%s: task stdout %q, want %q (and the task to exec sleep)", h.name, b, wantOut)
		}
		cgs, err := refProcCgroups(task.pid)
		if err != nil {
			t.Fatalf("task cgroups: %v", err)
		}
		o := outcome{launchExit: launchExit}
		var paths []string
		wantTask := "/nomad/" + a.allocID + "." + a.task
		for _, ctrl := range []string{"freezer", "cpu", "memory", "cpuset"} {
			p := refCgroupOf(cgs, ctrl)
			paths = append(paths, ctrl+":"+p)
			want := wantTask
			if ctrl == "cpuset" {
				want = "/nomad/share"
			}
			if p != want {
				t.Errorf("%s executor: task pid %d is in %s cgroup %q, want %q", h.name, task.pid, ctrl, p, want)
			}
		}
		o.cgroups = a.normalize(strings.Join(paths, " "))
		o.taskAloneInCg = true
		for _, ctrl := range []string{"freezer", "cpu", "memory"} {
			pids := refCgroupPids(cg.taskDir(ctrl))
			if len(pids) != 1 || pids[0] != task.pid {
				o.taskAloneInCg = false
				t.Errorf("%s executor: %s holds pids %v, want only the task %d (executor pid %d)",
					h.name, cg.taskDir(ctrl), pids, task.pid, e.proc.pid)
			}
		}
		lim, _ := os.ReadFile(filepath.Join(cg.taskDir("memory"), "memory.limit_in_bytes"))
		shares, _ := os.ReadFile(filepath.Join(cg.taskDir("cpu"), "cpu.shares"))
		o.memLimit, o.share = strings.TrimSpace(string(lim)), strings.TrimSpace(string(shares))
		if o.memLimit != strconv.Itoa(64<<20) || o.share != "500" {
			t.Errorf("%s executor: task cgroup memory.limit_in_bytes %q cpu.shares %q, want %d and 500",
				h.name, o.memLimit, o.share, 64<<20)
		}
		if adj, err := os.ReadFile(fmt.Sprintf("/proc/%d/oom_score_adj", e.proc.pid)); err == nil {
			t.Logf("%s executor's own oom_score_adj: %s", h.name, strings.TrimSpace(string(adj)))
		}

		refShutdown(t, e.conn, "SIGTERM", 5*time.Second)
		resp, err := executorCall(e.conn, "Wait", nil)
		if err != nil {
			t.Fatalf("Wait: %v", err)
		}
		o.exit = refWaitResult(t, resp)
		stdout, _ := os.ReadFile(a.stdout)
		stderr, _ := os.ReadFile(a.stderr)
		o.stdout, o.stderr = a.normalize(string(stdout)), string(stderr)
		want := refExit{pid: int32(task.pid), exitCode: 143, signal: 15}
		if o.launchExit != -1 || o.exit != want || o.stderr != "to stderr\n" {
			t.Errorf("%s executor: Launch exit %d, Wait %+v, stderr %q; want -1, %+v, %q",
				h.name, o.launchExit, o.exit, o.stderr, want, "to stderr\n")
		}
		refKill(t, e.c, e.cmd, e.rc)
		o.exit.pid = 0
		got[h.name] = o
	})
	if n, r := got["nomad"], got["rust"]; n != (outcome{}) && r != (outcome{}) && n != r {
		t.Errorf("outcomes differ:\nnomad %+v\nrust  %+v", n, r)
	}
}

// refExecutorReattachVersion: Nomad 2.x's RecoverTask path. The agent goes away (connection
// dropped), a new one reattaches from the stored driver state and calls Version (nomad#24538),
// then Waits; StopTask's Shutdown(SIGTERM) ends the task and Kill the helper. Two failing
// reattaches first show what v1.8.0 does where v1.4.10 SIGKILLs (nomad16
// TestReattachDialFailureKills16): a wrong address (dial fails) and the address of a go-plugin
// server that is no executor (a logmon: Version is Unimplemented) both fail the reattach and
// leave the executor alive. Mirrors Nomad's TestRawExecDriver_StartWaitRecoverWaitStop.
func refExecutorReattachVersion(t *testing.T) {
	refEach(t, func(t *testing.T, h refHelper) {
		a := newRefAlloc(t, "web")
		cg := setupRefCgroups(t, a)
		e := refCreateExecutor(t, h, a)
		task, _ := refLaunch2x(t, e.conn, a, 0, "/bin/sleep", "300")
		cg.track(task.pid)
		stored := refPersist(t, e.rc)
		refDrop(t, e.c)

		wrong := refRestore(t, stored)
		wrong.Addr = &net.UnixAddr{Net: "unix", Name: filepath.Join(t.TempDir(), "plugin-gone")}
		if _, _, err := refReattachExecutor(t, wrong); !errors.Is(err, plugin.ErrProcessNotFound) {
			t.Errorf("reattach to a wrong address: %v, want %v", err, plugin.ErrProcessNotFound)
		}
		l, _ := refLaunchLogmon(t, h)
		other := refRestore(t, stored)
		other.Addr = l.rc.Addr
		_, _, err := refReattachExecutor(t, other)
		if status.Code(err) != codes.Unimplemented {
			t.Errorf("reattach to a logmon's socket: %v, want Version to be Unimplemented", err)
		}
		if !e.proc.alive() || !task.alive() {
			t.Fatalf("after the failed reattaches: executor alive %v, task alive %v; v1.8.0 kills neither",
				e.proc.alive(), task.alive())
		}

		c, conn, err := refReattachExecutor(t, refRestore(t, stored))
		if err != nil {
			t.Fatalf("reattach: %v", err)
		}
		type waitResult struct {
			resp []byte
			err  error
		}
		waited := make(chan waitResult, 1)
		go func() {
			resp, err := executorCall(conn, "Wait", nil)
			waited <- waitResult{resp, err}
		}()
		refShutdown(t, conn, "SIGTERM", 5*time.Second)
		w := <-waited
		if w.err != nil {
			t.Fatalf("Wait after reattach: %v", w.err)
		}
		if ex := refWaitResult(t, w.resp); ex != (refExit{pid: int32(task.pid), exitCode: 143, signal: 15}) {
			t.Errorf("Wait after reattach: %+v, want pid %d exit 143 signal 15", ex, task.pid)
		}
		c.Kill()
		if !waitFor(5*time.Second, e.c.Exited) {
			t.Fatalf("executor pid %d still running after the reattached client's Kill", e.proc.pid)
		}
		if ps := e.cmd.ProcessState; ps.ExitCode() != 0 {
			t.Errorf("executor exit status %v, want 0 (graceful GRPCController.Shutdown)", ps)
		}
		refSocketRemoved(t, e.rc)
	})
}

type refLogmon struct {
	c    *plugin.Client
	cmd  *exec.Cmd
	conn *grpc.ClientConn
	rc   *plugin.ReattachConfig
	proc refProc
}

// refLaunchLogmon is LaunchLogMon(logger, nil): [bin, "logmon"], no setsid, no ports.
func refLaunchLogmon(t *testing.T, h refHelper) (*refLogmon, *syncBuffer) {
	t.Helper()
	logger, logs := newHostLogger(t, hclog.Trace)
	cmd := exec.Command(h.bin, "logmon")
	c := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  nomadHandshake,
		Plugins:          map[string]plugin.Plugin{"logmon": logmonPlugin{}},
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:           logger.Named("logmon"),
		Cmd:              cmd,
	})
	l := &refLogmon{c: c, cmd: cmd}
	t.Cleanup(func() { refRemoveStaleSocket(l.rc, l.proc) })
	t.Cleanup(c.Kill)
	l.conn = refDispense(t, c, "logmon")
	l.rc = c.ReattachConfig()
	l.proc = refProcOf(t, l.rc.Pid)
	return l, logs
}

// refReattachLogmon is LaunchLogMon(logger, cfg) of 2.x: dial, Dispense, Ping (nomad#24798).
func refReattachLogmon(t *testing.T, rc *plugin.ReattachConfig) (*plugin.Client, *grpc.ClientConn, error) {
	t.Helper()
	logger, _ := newHostLogger(t, hclog.Trace)
	c := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  nomadHandshake,
		Plugins:          map[string]plugin.Plugin{"logmon": logmonPlugin{}},
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:           logger.Named("logmon"),
		Reattach:         rc,
	})
	t.Cleanup(c.Kill)
	rpc, err := c.Client()
	if err != nil {
		return nil, nil, err
	}
	raw, err := rpc.Dispense("logmon")
	if err != nil {
		return nil, nil, err
	}
	if err := rpc.Ping(); err != nil {
		return nil, nil, fmt.Errorf("ping: %w", err)
	}
	return c, raw.(*grpc.ClientConn), nil
}

// refLogmonReattachPing: the logmon hook across an agent restart under Nomad 2.x: Start, a line
// through the stdout FIFO, the agent goes away, a new one reattaches from the hook state
// {"reattach_config": <json>} with Ping (health service "plugin", nomad#24798), Starts again
// (a no-op while running), the next line is appended to the same file; Stop twice; Kill.
// Mirrors TestTaskRunner_LogmonHook_StartStop / the hook's reattach and TestLogmon_Start_restart.
func refLogmonReattachPing(t *testing.T) {
	got := map[string]string{}
	refEach(t, func(t *testing.T, h refHelper) {
		a := newRefAlloc(t, "web")
		l, _ := refLaunchLogmon(t, h)
		req := startRequest{
			logDir: a.logDir, stdoutName: "web.stdout", stderrName: "web.stderr",
			maxFiles: 3, maxFileSizeMB: 1,
			stdoutFifo: filepath.Join(a.logDir, ".web.stdout.fifo"),
			stderrFifo: filepath.Join(a.logDir, ".web.stderr.fifo"),
		}
		if err := logmonCall(l.conn, "Start", req.encode()); err != nil {
			t.Fatalf("Start: %v", err)
		}
		w := refOpenFifo(t, req.stdoutFifo)
		werr := refOpenFifo(t, req.stderrFifo) // the executor opens both
		out := filepath.Join(a.logDir, "web.stdout.0")
		refWrite(t, w, "hello from the task\n")
		waitFile(t, out, "hello from the task\n")

		hook, _ := json.Marshal(map[string]string{"reattach_config": string(refPersist(t, l.rc))})
		refDrop(t, l.c)
		refWrite(t, w, "while the agent was away\n")
		var state map[string]string
		if err := json.Unmarshal(hook, &state); err != nil {
			t.Fatal(err)
		}
		c, conn, err := refReattachLogmon(t, refRestore(t, []byte(state["reattach_config"])))
		if err != nil {
			t.Fatalf("reattach: %v", err)
		}
		if err := logmonCall(conn, "Start", req.encode()); err != nil {
			t.Fatalf("Start after reattach: %v", err)
		}
		refWrite(t, w, "after the agent restarted\n")
		want := "hello from the task\nwhile the agent was away\nafter the agent restarted\n"
		waitFile(t, out, want)
		// The task exits (its FIFO ends close) before the hook's Stop.
		_ = w.Close()
		_ = werr.Close()
		for i := 0; i < 2; i++ {
			if err := logmonCall(conn, "Stop", nil); err != nil {
				t.Fatalf("Stop %d: %v", i+1, err)
			}
		}
		c.Kill()
		if !waitFor(5*time.Second, l.c.Exited) {
			t.Fatalf("logmon pid %d still running after the reattached client's Kill", l.proc.pid)
		}
		if ps := l.cmd.ProcessState; ps.ExitCode() != 0 {
			t.Errorf("logmon exit status %v, want 0", ps)
		}
		refSocketRemoved(t, l.rc)
		var names []string
		entries, _ := os.ReadDir(a.logDir)
		for _, e := range entries {
			names = append(names, e.Name())
		}
		got[h.name] = strings.Join(names, " ")
		t.Logf("%s: log dir after Stop and Kill: %s", h.name, got[h.name])
	})
	if n, r := got["nomad"], got["rust"]; n != "" && r != "" && n != r {
		t.Errorf("log dir after Stop and Kill: nomad [%s], rust [%s]", n, r)
	}
}

// refOpenFifo opens a FIFO for writing once logmon's reader is there (a non-blocking open fails
// with ENXIO until then); the file stays non-blocking so writes honour deadlines.
func refOpenFifo(t *testing.T, path string) *os.File {
	t.Helper()
	var fd int
	var err error
	if !waitFor(10*time.Second, func() bool {
		fd, err = syscall.Open(path, syscall.O_WRONLY|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
		return err == nil || !(errors.Is(err, syscall.ENXIO) || errors.Is(err, syscall.ENOENT))
	}) || err != nil {
		t.Fatalf("open %s for writing: %v", path, err)
	}
	f := os.NewFile(uintptr(fd), path)
	t.Cleanup(func() { _ = f.Close() })
	return f
}

func refWrite(t *testing.T, f *os.File, s string) {
	t.Helper()
	_ = f.SetWriteDeadline(time.Now().Add(30 * time.Second))
	if _, err := f.WriteString(s); err != nil {
		t.Fatalf("write %s: %v", f.Name(), err)
	}
}
