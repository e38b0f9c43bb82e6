package nomad16

// The executor under go-plugin v1.4.10 configured as Nomad 1.6.5's
// drivers/shared/executor/utils.go (CreateExecutor, ReattachToExecutor) and driven as 1.6.5's
// raw_exec driver drives it (drivers/rawexec/driver.go StartTask, RecoverTask, StopTask).

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
)

const executorService = "/hashicorp.nomad.plugins.executor.proto.Executor/"

// executorConfig16 is Nomad 1.6.5's ExecutorConfig (the argv JSON; field order as Go marshals it).
type executorConfig16 struct {
	LogFile       string
	LogLevel      string
	FSIsolation   bool
	CpuTotalTicks uint64
}

type executorSession struct {
	h     helper
	alloc allocLayout
	c     *plugin.Client
	cmd   *exec.Cmd
	conn  *grpc.ClientConn
	rc    *plugin.ReattachConfig
	proc  procRef // the executor process
	watch *socketWatch
}

// createExecutor is CreateExecutor(logger, d.nomadConfig, {LogFile: <task dir>/executor.out,
// LogLevel: debug}) of a 1.6.5 raw_exec driver: setsid, client_min_port/client_max_port
// defaults 14000/14512, CpuTotalTicks overwritten with the agent's fingerprint.
func createExecutor(t *testing.T, h helper, a allocLayout) *executorSession {
	t.Helper()
	cfg, err := json.Marshal(executorConfig16{
		LogFile:       filepath.Join(a.taskDir, "executor.out"),
		LogLevel:      "debug",
		FSIsolation:   false,
		CpuTotalTicks: cpuTotalTicks(runtime.NumCPU()),
	})
	if err != nil {
		t.Fatal(err)
	}
	logger, _ := agentLogger(t)
	cmd := exec.Command(h.bin, "executor", string(cfg))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	c := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  nomadHandshake,
		Plugins:          map[string]plugin.Plugin{"executor": connPlugin{}},
		Cmd:              cmd,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:           logger.Named("executor"),
		MinPort:          14000,
		MaxPort:          14512,
	})
	s := &executorSession{h: h, alloc: a, c: c, cmd: cmd}
	t.Cleanup(func() { s.removeStaleSocket(t) })
	t.Cleanup(c.Kill)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("executor.out (last lines):\n%s", tail(filepath.Join(a.taskDir, "executor.out"), 60))
		}
	})
	s.conn = dispense(t, c, "executor")
	s.rc = c.ReattachConfig()
	s.proc = refOf(t, s.rc.Pid)
	s.watch = watchSocket(t, s.rc.Addr.String(), s.proc)
	return s
}

// removeStaleSocket removes the socket of a helper that died without removing it (SIGKILL).
func (s *executorSession) removeStaleSocket(t *testing.T) {
	removeStaleSocket(t, s.rc, s.proc)
}

func removeStaleSocket(t *testing.T, rc *plugin.ReattachConfig, p procRef) {
	if rc == nil || p.alive() {
		return
	}
	if err := os.Remove(rc.Addr.String()); err == nil {
		t.Logf("cleanup: removed socket %s left by the dead helper", rc.Addr.String())
	}
}

// reattachExecutor16 is ReattachToExecutor of Nomad 1.6.5: no Cmd, no RPC after the dial.
func reattachExecutor16(t *testing.T, rc *plugin.ReattachConfig) (*plugin.Client, error) {
	t.Helper()
	logger, _ := agentLogger(t)
	c := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  nomadHandshake,
		Reattach:         rc,
		Plugins:          map[string]plugin.Plugin{"executor": connPlugin{}},
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:           logger.Named("executor"),
	})
	t.Cleanup(c.Kill)
	rpc, err := c.Client()
	if err != nil {
		return nil, fmt.Errorf("error creating rpc client for executor plugin: %w", err)
	}
	if _, err := rpc.Dispense("executor"); err != nil {
		return nil, fmt.Errorf("unable to dispense the executor plugin: %w", err)
	}
	return c, nil
}

// launch16 is Launch of 1.6.5 raw_exec's ExecCommand: no resources, basic_process_cgroup
// (field 10) as root, user "" (the agent's), task dir, sorted task env.
func launch16(t *testing.T, conn *grpc.ClientConn, a allocLayout, cmd string, args ...string) (procRef, processState) {
	t.Helper()
	var m msg
	m.str(1, cmd)
	m.strs(2, args)
	m.str(4, a.stdoutPath)
	m.str(5, a.errPath)
	m.strs(6, a.taskEnv())
	m.str(8, a.taskDir)
	m.boolean(10, os.Geteuid() == 0)
	resp, err := invoke(conn, executorService+"Launch", m, time.Minute)
	if err != nil {
		t.Fatalf("Launch: %v", err)
	}
	ps := decodeState(t, decode(t, resp).bytes(1))
	if ps.pid <= 0 {
		t.Fatalf("Launch pid = %d", ps.pid)
	}
	// A short task may be gone already: then the ref never matches a live process.
	_, start, _ := procStat(int(ps.pid))
	task := procRef{pid: int(ps.pid), start: start}
	t.Cleanup(task.killGroup)
	return task, ps
}

