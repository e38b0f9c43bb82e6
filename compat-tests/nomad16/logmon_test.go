package nomad16

// logmon under go-plugin v1.4.10 configured as Nomad 1.6.5's client/logmon/plugin.go
// LaunchLogMon, driven as 1.6.5's taskrunner/logmon_hook.go drives it.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
)

const logmonService = "/hashicorp.nomad.client.logmon.proto.LogMon/"

type logmonSession struct {
	c     *plugin.Client
	cmd   *exec.Cmd
	conn  *grpc.ClientConn
	rc    *plugin.ReattachConfig
	proc  procRef
	watch *socketWatch
}

// launchLogmon16 is LaunchLogMon(logger, nil) of 1.6.5: [bin, "logmon"], no setsid, no port
// range (go-plugin's defaults), gRPC only, logger named "logmon".
func launchLogmon16(t *testing.T, h helper) *logmonSession {
	t.Helper()
	logger, _ := agentLogger(t)
	cmd := exec.Command(h.bin, "logmon")
	c := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  nomadHandshake,
		Plugins:          map[string]plugin.Plugin{"logmon": connPlugin{}},
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:           logger.Named("logmon"),
		Cmd:              cmd,
	})
	l := &logmonSession{c: c, cmd: cmd}
	t.Cleanup(func() { removeStaleSocket(t, l.rc, l.proc) })
	t.Cleanup(c.Kill)
	l.conn = dispense(t, c, "logmon")
	l.rc = c.ReattachConfig()
	l.proc = refOf(t, l.rc.Pid)
	l.watch = watchSocket(t, l.rc.Addr.String(), l.proc)
	return l
}

// reattachLogmon16 is LaunchLogMon(logger, cfg) of 1.6.5: dial and Dispense, no Ping (2.x adds one).
func reattachLogmon16(t *testing.T, rc *plugin.ReattachConfig) (*plugin.Client, error) {
	t.Helper()
	logger, _ := agentLogger(t)
	c := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  nomadHandshake,
		Plugins:          map[string]plugin.Plugin{"logmon": connPlugin{}},
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:           logger.Named("logmon"),
		Reattach:         rc,
	})
	t.Cleanup(c.Kill)
	rpc, err := c.Client()
	if err != nil {
		return nil, err
	}
	if _, err := rpc.Dispense("logmon"); err != nil {
		return nil, err
	}
	return c, nil
}

// logmonRequest is the hook's StartRequest for task a.task: <alloc>/alloc/logs, <task>.stdout,
// FIFOs .<task>.stdout.fifo.
func logmonRequest(a allocLayout, maxFiles, maxFileSizeMB int64) []byte {
	var m msg
	m.str(1, a.logDir)
	m.str(2, a.task+".stdout")
	m.str(3, a.task+".stderr")
	m.varint(4, maxFiles)
	m.varint(5, maxFileSizeMB)
	m.str(6, stdoutFifo(a))
	m.str(7, stderrFifo(a))
	return m
}

func stdoutFifo(a allocLayout) string { return filepath.Join(a.logDir, "."+a.task+".stdout.fifo") }
func stderrFifo(a allocLayout) string { return filepath.Join(a.logDir, "."+a.task+".stderr.fifo") }

func logmonStart(conn *grpc.ClientConn, req []byte) error {
	_, err := invoke(conn, logmonService+"Start", req, time.Minute)
	return err
}

func logmonStop(conn *grpc.ClientConn) error {
	_, err := invoke(conn, logmonService+"Stop", nil, time.Minute)
	return err
}

