#!/usr/bin/env python3
"""Helpers of scripts/e2e-nomad, where Python is easier than bash: Nomad's HTTP API read as JSON
(expressions, waits, task summaries as shell assignments), /proc scans for the processes of an
allocation and of the work directory, a PTY for `nomad alloc exec -t`, the go-plugin handshake
probe of the driver binary, and the agent launcher (own session, default SIGINT, no stray fds).

Usage: e2e.py COMMAND ARGS...  (see the functions named cmd_*). Standard library only.
"""
import json
import os
import re
import select
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

# plugins/base/plugin.go Handshake (same in 1.6.5 and 2.x).
NOMAD_COOKIE = "e4327c2e01eabfd75a8a67adb114fb34a757d57eee7728d857a8cec6e91a7255"


# ---------------------------------------------------------------- HTTP API

def api(path):
    if path == "-":
        return json.load(sys.stdin)
    addr = os.environ["NOMAD_ADDR"].rstrip("/")
    with urllib.request.urlopen(f"{addr}/{path.lstrip('/')}", timeout=10) as r:
        return json.load(r)


def alloc_ns(d):
    """Names an expression may use besides `d` when d is an allocation."""
    def ts(task):
        return (d.get("TaskStates") or {}).get(task) or {}
    return {
        "d": d,
        "ts": ts,
        "state": lambda task: ts(task).get("State"),
        "restarts": lambda task: ts(task).get("Restarts", 0),
        "events": lambda task: [e["Type"] for e in ts(task).get("Events") or []],
        "status": lambda: d.get("ClientStatus") if isinstance(d, dict) else None,
        "terminal": lambda: isinstance(d, dict)
        and d.get("ClientStatus") in ("complete", "failed", "lost"),
    }


def show(v):
    return v if isinstance(v, str) else json.dumps(v)


def cmd_eval(path, expr):
    """Print EXPR evaluated with d = the JSON at PATH (`-`: stdin)."""
    d = api(path)
    print(show(eval(expr, alloc_ns(d))))


def cmd_wait(timeout, path, expr, fail_expr=None):
    """Poll PATH until EXPR is truthy (print it, exit 0); FAIL_EXPR truthy or the timeout:
    print what was last seen and exit 1. A 404 counts as d = None."""
    deadline = time.monotonic() + float(timeout)
    last = "nothing read"
    while True:
        try:
            try:
                d = api(path)
            except urllib.error.HTTPError as e:
                if e.code != 404:
                    raise
                d = None
            ns = alloc_ns(d)
            v = eval(expr, ns)
            if v:
                print(show(v))
                return 0
            if fail_expr and eval(fail_expr, ns):
                print(f"gave up ({fail_expr}): {describe(d)}")
                return 1
            last = describe(d)
        except Exception as e:  # not there yet, agent restarting, ...
            last = f"{type(e).__name__}: {e}"
        if time.monotonic() > deadline:
            print(f"timeout after {timeout}s waiting for {expr}; last seen: {last}")
            return 1
        time.sleep(0.25)


def describe(d):
    """A short text of an allocation (status and each task's events), else the JSON, cut."""
    if isinstance(d, dict) and "TaskStates" in d:
        tasks = []
        for name, t in sorted((d.get("TaskStates") or {}).items()):
            evs = "; ".join(event_text(e) for e in t.get("Events") or [])
            tasks.append(f"{name}: {t.get('State')} [{evs}]")
        return f"alloc {d.get('ClientStatus')}: " + " | ".join(tasks)
    return json.dumps(d)[:400]


def event_text(e):
    return f"{e['Type']}: {e.get('DisplayMessage') or e.get('Message') or ''}".rstrip(": ")


def cmd_task(path, task):
    """Shell assignments (ts_*) summarising TASK of the allocation at PATH (`-`: stdin)."""
    d = api(path)
    t = (d.get("TaskStates") or {}).get(task) or {}
    evs = t.get("Events") or []

    def last(kind):
        found = [e for e in evs if e["Type"] == kind]
        return found[-1] if found else {}

    term = last("Terminated")
    details = term.get("Details") or {}
    out = {
        "ts_alloc_status": d.get("ClientStatus", ""),
        "ts_state": t.get("State", ""),
        "ts_failed": str(bool(t.get("Failed"))).lower(),
        "ts_restarts": t.get("Restarts", 0),
        "ts_events": ",".join(e["Type"] for e in evs),
        "ts_history": "; ".join(event_text(e) for e in evs),
        "ts_exit": term.get("ExitCode", ""),
        "ts_signal": term.get("Signal", ""),
        "ts_oom": details.get("oom_killed", "false"),
        "ts_exit_msg": details.get("exit_message", ""),
        "ts_term_text": event_text(term) if term else "",
        "ts_term_ns": term.get("Time", 0),
        "ts_kill_ns": last("Killing").get("Time", 0),
        "ts_started_ns": last("Started").get("Time", 0),
        "ts_n_started": sum(1 for e in evs if e["Type"] == "Started"),
    }
    for k, v in out.items():
        print(f"{k}={shlex.quote(str(v))}")