// processState is the executor's ProcessState message.
type processState struct {
	pid, exitCode, signal int32
	time                  time.Time
}

func decodeState(t *testing.T, b []byte) processState {
	t.Helper()
	f := decode(t, b)
	ts := decode(t, f.bytes(4))
	return processState{
		pid: f.int32(1), exitCode: f.int32(2), signal: f.int32(3),
		time: time.Unix(ts.int64(1), ts.int64(2)),
	}
}

func wait(t *testing.T, conn *grpc.ClientConn) processState {
	t.Helper()
	resp, err := invoke(conn, executorService+"Wait", nil, time.Minute)
	if err != nil {
		t.Fatalf("Wait: %v", err)
	}
	return decodeState(t, decode(t, resp).bytes(1))
}

func shutdown(t *testing.T, conn *grpc.ClientConn, signal string, grace time.Duration) {
	t.Helper()
	var m msg
	m.str(1, signal)
	m.varint(2, grace.Nanoseconds())
	if _, err := invoke(conn, executorService+"Shutdown", m, time.Minute); err != nil {
		t.Fatalf("Shutdown(%q, %v): %v", signal, grace, err)
	}
}

// killHelper is the driver's pluginClient.Kill() at the end of StopTask/DestroyTask: the helper
// must exit on GRPCController.Shutdown (status 0) within go-plugin's 2 s window.
func killHelper(t *testing.T, c *plugin.Client, cmd *exec.Cmd, rc *plugin.ReattachConfig, w *socketWatch) {
	t.Helper()
	w.finish(t)
	start := time.Now()
	c.Kill()
	elapsed := time.Since(start)
	if !c.Exited() {
		t.Errorf("after Kill: Exited() = false")
	}
	if elapsed >= 2*time.Second {
		t.Errorf("Kill took %v: the helper did not exit on GRPCController.Shutdown", elapsed)
	}
	if ps := cmd.ProcessState; ps != nil && ps.ExitCode() != 0 {
		t.Errorf("helper exit status after Kill: %v, want 0", ps)
	}
	socketRemoved(t, rc)
}

// socketRemoved: a helper that exited on Shutdown has removed its socket (go-plugin's Go server
// unlinks it when the gRPC server stops).
func socketRemoved(t *testing.T, rc *plugin.ReattachConfig) {
	t.Helper()
	if _, err := os.Lstat(rc.Addr.String()); err == nil {
		t.Errorf("socket %s still there after the helper exited on Shutdown", rc.Addr.String())
	}
}

