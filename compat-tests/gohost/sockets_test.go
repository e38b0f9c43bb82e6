package gohost

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/hashicorp/go-plugin"
)

// testGroup is an existing group other than the test process's own, so that a chown is visible
// (the tests run as root). go-plugin accepts it by name or by numeric gid.
func testGroup(t *testing.T) (name string, gid uint32) {
	t.Helper()
	g, err := user.LookupGroup("daemon")
	if err != nil {
		g, err = user.LookupGroupId(strconv.Itoa(os.Getgid()))
		if err != nil {
			t.Fatalf("no usable group: %v", err)
		}
	}
	id, err := strconv.ParseUint(g.Gid, 10, 32)
	if err != nil {
		t.Fatal(err)
	}
	return g.Name, uint32(id)
}

// shortTempDir returns a fresh directory with a short path: unix socket paths must stay under
// 108 bytes, and t.TempDir embeds the (long) test name.
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "gp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	dir, err = filepath.EvalSymlinks(dir)
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// socketsIn lists the unix sockets in dir.
func socketsIn(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("read %s: %v", dir, err)
	}
	var out []string
	for _, e := range entries {
		if e.Type()&os.ModeSocket != 0 {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	sort.Strings(out)
	return out
}

// checkSocketPerms checks mode 0660 and group gid on a socket file.
func checkSocketPerms(t *testing.T, path string, gid uint32) {
	t.Helper()
	info, err := os.Lstat(path)
	if err != nil {
		t.Errorf("stat %s: %v", path, err)
		return
	}
	if info.Mode()&os.ModeSocket == 0 {
		t.Errorf("%s is not a socket: %v", path, info.Mode())
	}
	if perm := info.Mode().Perm(); perm != 0o660 {
		t.Errorf("%s: mode %#o, want 0660", path, perm)
	}
	if st := info.Sys().(*syscall.Stat_t); st.Gid != gid {
		t.Errorf("%s: gid %d, want %d", path, st.Gid, gid)
	}
}

// unixAddr returns the plugin's handshake address, failing unless it is a unix socket.
func unixAddr(t *testing.T, h *host) string {
	t.Helper()
	addr, err := h.c.Start()
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	if addr.Network() != "unix" {
		t.Fatalf("handshake network %q, want unix", addr.Network())
	}
	return addr.String()
}

// TestUnixSocketDir: spec §19 item 26 and §4. With PLUGIN_UNIX_SOCKET_DIR in the plugin's
// environment, the handshake socket and the plugin's broker sockets are created in that
// directory; the handshake socket is gone after Kill.
//
// Mirrors go-plugin TestUnixSocketDir (server_test.go).
func TestUnixSocketDir(t *testing.T) {
	eachImpl(t, true, func(t *testing.T, im impl) {
		dir := shortTempDir(t)
		h := newHost(t, im.bin(t, im.grpctest), hostOpts{env: []string{plugin.EnvUnixSocketDir + "=" + dir}})
		addr := unixAddr(t, h)
		if got := filepath.Dir(filepath.Clean(addr)); got != dir {
			t.Fatalf("handshake socket %s is in %s, want %s", addr, got, dir)
		}
		tc := h.dispense(t)
		if err := tc.Bidirectional(callCtx(t)); err != nil {
			t.Fatalf("Bidirectional: %v", err)
		}
		// The plugin's brokered PingPong listener stays open until the broker closes.
		if socks := socketsIn(t, dir); len(socks) < 2 {
			t.Errorf("sockets in %s after Bidirectional: %v, want the handshake socket and a broker socket", dir, socks)
		}
		h.killGracefully(t)
		if _, err := os.Lstat(addr); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("handshake socket %s still present after Kill (stat: %v)", addr, err)
		}
		// A Go plugin may exit before its brokered listeners are closed, leaving their socket
		// files behind; that is tolerated, not required.
		if socks := socketsIn(t, dir); len(socks) != 0 {
			t.Logf("broker sockets left in %s after Kill (tolerated): %v", dir, socks)
		}
	})
}