// openFifoWriter opens a FIFO for writing as the executor does, once logmon's reader is there
// (polled: a non-blocking open fails with ENXIO until then). The file stays non-blocking, so
// writes honour deadlines.
func openFifoWriter(t *testing.T, path string) *os.File {
	t.Helper()
	var fd int
	var err error
	if !waitFor(10*time.Second, func() bool {
		fd, err = syscall.Open(path, syscall.O_WRONLY|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
		return err == nil || !(errors.Is(err, syscall.ENXIO) || errors.Is(err, syscall.ENOENT))
	}) || err != nil {
		t.Fatalf("open %s for writing: %v (no reader within 10 s?)", path, err)
	}
	f := os.NewFile(uintptr(fd), path)
	t.Cleanup(func() { _ = f.Close() })
	return f
}

func writeAll(t *testing.T, f *os.File, b []byte) {
	t.Helper()
	_ = f.SetWriteDeadline(time.Now().Add(30 * time.Second))
	if _, err := f.Write(b); err != nil {
		t.Fatalf("write %d bytes into %s: %v", len(b), f.Name(), err)
	}
}

// rotated returns the names of dir's files starting with base+".", by index, and their
// concatenated contents.
func rotated(dir, base string) ([]string, []int, []byte) {
	entries, _ := os.ReadDir(dir)
	type file struct {
		name string
		idx  int
	}
	var files []file
	for _, e := range entries {
		var idx int
		if rest, ok := strings.CutPrefix(e.Name(), base+"."); ok {
			if _, err := fmt.Sscanf(rest, "%d", &idx); err == nil && fmt.Sprint(idx) == rest {
				files = append(files, file{e.Name(), idx})
			}
		}
	}
	sort.Slice(files, func(i, j int) bool { return files[i].idx < files[j].idx })
	var names []string
	var sizes []int
	var all []byte
	for _, f := range files {
		b, _ := os.ReadFile(filepath.Join(dir, f.name))
		names = append(names, f.name)
		sizes = append(sizes, len(b))
		all = append(all, b...)
	}
	return names, sizes, all
}

func waitRotated(t *testing.T, dir, base string, want []byte) []string {
	t.Helper()
	var names []string
	var sizes []int
	var all []byte
	if !waitFor(20*time.Second, func() bool {
		names, sizes, all = rotated(dir, base)
		return bytes.Equal(all, want)
	}) {
		t.Fatalf("%s/%s.*: files %v sizes %v, %d bytes, want the %d bytes written", dir, base, names, sizes,
			len(all), len(want))
	}
	t.Logf("%s.*: files %v sizes %v", base, names, sizes)
	return names
}

// TestLogmon16: logmon under a v1.4.10 host. Start (2 files of 1 MiB), 1 MiB of random bytes
// through the stdout FIFO and a line through the stderr FIFO land in the rotated files
// (.0 and .1, no .2, contents in order); then the agent goes away, a new one reattaches from
// the hook state {"reattach_config": <json>} by dial only (1.6.5 sends no Ping), Starts again
// (a no-op while running), the task's further output is appended; Stop twice; Kill. Mirrors
// Nomad's TestLogmon_Start_rotate (client/logmon/logmon_test.go) and the logmon hook's
// reattach (taskrunner/logmon_hook.go, TestTaskRunner_LogmonHook_StartStop).
func TestLogmon16(t *testing.T) {
	data := make([]byte, 1<<20)
	rand.New(rand.NewSource(1)).Read(data)
	after := []byte("after the agent restarted\n")
	files := map[string][]string{}
	eachHelper(t, func(t *testing.T, h helper) {
		a := newAlloc(t, "web")
		l := launchLogmon16(t, h)
		req := logmonRequest(a, 2, 1)
		if err := logmonStart(l.conn, req); err != nil {
			t.Fatalf("Start: %v", err)
		}
		stdout := openFifoWriter(t, stdoutFifo(a))
		stderr := openFifoWriter(t, stderrFifo(a))
		writeAll(t, stdout, data)
		writeAll(t, stderr, []byte("to stderr\n"))
		names := waitRotated(t, a.logDir, "web.stdout", data)
		if len(names) != 2 || names[0] != "web.stdout.0" || names[1] != "web.stdout.1" {
			t.Errorf("rotated stdout files %v, want [web.stdout.0 web.stdout.1]", names)
		}
		waitRotated(t, a.logDir, "web.stderr", []byte("to stderr\n"))

		state, err := json.Marshal(map[string]string{"reattach_config": string(persist(t, l.rc))})
		if err != nil {
			t.Fatal(err)
		}
		dropConnection(t, l.c)

		var hook map[string]string
		if err := json.Unmarshal(state, &hook); err != nil {
			t.Fatal(err)
		}
		c, err := reattachLogmon16(t, restore(t, []byte(hook["reattach_config"])))
		if err != nil {
			t.Fatalf("reattach: %v", err)
		}
		conn := dispense(t, c, "logmon")
		if err := logmonStart(conn, req); err != nil {
			t.Fatalf("Start after reattach: %v", err)
		}
		writeAll(t, stdout, after)
		files[h.name] = waitRotated(t, a.logDir, "web.stdout", append(append([]byte(nil), data...), after...))
		// The task exits (its FIFO ends close) before the hook's Stop.
		_ = stdout.Close()
		_ = stderr.Close()

		if err := logmonStop(conn); err != nil {
			t.Fatalf("Stop: %v", err)
		}
		if err := logmonStop(conn); err != nil {
			t.Fatalf("second Stop: %v", err)
		}
		l.watch.finish(t)
		c.Kill()
		if !waitFor(5*time.Second, l.c.Exited) {
			t.Fatalf("logmon pid %d still running after the reattached client's Kill", l.proc.pid)
		}
		if st := l.cmd.ProcessState; st.ExitCode() != 0 {
			t.Errorf("logmon exit status %v, want 0 (graceful GRPCController.Shutdown)", st)
		}
		socketRemoved(t, l.rc)
	})
	if n, r := files["nomad"], files["rust"]; n != nil && r != nil && fmt.Sprint(n) != fmt.Sprint(r) {
		t.Errorf("rotated stdout files: nomad %v, rust %v", n, r)
	}
}