// TestExecutorLaunchWaitShutdown16: a 1.6 raw_exec task through both executors, exit code,
// signal and the exact stdout/stderr bytes. Mirrors Nomad's TestExecutor_Start_Wait,
// TestExecutor_Start_Wait_Failure_Code and TestExecutor_Start_Kill
// (drivers/shared/executor/executor_test.go) and TestRawExecDriver_StartWait: Launch, Wait,
// Shutdown as StopTask/DestroyTask send it, then Kill. As root (basic_process_cgroup) the task's
// cgroups must be gone after Shutdown (1.6.5: freezer /nomad/<uuid> removed by the containment
// cleanup, nomad-versions.md §4.3).
func TestExecutorLaunchWaitShutdown16(t *testing.T) {
	type outcome struct {
		launchExit, waitExit, waitSignal int32
		samePid                          bool
		stdout, stderr                   string
	}
	scenarios := []struct {
		name string
		cmd  []string
		// signal/grace of the Shutdown sent while the task runs; "" = Wait first, then
		// DestroyTask's Shutdown("", 0)
		signal string
		grace  time.Duration
		want   outcome
	}{
		{
			name: "exit",
			cmd:  []string{"/bin/sh", "-c", `echo hello world; printf 'bin\000ary\n'; echo to stderr >&2; exit 3`},
			want: outcome{launchExit: -1, waitExit: 3, samePid: true,
				stdout: "hello world\nbin\x00ary\n", stderr: "to stderr\n"},
		},
		{
			name:   "sigint",
			cmd:    []string{"/bin/sleep", "300"},
			signal: "SIGINT", grace: 100 * time.Millisecond,
			want: outcome{launchExit: -1, waitExit: 130, waitSignal: 2, samePid: true},
		},
	}
	got := map[string]map[string]outcome{}
	eachHelper(t, func(t *testing.T, h helper) {
		got[h.name] = map[string]outcome{}
		for _, sc := range scenarios {
			t.Run(sc.name, func(t *testing.T) {
				cg := newCgroupJanitor(t)
				a := newAlloc(t, "web")
				s := createExecutor(t, h, a)
				task, launched := launch16(t, s.conn, a, sc.cmd[0], sc.cmd[1:]...)
				var taskCgroups map[string]string
				var exited processState
				if sc.signal == "" {
					exited = wait(t, s.conn)
					shutdown(t, s.conn, "", 0)
				} else {
					taskCgroups = cg.track(task.pid)
					shape := cgroupShape(taskCgroups)
					own, _ := procCgroups(s.proc.pid)
					t.Logf("%s executor: task cgroups %v; the executor's freezer cgroup: %s", h.name, taskCgroups,
						own["freezer"])
					if want := "freezer:/nomad/<uuid>"; os.Geteuid() == 0 && shape != want {
						t.Errorf("%s executor: task cgroups %s, want %s (1.6.5 ConfigureBasicCgroups)", h.name, shape, want)
					}
					shutdown(t, s.conn, sc.signal, sc.grace)
					exited = wait(t, s.conn)
				}
				stdout, _ := os.ReadFile(a.stdoutPath)
				stderr, _ := os.ReadFile(a.errPath)
				o := outcome{
					launchExit: launched.exitCode, waitExit: exited.exitCode, waitSignal: exited.signal,
					samePid: exited.pid == launched.pid, stdout: string(stdout), stderr: string(stderr),
				}
				got[h.name][sc.name] = o
				if o != sc.want {
					t.Errorf("%s executor: %+v\nwant %+v", h.name, o, sc.want)
				}
				if d := time.Since(exited.time); d < 0 || d > time.Minute {
					t.Errorf("Wait time %v is not about now", exited.time)
				}
				if os.Geteuid() == 0 && sc.signal != "" {
					if len(taskCgroups) == 0 {
						t.Errorf("%s executor: task with basic_process_cgroup ran in no cgroup of its own", h.name)
					}
					for hier, p := range taskCgroups {
						d := filepath.Join(hierarchyDir(hier), p)
						if _, err := os.Stat(d); err == nil {
							t.Errorf("%s executor: task cgroup %s still there after Shutdown", h.name, d)
						}
					}
				}
				killHelper(t, s.c, s.cmd, s.rc, s.watch)
			})
		}
	})
	if n, r := got["nomad"], got["rust"]; n != nil && r != nil {
		for _, sc := range scenarios {
			if n[sc.name] != r[sc.name] {
				t.Errorf("%s: nomad %+v, rust %+v", sc.name, n[sc.name], r[sc.name])
			}
		}
	}
}

// TestExecutorReattach16: the agent goes away with the task running (connection dropped, no
// Shutdown), and a new agent reattaches from the driver state as 1.6.5 stores it
// (pstructs.ReattachConfig through JSON), five times; the last client Waits, StopTask's
// Shutdown(SIGTERM) ends the task, Kill ends the helper. The socket is stat'ed for the whole
// session: it must never go away, or a v1.4.10 reattach would fail its dial and SIGKILL the
// helper. Mirrors Nomad's TestRawExecDriver_StartWaitRecoverWaitStop (drivers/rawexec).
func TestExecutorReattach16(t *testing.T) {
	eachHelper(t, func(t *testing.T, h helper) {
		cg := newCgroupJanitor(t)
		a := newAlloc(t, "web")
		s := createExecutor(t, h, a)
		task, launched := launch16(t, s.conn, a, "/bin/sleep", "300")
		cg.track(task.pid)
		stored := persist(t, s.rc)
		dropConnection(t, s.c)

		var c *plugin.Client
		for i := 0; i < 5; i++ {
			rc := restore(t, stored)
			var err error
			if c, err = reattachExecutor16(t, rc); err != nil {
				t.Fatalf("reattach %d: %v", i+1, err)
			}
			if !s.proc.alive() {
				t.Fatalf("reattach %d: the executor (pid %d) is gone", i+1, s.proc.pid)
			}
			if i < 4 {
				dropConnection(t, c)
			}
		}
		if !task.alive() {
			t.Fatalf("task pid %d died across the reattaches", task.pid)
		}
		conn := dispense(t, c, "executor")
		type waitResult struct {
			resp []byte
			err  error
		}
		waited := make(chan waitResult, 1)
		go func() { // RecoverTask's h.run(): Wait on the reattached executor
			resp, err := invoke(conn, executorService+"Wait", nil, time.Minute)
			waited <- waitResult{resp, err}
		}()
		shutdown(t, conn, "SIGTERM", 5*time.Second)
		w := <-waited
		if w.err != nil {
			t.Fatalf("Wait after reattach: %v", w.err)
		}
		ps := decodeState(t, decode(t, w.resp).bytes(1))
		if ps.exitCode != 143 || ps.signal != 15 || ps.pid != launched.pid {
			t.Errorf("Wait after reattach: %+v, want pid %d exit 143 signal 15", ps, launched.pid)
		}
		s.watch.finish(t)
		c.Kill()
		if !waitFor(5*time.Second, s.c.Exited) {
			t.Fatalf("executor pid %d still running after the reattached client's Kill", s.proc.pid)
		}
		if st := s.cmd.ProcessState; st.ExitCode() != 0 {
			t.Errorf("executor exit status %v, want 0 (graceful GRPCController.Shutdown)", st)
		}
		socketRemoved(t, s.rc)
	})
}