def cmd_stats(alloc, task):
    """Shell assignments (st_*) of the task's resource usage from /v1/client/allocation/ID/stats."""
    d = api(f"v1/client/allocation/{alloc}/stats")
    ru = (d.get("Tasks") or {}).get(task, {}).get("ResourceUsage") or {}
    mem, cpu = ru.get("MemoryStats") or {}, ru.get("CpuStats") or {}
    out = {
        "st_rss": mem.get("RSS", 0),
        "st_mem_measured": ",".join(mem.get("Measured") or []),
        "st_cpu_percent": cpu.get("Percent", 0),
        "st_cpu_ticks": cpu.get("TotalTicks", 0),
        "st_cpu_user": cpu.get("UserMode", 0),
        "st_cpu_measured": ",".join(cpu.get("Measured") or []),
        "st_pids": ",".join(sorted((d.get("Tasks") or {}).get(task, {}).get("Pids") or {})),
    }
    for k, v in out.items():
        print(f"{k}={shlex.quote(str(v))}")


# ---------------------------------------------------------------- /proc

class Proc:
    def __init__(self, pid):
        self.pid = pid
        base = f"/proc/{pid}"
        with open(f"{base}/stat") as f:
            stat = f.read()
        rest = stat[stat.rindex(")") + 2:].split()
        self.state, self.ppid, self.sid = rest[0], int(rest[1]), int(rest[3])
        self.starttime = rest[19]
        with open(f"{base}/cmdline", "rb") as f:
            self.argv = [a.decode(errors="replace") for a in f.read().split(b"\0")[:-1]]
        self.exe = readlink(f"{base}/exe").removesuffix(" (deleted)")
        self.cwd = readlink(f"{base}/cwd")
        self._fds = None
        self._environ = None

    @property
    def fds(self):
        if self._fds is None:
            self._fds = []
            try:
                for fd in os.listdir(f"/proc/{self.pid}/fd"):
                    self._fds.append(readlink(f"/proc/{self.pid}/fd/{fd}"))
            except OSError:
                pass
        return self._fds

    @property
    def environ(self):
        if self._environ is None:
            try:
                with open(f"/proc/{self.pid}/environ", "rb") as f:
                    self._environ = f.read().decode(errors="replace").split("\0")
            except OSError:
                self._environ = []
        return self._environ

    def threads(self):
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
        return 0

    def role(self, exes, plugin):
        """executor / logmon (argv[1], Nomad's re-exec names) or task-helper (goplugin's both in
        one process, helpers = "combined") of a known binary, or driver (the plugin binary
        started without arguments, as Nomad's loader does)."""
        if self.exe not in exes:
            return None
        if len(self.argv) > 1 and self.argv[1] in ("executor", "logmon", "task-helper"):
            return self.argv[1]
        if self.exe == plugin and len(self.argv) == 1:
            return "driver"
        return None

    def refers_to(self, needle):
        return (needle in " ".join(self.argv) or self.cwd.startswith(needle)
                or any(needle in t for t in self.fds))

    def line(self):
        return f"{self.pid} {self.ppid} {self.state} {self.starttime} {' '.join(self.argv)[:160]}"


def readlink(p):
    try:
        return os.readlink(p)
    except OSError:
        return ""


def procs():
    me = os.getpid()
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != me:
            try:
                p = Proc(int(name))
            except (OSError, ValueError, IndexError):
                continue
            if p.state not in ("Z", "X"):  # zombies: this sandbox's pid 1 may never reap them
                yield p


def real(p):
    return os.path.realpath(p) if p else ""