// TestUnixSocketGroup: spec §19 item 26 and §4. With PLUGIN_UNIX_SOCKET_GROUP (set by go-plugin
// from UnixSocketConfig.Group, as a group name or a numeric gid) every socket the plugin creates,
// the handshake socket and its broker sockets, has mode 0660 and that group.
//
// Mirrors go-plugin TestUnixSocketGroupPermissions (server_unix_test.go).
func TestUnixSocketGroup(t *testing.T) {
	name, gid := testGroup(t)
	cases := []struct{ name, group string }{
		{"as-name", name},
		{"as-gid", strconv.FormatUint(uint64(gid), 10)},
	}
	eachImpl(t, true, func(t *testing.T, im impl) {
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				dir := shortTempDir(t)
				h := newHost(t, im.bin(t, im.grpctest), hostOpts{
					env:  []string{plugin.EnvUnixSocketDir + "=" + dir},
					unix: &plugin.UnixSocketConfig{Group: c.group},
				})
				addr := unixAddr(t, h)
				checkSocketPerms(t, addr, gid)
				tc := h.dispense(t)
				if err := tc.Bidirectional(callCtx(t)); err != nil {
					t.Fatalf("Bidirectional: %v", err)
				}
				socks := socketsIn(t, dir)
				if len(socks) < 2 {
					t.Errorf("sockets in %s after Bidirectional: %v, want the handshake socket and a broker socket", dir, socks)
				}
				for _, s := range socks {
					checkSocketPerms(t, s, gid)
				}
				h.killGracefully(t)
			})
		}
	})
}

// TestRunnerFuncSocketDir: spec §19 item 26. With UnixSocketConfig{Group, TempDir} and a
// RunnerFunc, go-plugin creates the socket directory under TempDir (mode 0770, the group) and
// passes PLUGIN_UNIX_SOCKET_DIR and PLUGIN_UNIX_SOCKET_GROUP; the plugin's handshake socket lands
// there with mode 0660 and the group, the broker works (host broker sockets share the directory),
// and Kill removes the directory.
//
// Mirrors go-plugin TestSetGroup (client_unix_test.go).
func TestRunnerFuncSocketDir(t *testing.T) {
	name, gid := testGroup(t)
	eachImpl(t, true, func(t *testing.T, im impl) {
		base := shortTempDir(t)
		var socketDir string
		var inspectErrs []string
		h := newHost(t, im.bin(t, im.grpctest), hostOpts{
			unix: &plugin.UnixSocketConfig{Group: name, TempDir: base},
			runner: &runnerOpts{inspect: func(cmd *exec.Cmd, dir string) {
				socketDir = dir
				fail := func(format string, args ...interface{}) {
					inspectErrs = append(inspectErrs, fmt.Sprintf(format, args...))
				}
				if filepath.Dir(dir) != base {
					fail("socket dir %s is not under %s", dir, base)
				}
				info, err := os.Lstat(dir)
				if err != nil {
					fail("stat %s: %v", dir, err)
					return
				}
				if info.Mode().Perm() != 0o770 {
					fail("socket dir mode %#o, want 0770", info.Mode().Perm())
				}
				if st := info.Sys().(*syscall.Stat_t); st.Gid != gid {
					fail("socket dir gid %d, want %d", st.Gid, gid)
				}
				env := strings.Join(cmd.Env, "\n") + "\n"
				for _, kv := range []string{plugin.EnvUnixSocketDir + "=" + dir, plugin.EnvUnixSocketGroup + "=" + name} {
					if !strings.Contains(env, "\n"+kv+"\n") && !strings.HasPrefix(env, kv+"\n") {
						fail("plugin env lacks %s", kv)
					}
				}
			}},
		})
		addr := unixAddr(t, h)
		if len(inspectErrs) > 0 {
			t.Fatalf("RunnerFunc saw:\n%s", strings.Join(inspectErrs, "\n"))
		}
		if filepath.Dir(addr) != socketDir {
			t.Fatalf("handshake socket %s not in the RunnerFunc socket dir %s", addr, socketDir)
		}
		checkSocketPerms(t, addr, gid)
		tc := h.dispense(t)
		mustDouble(t, tc, 21, 42)
		if err := tc.Bidirectional(callCtx(t)); err != nil {
			t.Fatalf("Bidirectional: %v", err)
		}
		h.killGracefully(t)
		if _, err := os.Stat(socketDir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket dir %s still exists after Kill (stat: %v)", socketDir, err)
		}
	})
}