// dialFailure is what a v1.4.10 reattach to a wrong address does to a live helper.
type dialFailure struct {
	err          string
	sigkilled    bool
	socketLeft   bool
	taskSurvived bool
}

// TestReattachDialFailureKills16: go-plugin v1.4.10's Client.reattach SIGKILLs the recorded pid
// when the dial of the recorded address fails (nomad-versions.md §1.3; v1.8.0 does not, see
// gohost TestNomadReference2x). A reattach config with the live helper's pid and a wrong
// address kills the helper, for both implementations and both helpers; the executor's task is
// left running without its executor. Mirrors the "Reattachment process not found" path of
// Nomad's RecoverTask / logmon hook reattach (nomad#5611, #16922); no upstream unit test.
func TestReattachDialFailureKills16(t *testing.T) {
	got := map[string]dialFailure{}
	eachHelper(t, func(t *testing.T, h helper) {
		t.Run("executor", func(t *testing.T) {
			cg := newCgroupJanitor(t)
			a := newAlloc(t, "web")
			s := createExecutor(t, h, a)
			task, _ := launch16(t, s.conn, a, "/bin/sleep", "300")
			cg.track(task.pid)
			s.watch.finish(t)
			o := dialFailureOf(t, s.c, s.cmd, s.rc, func(rc *plugin.ReattachConfig) error {
				_, err := reattachExecutor16(t, rc)
				return err
			})
			o.taskSurvived = task.alive()
			got[h.name+"/executor"] = o
			t.Logf("%s executor: %+v", h.name, o)
		})
		t.Run("logmon", func(t *testing.T) {
			a := newAlloc(t, "web")
			l := launchLogmon16(t, h)
			if err := logmonStart(l.conn, logmonRequest(a, 2, 1)); err != nil {
				t.Fatalf("Start: %v", err)
			}
			l.watch.finish(t)
			o := dialFailureOf(t, l.c, l.cmd, l.rc, func(rc *plugin.ReattachConfig) error {
				_, err := reattachLogmon16(t, rc)
				return err
			})
			got[h.name+"/logmon"] = o
			t.Logf("%s logmon: %+v", h.name, o)
		})
	})
	for _, kind := range []string{"executor", "logmon"} {
		if n, ok := got["nomad/"+kind]; ok {
			if r, ok := got["rust/"+kind]; ok && n != r {
				t.Errorf("%s after a failed reattach dial: nomad %+v, rust %+v", kind, n, r)
			}
		}
	}
}

// dialFailureOf reattaches with the helper's pid and an address nobody listens on, and reports
// what happened to the helper.
func dialFailureOf(t *testing.T, c *plugin.Client, cmd *exec.Cmd, rc *plugin.ReattachConfig,
	reattach func(*plugin.ReattachConfig) error) dialFailure {
	t.Helper()
	wrong := *rc
	wrong.Addr = &net.UnixAddr{Net: "unix", Name: filepath.Join(t.TempDir(), "plugin-gone")}
	err := reattach(restore(t, persist(t, &wrong)))
	if !errors.Is(err, plugin.ErrProcessNotFound) {
		t.Fatalf("reattach to a wrong address: %v, want %v", err, plugin.ErrProcessNotFound)
	}
	o := dialFailure{err: err.Error()}
	if !waitFor(5*time.Second, c.Exited) {
		t.Fatalf("helper pid %d still alive 5 s after the failed reattach dial", rc.Pid)
	}
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok {
		o.sigkilled = ws.Signaled() && ws.Signal() == syscall.SIGKILL
	}
	if !o.sigkilled {
		t.Errorf("helper ended with %v, want SIGKILL", cmd.ProcessState)
	}
	if _, err := os.Lstat(rc.Addr.String()); err == nil {
		o.socketLeft = true
	}
	return o
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

var uuidPattern = regexp.MustCompile(`[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`)

// cgroupShape is a task's own cgroups as "hierarchy:path" with UUIDs replaced, sorted.
func cgroupShape(cgs map[string]string) string {
	var out []string
	for h, p := range cgs {
		out = append(out, h+":"+uuidPattern.ReplaceAllString(p, "<uuid>"))
	}
	sort.Strings(out)
	return strings.Join(out, " ")
}
