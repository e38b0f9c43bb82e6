package nomad16

import (
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const cgroupRoot = "/sys/fs/cgroup"

// newUUID returns a random UUID in Nomad's alloc ID form.
func newUUID(t *testing.T) string {
	t.Helper()
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// allocLayout is the part of an alloc dir the helpers see: <dir>/<allocID>/{alloc/logs,<task>/{local,secrets,tmp}}.
type allocLayout struct {
	allocID, task       string
	allocDir, taskDir   string
	logDir              string
	stdoutPath, errPath string // plain files standing in for logmon's FIFOs
}

func newAlloc(t *testing.T, task string) allocLayout {
	t.Helper()
	id := newUUID(t)
	a := allocLayout{allocID: id, task: task, allocDir: filepath.Join(t.TempDir(), id)}
	a.taskDir = filepath.Join(a.allocDir, task)
	a.logDir = filepath.Join(a.allocDir, "alloc", "logs")
	for _, d := range []string{a.logDir, filepath.Join(a.taskDir, "local"), filepath.Join(a.taskDir, "secrets"),
		filepath.Join(a.taskDir, "tmp")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	a.stdoutPath = filepath.Join(a.taskDir, "stdout")
	a.errPath = filepath.Join(a.taskDir, "stderr")
	for _, p := range []string{a.stdoutPath, a.errPath} {
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return a
}

// taskEnv is what a 1.6 raw_exec task gets (TaskEnv.EnvList(): sorted KEY=VALUE).
func (a allocLayout) taskEnv() []string {
	env := []string{
		"NOMAD_ALLOC_DIR=" + filepath.Join(a.allocDir, "alloc"),
		"NOMAD_ALLOC_ID=" + a.allocID,
		"NOMAD_ALLOC_NAME=diff.web[0]",
		"NOMAD_JOB_NAME=diff",
		"NOMAD_SECRETS_DIR=" + filepath.Join(a.taskDir, "secrets"),
		"NOMAD_TASK_DIR=" + filepath.Join(a.taskDir, "local"),
		"NOMAD_TASK_NAME=" + a.task,
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
	}
	sort.Strings(env)
	return env
}

// procRef names one process by pid and start time, so that a recycled pid is never signalled.
type procRef struct {
	pid   int
	start string // field 22 of /proc/<pid>/stat
}

// procStat returns the state and start time of pid.
func procStat(pid int) (state, start string, ok bool) {
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

func refOf(t *testing.T, pid int) procRef {
	t.Helper()
	_, start, ok := procStat(pid)
	if !ok {
		t.Fatalf("pid %d: no such process", pid)
	}
	return procRef{pid: pid, start: start}
}

// alive: the same process still exists and is not a zombie.
func (p procRef) alive() bool {
	state, start, ok := procStat(p.pid)
	return ok && p.start != "" && start == p.start && state != "Z"
}

// killGroup SIGKILLs the process and its process group (tasks lead their own session) if it is
// still the same process.
func (p procRef) killGroup() {
	if p.pid > 0 && p.alive() {
		_ = syscall.Kill(-p.pid, syscall.SIGKILL)
		_ = syscall.Kill(p.pid, syscall.SIGKILL)
	}
}

// socketWatch stats a helper's socket every 2 ms while the helper lives: the socket must stay
// the same inode for the whole session, or a go-plugin v1.4.10 reattach would fail its dial and
// SIGKILL the helper (nomad-versions.md §1.3, §9).
type socketWatch struct {
	path   string
	ino    uint64
	stop   chan struct{}
	done   chan struct{}
	mu     sync.Mutex
	checks int
	fault  string
}

func watchSocket(t *testing.T, path string, pid procRef) *socketWatch {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Lstat(path, &st); err != nil {
		t.Fatalf("socket %s: %v", path, err)
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFSOCK {
		t.Fatalf("%s is not a socket (mode %o)", path, st.Mode)
	}
	w := &socketWatch{path: path, ino: st.Ino, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-w.stop:
				return
			case <-tick.C:
			}
			var st syscall.Stat_t
			err := syscall.Lstat(path, &st)
			if !pid.alive() {
				w.record(fmt.Sprintf("helper pid %d exited during the session", pid.pid))
				return
			}
			switch {
			case err != nil:
				w.record(fmt.Sprintf("socket %s vanished while helper pid %d lives: %v", path, pid.pid, err))
			case st.Ino != w.ino:
				w.record(fmt.Sprintf("socket %s replaced (inode %d -> %d) while helper pid %d lives", path, w.ino, st.Ino, pid.pid))
			}
			w.mu.Lock()
			w.checks++
			w.mu.Unlock()
		}
	}()
	t.Cleanup(func() { w.finish(nil) })
	return w
}

func (w *socketWatch) record(f string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.fault == "" {
		w.fault = f
	}
}

// finish stops the watch and fails t if the socket ever went away while the helper lived.
func (w *socketWatch) finish(t *testing.T) {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
	if t == nil {
		return
	}
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.fault != "" {
		t.Errorf("socket watch: %s", w.fault)
	}
	t.Logf("socket %s: same inode in all %d stats of the session", w.path, w.checks)
}

// procCgroups maps each v1 hierarchy (its controller list as in /proc/<pid>/cgroup) to pid's
// cgroup path in it.
func procCgroups(pid int) (map[string]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) == 3 {
			out[f[1]] = f[2]
		}
	}
	return out, nil
}

// hierarchyDir is where the hierarchy of a /proc/<pid>/cgroup controller list is mounted.
func hierarchyDir(controllers string) string {
	switch {
	case controllers == "":
		return filepath.Join(cgroupRoot, "unified")
	case strings.HasPrefix(controllers, "name="):
		return filepath.Join(cgroupRoot, strings.TrimPrefix(controllers, "name="))
	}
	return filepath.Join(cgroupRoot, controllers)
}

// cgroupJanitor removes the cgroups a helper made for a test's task once the test is over:
// processes left in them (only those) are SIGKILLed, the directories removed deepest first,
// and the parents (`nomad`, `goplugin`) removed when they did not exist before the test and
// are empty.
type cgroupJanitor struct {
	t       *testing.T
	parents map[string]bool // parent dirs that existed before the test
	mu      sync.Mutex
	dirs    map[string]bool
}

var helperCgroupParents = []string{"nomad", "goplugin"}

func newCgroupJanitor(t *testing.T) *cgroupJanitor {
	j := &cgroupJanitor{t: t, parents: map[string]bool{}, dirs: map[string]bool{}}
	for _, p := range helperCgroupParents {
		matches, _ := filepath.Glob(filepath.Join(cgroupRoot, "*", p))
		for _, m := range matches {
			j.parents[m] = true
		}
	}
	t.Cleanup(j.clean)
	return j
}

// track records the cgroups of pid that differ from the test process's own: the helper made them.
// It returns them as hierarchy → path.
func (j *cgroupJanitor) track(pid int) map[string]string {
	j.t.Helper()
	self, err := procCgroups(os.Getpid())
	if err != nil {
		j.t.Fatal(err)
	}
	theirs, err := procCgroups(pid)
	if err != nil {
		j.t.Fatalf("cgroups of pid %d: %v", pid, err)
	}
	own := map[string]string{}
	j.mu.Lock()
	defer j.mu.Unlock()
	for h, p := range theirs {
		switch filepath.Base(p) {
		case "share", "shared", "reserve", "reserved":
			continue // an agent's partition, shared by tasks: never ours to empty
		}
		if self[h] != p && p != "/" {
			own[h] = p
			j.dirs[filepath.Join(hierarchyDir(h), p)] = true
		}
	}
	return own
}

// dirs returns the tracked directories.
func (j *cgroupJanitor) tracked() []string {
	j.mu.Lock()
	defer j.mu.Unlock()
	var out []string
	for d := range j.dirs {
		out = append(out, d)
	}
	sort.Strings(out)
	return out
}

func (j *cgroupJanitor) clean() {
	dirs := j.tracked()
	sort.Slice(dirs, func(a, b int) bool { return len(dirs[a]) > len(dirs[b]) })
	for _, d := range dirs {
		if _, err := os.Stat(d); err != nil {
			continue
		}
		_ = os.WriteFile(filepath.Join(d, "freezer.state"), []byte("THAWED"), 0o644)
		ok := waitFor(10*time.Second, func() bool {
			pids := cgroupPids(d)
			for _, p := range pids {
				_ = syscall.Kill(p, syscall.SIGKILL)
			}
			err := syscall.Rmdir(d)
			return err == nil || errors.Is(err, syscall.ENOENT)
		})
		if ok {
			j.t.Logf("cleanup: removed cgroup %s", d)
		} else {
			j.t.Errorf("cleanup: cannot remove cgroup %s (pids %v)", d, cgroupPids(d))
		}
	}
	for _, p := range helperCgroupParents {
		matches, _ := filepath.Glob(filepath.Join(cgroupRoot, "*", p))
		for _, m := range matches {
			if !j.parents[m] {
				if err := syscall.Rmdir(m); err == nil {
					j.t.Logf("cleanup: removed cgroup parent %s (created during the test)", m)
				}
			}
		}
	}
}

// cgroupPids lists the processes in one cgroup directory.
func cgroupPids(dir string) []int {
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