def cmd_helpers(alloc, nomad_bin, plugin):
    """Lines `ROLE PID PPID FDS THREADS` of the executors, logmons and task-helpers serving ALLOC (argv of
    Nomad's binary or of the plugin, the alloc id in argv or an open file) and of every driver
    process (the plugin without arguments)."""
    exes = {real(nomad_bin), real(plugin)} - {""}
    plugin = real(plugin)
    for p in procs():
        role = p.role(exes, plugin)
        if role is None or (role != "driver" and not p.refers_to(alloc)):
            continue
        try:
            print(role, p.pid, p.ppid, len(os.listdir(f"/proc/{p.pid}/fd")), p.threads())
        except OSError:
            pass


def cmd_alloc_procs(alloc, alloc_dir):
    """Lines `PID PPID STATE STARTTIME ARGV` of live processes belonging to ALLOC: its env
    (NOMAD_ALLOC_ID), its directory as cwd or open file, or its id in argv. Not this session."""
    me = os.getsid(0)
    env = f"NOMAD_ALLOC_ID={alloc}"
    for p in procs():
        if p.sid == me:
            continue
        if env in p.environ or p.refers_to(alloc_dir) or alloc in " ".join(p.argv):
            print(p.line())


def cmd_host_pid(alloc, nspid):
    """The host pid of ALLOC's process that its own PID namespace calls NSPID (the newest, if a
    restarted task left one dying); NSPID itself when no process of ALLOC is in a namespace."""
    env = f"NOMAD_ALLOC_ID={alloc}"
    found = []
    for p in procs():
        if env not in p.environ:
            continue
        try:
            status = open(f"/proc/{p.pid}/status").read()
        except OSError:
            continue
        ns = next((l.split()[1:] for l in status.splitlines() if l.startswith("NSpid:")), [])
        if len(ns) > 1 and ns[-1] == str(nspid):
            found.append((p.starttime, p.pid))
    print(max(found)[1] if found else nspid)


def cmd_record(alloc, alloc_dir, pids_file, cgroups_file):
    """Append `PID STARTTIME` of ALLOC's processes to PIDS_FILE and their task cgroup directories
    (under a hierarchy's /nomad/, not Nomad's shared cpuset partitions) to CGROUPS_FILE."""
    me = os.getsid(0)
    env = f"NOMAD_ALLOC_ID={alloc}"
    with open(pids_file, "a") as pf, open(cgroups_file, "a") as cf:
        for p in procs():
            if p.sid == me or not (env in p.environ or p.refers_to(alloc_dir)
                                   or alloc in " ".join(p.argv)):
                continue
            pf.write(f"{p.pid} {p.starttime}\n")
            for cg in cgroup_dirs(p.pid):
                if "/nomad/" in cg and cg.rsplit("/", 1)[1] not in SHARED_CPUSETS:
                    cf.write(cg + "\n")


SHARED_CPUSETS = ("share", "shared", "reserve", "reserved")


def cmd_alive_list():
    """Read `PID STARTTIME` lines on stdin; print `PID PPID STATE STARTTIME ARGV` of those that
    are still the same live process."""
    for line in sys.stdin:
        parts = line.split()
        if len(parts) < 2:
            continue
        try:
            p = Proc(int(parts[0]))
        except (OSError, ValueError, IndexError):
            continue
        if p.state not in ("Z", "X") and p.starttime == parts[1]:
            print(p.line())


def cmd_leftovers(work):
    """Lines `PID PPID STATE STARTTIME ARGV` of live processes outside this session that use
    WORK (binary, argv, cwd, open files or environment)."""
    me = os.getsid(0)
    for p in procs():
        if p.sid == me:
            continue
        if p.exe.startswith(work) or p.refers_to(work) or any(work in e for e in p.environ):
            print(p.line())


def cgroup_dirs(pid):
    """The cgroup directories (one per v1 hierarchy) of PID, as /sys/fs/cgroup paths."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if path != "/" and controllers:
            out.append(f"/sys/fs/cgroup/{controllers.split(',')[0].removeprefix('name=')}{path}")
    return out


def cmd_alive(pid, starttime):
    """Exit 0 iff PID is alive (not a zombie) and still the process started at STARTTIME."""
    try:
        p = Proc(int(pid))
    except (OSError, ValueError, IndexError):
        return 1
    return 0 if p.state not in ("Z", "X") and p.starttime == starttime else 1


def cmd_starttime(pid):
    try:
        print(Proc(int(pid)).starttime)
    except (OSError, ValueError, IndexError):
        return 1
    return 0


def cmd_tree(pid, *prune):
    """PID and its live descendants, deepest first, leaving out the subtrees of PRUNE pids."""
    children = {}
    for p in procs():
        children.setdefault(p.ppid, []).append(p.pid)
    out, skip = [], {int(x) for x in prune if x.isdigit()}

    def walk(n):
        if n in skip:
            return
        for c in children.get(n, []):
            walk(c)
        out.append(n)
    walk(int(pid))
    print(" ".join(map(str, out)))


# ---------------------------------------------------------------- processes we start

def cmd_pty(rows, cols, timeout, *argv):
    """Run ARGV on a new PTY of ROWS x COLS; print what it wrote; exit with its status."""
    import fcntl
    import pty
    import struct
    import termios
    pid, fd = pty.fork()
    if pid == 0:
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", int(rows), int(cols), 0, 0))
        os.execvp(argv[0], list(argv))
    out, deadline = b"", time.monotonic() + float(timeout)
    while True:
        left = deadline - time.monotonic()
        ready = select.select([fd], [], [], max(left, 0))[0] if left > 0 else []
        if not ready:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            sys.stdout.write(out.decode(errors="replace"))
            return 124
        try:
            data = os.read(fd, 4096)
        except OSError:  # EIO: the other side is closed
            break
        if not data:
            break
        out += data
    _, status = os.waitpid(pid, 0)
    sys.stdout.write(out.decode(errors="replace"))
    return os.waitstatus_to_exitcode(status)


def cmd_probe(binary, tmpdir, timeout="10"):
    """Start BINARY as Nomad's plugin loader does (no arguments, Nomad's cookie, protocol 2) and
    read its first stdout line: a go-plugin handshake => print it, exit 0; else print why, exit 1.
    The probe process group is killed either way."""
    env = dict(os.environ, NOMAD_PLUGIN_MAGIC_COOKIE=NOMAD_COOKIE, PLUGIN_PROTOCOL_VERSIONS="2",
               PLUGIN_MIN_PORT="10000", PLUGIN_MAX_PORT="25000", TMPDIR=tmpdir)
    p = subprocess.Popen([binary], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env, cwd=tmpdir, start_new_session=True)
    line, deadline = b"", time.monotonic() + float(timeout)
    while not line.endswith(b"\n") and time.monotonic() < deadline:
        if select.select([p.stdout], [], [], 0.1)[0]:
            chunk = os.read(p.stdout.fileno(), 4096)
            if not chunk:
                break
            line += chunk
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        _, err = p.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        err = b""
    first = line.split(b"\n")[0].decode(errors="replace")
    if re.match(r"^1\|\d+\|(unix|tcp)\|[^|]+\|grpc", first):
        print(first)
        return 0
    err_line = next((ln for ln in err.decode(errors="replace").splitlines() if ln.strip()), "")
    print(f"printed no go-plugin handshake (stdout {first[:80]!r}, exit status "
          f"{p.returncode}, stderr {err_line[:160]!r})")
    return 1


def cmd_driver_health(name):
    """Read `nomad node status -self -json` on stdin: exit 0 if driver NAME is detected and
    healthy, else print why not and exit 1."""
    d = json.load(sys.stdin)
    x = (d.get("Drivers") or {}).get(name)
    if not x:
        print(f"the agent reports no driver {name!r} (not fingerprinted)")
        return 1
    if x.get("Detected") and x.get("Healthy"):
        return 0
    print(f"the agent reports driver {name!r} detected={x.get('Detected')} "
          f"healthy={x.get('Healthy')}: {x.get('HealthDescription') or 'no description'}")
    return 1


def cmd_launch(log, *argv):
    """exec ARGV in a new session, stdin /dev/null, stdout+stderr appended to LOG, SIGINT and
    SIGQUIT at their defaults (a background bash job has them ignored) and no inherited fds."""
    os.setsid()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)
    null = os.open("/dev/null", os.O_RDONLY)
    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.closerange(3, 1 << 16)
    os.execvp(argv[0], list(argv))


def cmd_free_ports(n):
    import socket
    socks = []
    for _ in range(int(n)):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    print(" ".join(str(s.getsockname()[1]) for s in socks))


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    fn = globals().get("cmd_" + sys.argv[1].replace("-", "_"))
    if fn is None:
        sys.exit(f"e2e.py: unknown command {sys.argv[1]!r}")
    sys.exit(fn(*sys.argv[2:]) or 0)


if __name__ == "__main__":
    main()
