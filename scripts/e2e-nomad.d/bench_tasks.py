#!/usr/bin/env python3
"""Helpers of scripts/bench-nomad-tasks (memory per task under one Nomad agent): the node's free
capacity, the wait for every task to run, one /proc pass that finds each allocation's helper
processes and reads their memory, and the markdown report. Reuses e2e.py (same directory) for
Nomad's HTTP API and /proc. Standard library only.

Usage: bench_tasks.py COMMAND ARGS...  (see the functions named cmd_*).
"""
import json
import os
import re
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e  # noqa: E402

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


# ---------------------------------------------------------------- the node and the jobs

def cmd_capacity(per_cpu, per_mem, per_disk):
    """Read `nomad node status -self -json` on stdin; print `TASKS CPU MEM DISK`: how many tasks of
    PER_CPU MHz, PER_MEM MB and PER_DISK MB the node can place (total minus reserved), then the
    free totals."""
    d = json.load(sys.stdin)
    nr, rr = d.get("NodeResources") or {}, d.get("ReservedResources") or {}
    res, rsv = d.get("Resources") or {}, d.get("Reserved") or {}  # before 0.9's NodeResources

    cpu = (nr.get("Cpu") or {}).get("CpuShares") or res.get("CPU") or 0
    mem = (nr.get("Memory") or {}).get("MemoryMB") or res.get("MemoryMB") or 0
    disk = (nr.get("Disk") or {}).get("DiskMB") or res.get("DiskMB") or 0
    cpu -= (rr.get("Cpu") or {}).get("CpuShares") or rsv.get("CPU") or 0
    mem -= (rr.get("Memory") or {}).get("MemoryMB") or rsv.get("MemoryMB") or 0
    disk -= (rr.get("Disk") or {}).get("DiskMB") or rsv.get("DiskMB") or 0
    fit = min(cpu // int(per_cpu), mem // int(per_mem), disk // int(per_disk))
    print(int(fit), int(cpu), int(mem), int(disk))


def cmd_wait_running(timeout, count, *jobs):
    """Poll the allocations of JOBS until each job has COUNT allocations whose task `t` runs
    (exit 0, print the alloc ids as `JOB ALLOC` lines); an allocation failed, or the timeout:
    say why on stderr, exit 1. Progress on stderr every 10 s."""
    deadline, count = time.monotonic() + float(timeout), int(count)
    t0 = last_note = time.monotonic()
    while True:
        running, problems, seen = {}, [], {}
        try:
            for job in jobs:
                allocs = e2e.api(f"v1/job/{job}/allocations")
                ok = [a for a in allocs if a.get("ClientStatus") == "running"
                      and ((a.get("TaskStates") or {}).get("t") or {}).get("State") == "running"]
                running[job] = [a["ID"] for a in ok]
                seen[job] = len(allocs)
                for a in allocs:
                    if a.get("ClientStatus") in ("failed", "lost") or a.get("DesiredStatus") == "stop":
                        problems.append(f"{job} alloc {a['ID'][:8]}: {e2e.describe(e2e.api('v1/allocation/' + a['ID']))}")
        except Exception as e:  # agent busy: try again
            problems, running = [], {j: [] for j in jobs}
            note = f"{type(e).__name__}: {e}"
        else:
            note = ", ".join(f"{j}: {len(running[j])}/{count} running ({seen[j]} allocs)" for j in jobs)
        if problems:
            print("bench-nomad-tasks: " + "; ".join(problems[:3]), file=sys.stderr)
            return 1
        if all(len(running[j]) >= count for j in jobs):
            for j in jobs:
                for a in running[j]:
                    print(j, a)
            print(f"bench-nomad-tasks: all {count * len(jobs)} tasks running after "
                  f"{time.monotonic() - t0:.0f} s", file=sys.stderr)
            return 0
        now = time.monotonic()
        if now > deadline:
            print(f"bench-nomad-tasks: timeout after {timeout} s: {note}", file=sys.stderr)
            return 1
        if now - last_note >= 10:
            print(f"bench-nomad-tasks: {now - t0:.0f} s: {note}", file=sys.stderr)
            last_note = now
        time.sleep(1)


# ---------------------------------------------------------------- /proc

def usage(pid):
    """Memory (kB) and threads of PID: smaps_rollup Pss, Anonymous, Rss; status RssAnon, Threads;
    open fds."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            k, _, rest = line.partition(":")
            if k in ("Rss", "Pss", "Anonymous"):
                out[k.lower()] = int(rest.split()[0])
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, rest = line.partition(":")
            if k == "RssAnon":
                out["rssanon"] = int(rest.split()[0])
            elif k == "Threads":
                out["threads"] = int(rest.split()[0])
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out


def cmd_snapshot(pid):
    """Print usage(PID) as JSON."""
    print(json.dumps(usage(int(pid))))


def start_ms(alloc):
    """Milliseconds from the task's `Task Setup` event to its `Started` event: the agent's
    prestart hooks and the driver's StartTask (the helpers' start, Launch), as the agent saw it."""
    events = (((e2e.api(f"v1/allocation/{alloc}").get("TaskStates") or {}).get("t") or {})
              .get("Events") or [])
    times = {}
    for e in events:
        times.setdefault(e.get("Type"), e.get("Time"))
    if times.get("Task Setup") and times.get("Started"):
        return (times["Started"] - times["Task Setup"]) / 1e6
    return None


# The agent relays the driver's hclog fields in no fixed order.
TASK_FIELD = re.compile(r"\btask=\"?([^\s\"]+)")
ELAPSED_FIELD = re.compile(r"\belapsed_ms=\"?([0-9.eE+-]+)")


def driver_start_ms(agent_log):
    """{alloc: ms} from the driver's `task started ... elapsed_ms=` lines the agent logged: the
    time its StartTask took (helpers started, Launch)."""
    out = {}
    with open(agent_log, errors="replace") as f:
        for line in f:
            if "task started" not in line:
                continue
            t, e = TASK_FIELD.search(line), ELAPSED_FIELD.search(line)
            if t and e:
                try:
                    out[t.group(1).split("/", 1)[0]] = float(e.group(1))
                except ValueError:
                    pass
    return out


def cmd_starts(meas_file, seq_file, agent_log):
    """Add the start figures to MEASURE_JSON (in place): `driver_ms` per goplugin_exec alloc of
    the concurrent jobs, and `sequential`, the one-task jobs of SEQ_FILE (`JOB ALLOC` lines, JOB
    bench-start-rs-N or -go-N) started one after the other: per driver, their Task Setup -> Started
    and (goplugin_exec) the driver's StartTask."""
    with open(meas_file) as f:
        m = json.load(f)
    drv = driver_start_ms(agent_log)
    m["driver_ms"] = {job: {a: drv[a] for a in allocs if a in drv}
                      for job, allocs in m["jobs"].items()}
    seq = {"goplugin_exec": {"setup_ms": [], "driver_ms": []}, "raw_exec": {"setup_ms": []}}
    with open(seq_file) as f:
        for line in f:
            job, alloc = line.split()
            kind = "goplugin_exec" if "-rs-" in job else "raw_exec"
            try:
                ms = start_ms(alloc)
            except Exception:
                ms = None
            if ms is not None:
                seq[kind]["setup_ms"].append(ms)
            if kind == "goplugin_exec" and alloc in drv:
                seq[kind]["driver_ms"].append(drv[alloc])
    m["sequential"] = seq
    with open(meas_file, "w") as f:
        json.dump(m, f)


def cmd_measure(allocs_file, nomad_exe, plugin_exe, agent_pid, pids_file, cgroups_file):
    """One pass over /proc. ALLOCS_FILE: `JOB ALLOC` lines. Helpers: processes of NOMAD_EXE or
    PLUGIN_EXE with argv[1] executor/logmon/task-helper; each belongs to the one allocation whose id appears
    in its argv, cwd or open files. Drivers: PLUGIN_EXE without arguments. Print JSON: per job,
    per alloc, its helpers with usage(); the drivers; the agent; the agent's children by kind;
    helpers matching no or several allocs. Also appends `PID STARTTIME` of every process of an
    allocation (helpers and tasks) to PIDS_FILE and their task cgroups to CGROUPS_FILE, for the
    cleanup."""
    job_of = {}
    with open(allocs_file) as f:
        for line in f:
            job, alloc = line.split()
            job_of[alloc] = job
    exes = {e2e.real(nomad_exe), e2e.real(plugin_exe)}
    plugin = e2e.real(plugin_exe)
    agent_pid = int(agent_pid)
    out = {"jobs": {}, "drivers": [], "stray": [], "agent_children": {}}
    for job in set(job_of.values()):
        out["jobs"][job] = {}
    for alloc, job in job_of.items():
        out["jobs"][job][alloc] = []
    all_procs = list(e2e.procs())
    with open(pids_file, "a") as pf, open(cgroups_file, "a") as cf:
        for p in all_procs:
            role = p.role(exes, plugin)
            text = " ".join(p.argv) + " " + p.cwd + " " + " ".join(p.fds)
            ids = set(UUID.findall(text)) & job_of.keys()
            env_ids = {e.split("=", 1)[1] for e in p.environ if e.startswith("NOMAD_ALLOC_ID=")}
            if ids or env_ids & job_of.keys():
                pf.write(f"{p.pid} {p.starttime}\n")
                for cg in e2e.cgroup_dirs(p.pid):
                    if "/nomad/" in cg and cg.rsplit("/", 1)[1] not in e2e.SHARED_CPUSETS:
                        cf.write(cg + "\n")
            if p.ppid == agent_pid:
                kind = (os.path.basename(p.exe) + " " + " ".join(p.argv[1:2])).strip()
                out["agent_children"][kind] = out["agent_children"].get(kind, 0) + 1
            if role is None:
                continue
            try:
                rec = {"pid": p.pid, "ppid": p.ppid, "role": role,
                       "bin": "goplugin" if p.exe == plugin else "nomad", **usage(p.pid)}
            except OSError:
                continue
            if role == "driver":
                out["drivers"].append(rec)
            elif len(ids) == 1:
                alloc = ids.pop()
                out["jobs"][job_of[alloc]][alloc].append(rec)
            else:
                rec["allocs"] = sorted(ids)
                rec["argv"] = " ".join(p.argv)[:200]
                out["stray"].append(rec)
    out["agent"] = usage(agent_pid)
    out["start_ms"] = {job: {} for job in out["jobs"]}
    for alloc, job in job_of.items():
        try:
            ms = start_ms(alloc)
        except Exception:  # agent busy: that task has no figure
            ms = None
        if ms is not None:
            out["start_ms"][job][alloc] = ms
    out["time"] = time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime())
    print(json.dumps(out))


# ---------------------------------------------------------------- the report

METRICS = [("pss", "PSS (smaps_rollup `Pss`)"),
           ("anonymous", "Anonymous memory (smaps_rollup `Anonymous`)"),
           ("rssanon", "RssAnon (status)"),
           ("rss", "RSS (smaps_rollup `Rss`)"),
           ("threads", "Threads")]
TARGETED = {"pss", "anonymous", "threads"}  # the issue: "sum PSS, anonymous memory and threads"


def mib(kb):
    v = kb / 1024
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def fmt(metric, v):
    if metric == "fds":
        return f"{v:.0f}"
    return f"{v:.1f}" if metric == "threads" else f"{mib(v)} MiB"


def ms_cell(vals):
    q = statistics.quantiles(vals, n=10, method="inclusive") if len(vals) > 1 else [vals[0]] * 9
    return (f"**{statistics.median(vals):.0f} ms** (p10 {q[0]:.0f}, p90 {q[8]:.0f}; "
            f"{min(vals):.0f}–{max(vals):.0f})")


def per_task(allocs, metric):
    return [sum(h[metric] for h in hs) for hs in allocs.values()]


def cell(metric, vals, extra=0.0):
    vals = [v + extra for v in vals]
    med, mean = statistics.median(vals), statistics.fmean(vals)
    return (f"**{fmt(metric, med)}** (mean {fmt(metric, mean)}; {fmt(metric, min(vals))}–"
            f"{fmt(metric, max(vals))})"), med, mean


def composition(allocs):
    """`1 nomad executor + 1 nomad logmon` (the most common set of helpers of an alloc), and how
    many allocs had another set."""
    sets = {}
    for hs in allocs.values():
        key = tuple(sorted(f"{h['bin']} {h['role']}" for h in hs))
        sets[key] = sets.get(key, 0) + 1
    common = max(sets, key=sets.get) if sets else ()
    text = " + ".join(f"{common.count(k)} `{k}`" for k in sorted(set(common))) or "none"
    others = {k: n for k, n in sets.items() if k != common}
    return text, others


def machine():
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1])
    u = os.uname()
    return f"{os.cpu_count()} CPUs, {mem / 1048576:.0f} GiB, Linux {u.release}"


def cmd_report(meas_file, meta_file):
    """Print the markdown section from the measure JSON and the run's meta JSON."""
    with open(meas_file) as f:
        m = json.load(f)
    with open(meta_file) as f:
        meta = json.load(f)
    go, rs = m["jobs"][meta["go_job"]], m["jobs"][meta["rust_job"]]
    n_go, n_rs = len(go), len(rs)
    drivers = m["drivers"]
    drv = {k: sum(d[k] for d in drivers) for k, _ in METRICS}
    L = []
    w = L.append
    form = meta.get("helpers") or "default"
    w(f"## Per task under one Nomad agent: {n_rs} `goplugin_exec` (`helpers = \"{form}\"`) and "
      f"{n_go} `raw_exec` tasks, Nomad v{meta['version']}")
    w("")
    w(f"Generated by `scripts/bench-nomad-tasks` on {m['time']}. One agent ({meta['nomad_bin']}, "
      f"server and client, loopback), all {n_go + n_rs} `sleep 3600` service tasks running at once "
      f"(`cpu = {meta['cpu']}`, `memory = {meta['mem']}`), measured {meta['settle']} s after the last "
      f"one started (all running after {meta['start_secs']} s). goplugin: "
      f"`{meta['goplugin_bin']}` ({meta['goplugin_kind']} build, {meta['goplugin_mib']} MiB), copied "
      f"as `plugin_dir/goplugin_exec`. Machine: {machine()}.")
    if meta.get("note"):
        w("")
        w(meta["note"])
    w("")
    go_set, go_other = composition(go)
    rs_set, rs_other = composition(rs)
    w("Each cell: **median** over the tasks (mean; min–max) of the sum over that task's helper "
      f"processes: raw_exec {go_set}, goplugin_exec {rs_set}. Rust/Go = ratio of the medians "
      "(of the means in brackets). \"+ driver/N\": the goplugin_exec driver process, shared by all "
      f"its tasks, divided by {n_rs} and added to each task.")
    w("")
    w("| Metric, per task | raw_exec (Go helpers) | goplugin_exec (Rust helpers) | Rust/Go | Target | Met |")
    w("|---|---|---|---|---|---|")
    verdicts = []
    for key, name in METRICS:
        gc, gmed, gmean = cell(key, per_task(go, key))
        for extra, label in ((0.0, ""), (drv[key] / max(n_rs, 1), " + driver/N")):
            if label and (not drivers or key not in TARGETED):
                continue
            rc, rmed, rmean = cell(key, per_task(rs, key), extra)
            ratio = rmed / gmed if gmed else float("nan")
            ratio_mean = rmean / gmean if gmean else float("nan")
            if key in TARGETED:
                met = "yes" if ratio <= 0.1 else "no"
                target = "≤ 0.1"
                verdicts.append(f"{name.split(' (')[0]}{label}: {ratio:.3f} {met}")
            else:
                met, target = "–", "(context)"
            w(f"| {name}{label} | {gc} | {rc} | {ratio:.3f} ({ratio_mean:.3f}) | {target} | {met} |")
    for key, name in (("fds", "Open fds"),):
        gc, gmed, _ = cell(key, per_task(go, key))
        rc, rmed, _ = cell(key, per_task(rs, key))
        w(f"| {name} | {gc} | {rc} | {rmed / gmed if gmed else float('nan'):.3f} | (context) | – |")
    lat = m.get("start_ms") or {}
    lg, lr = list((lat.get(meta["go_job"]) or {}).values()), list((lat.get(meta["rust_job"]) or {}).values())
    if lg and lr:
        w(f"| Task Setup → Started (prestart hooks + StartTask), all {n_go + n_rs} starting at once | "
          f"{ms_cell(lg)} | {ms_cell(lr)} | {statistics.median(lr) / statistics.median(lg):.3f} | (context) | – |")
    seq = m.get("sequential") or {}
    sg, sr = (seq.get("raw_exec") or {}).get("setup_ms"), (seq.get("goplugin_exec") or {}).get("setup_ms")
    if sg and sr:
        w(f"| Task Setup → Started, one task at a time ({len(sr)} + {len(sg)} one-task jobs) | "
          f"{ms_cell(sg)} | {ms_cell(sr)} | {statistics.median(sr) / statistics.median(sg):.3f} | (context) | – |")
    dr = list(((m.get("driver_ms") or {}).get(meta["rust_job"]) or {}).values())
    ds = (seq.get("goplugin_exec") or {}).get("driver_ms")
    if dr:
        w(f"| goplugin_exec's StartTask (its log), all starting at once | – | {ms_cell(dr)} | – | (context) | – |")
    if ds:
        w(f"| goplugin_exec's StartTask (its log), one task at a time | – | {ms_cell(ds)} | – | (context) | – |")
    w("")
    w("Per helper process (median over the tasks):")
    w("")
    w("| Helper | PSS | Anonymous | RSS | Threads | fds |")
    w("|---|---|---|---|---|---|")
    for allocs in (go, rs):
        by = {}
        for hs in allocs.values():
            for h in hs:
                by.setdefault(f"{h['bin']} {h['role']}", []).append(h)
        for k in sorted(by, key=lambda k: (k.split()[1] != "executor", k)):
            hs = by[k]

            def med(key):
                return statistics.median(h[key] for h in hs)
            w(f"| `{k}` ({len(hs)}) | {mib(med('pss'))} MiB | {mib(med('anonymous'))} MiB | "
              f"{mib(med('rss'))} MiB | {med('threads'):g} | {med('fds'):g} |")
    w("")
    if drivers:
        d_text = ", ".join(f"pid {d['pid']}" for d in drivers)
        w(f"The goplugin_exec driver ({len(drivers)} process{'es' if len(drivers) > 1 else ''}: "
          f"{d_text}; child of the agent), shared by its {n_rs} tasks: PSS {mib(drv['pss'])} MiB, "
          f"anonymous {mib(drv['anonymous'])} MiB, RssAnon {mib(drv['rssanon'])} MiB, RSS "
          f"{mib(drv['rss'])} MiB, {drv['threads']} threads, {sum(d['fds'] for d in drivers)} fds; "
          f"per task {mib(drv['pss'] / n_rs)} MiB PSS, {mib(drv['anonymous'] / n_rs)} MiB "
          f"anonymous, {drv['threads'] / n_rs:.2f} threads.")
    else:
        w("No goplugin_exec driver process was found.")
    w("")
    a0, a1 = meta["agent_ready"], m["agent"]
    w(f"The agent itself (context; it also hosts raw_exec and every task's task runner): PSS "
      f"{mib(a0['pss'])} MiB when ready, {mib(a1['pss'])} MiB with the {n_go + n_rs} tasks "
      f"(anonymous {mib(a0['anonymous'])} → {mib(a1['anonymous'])} MiB, RSS {mib(a0['rss'])} → "
      f"{mib(a1['rss'])} MiB, threads {a0['threads']} → {a1['threads']}; of the Nomad binary's "
      "pages its PSS holds a share that shrinks as the raw_exec helpers map them too).")
    w("")
    fds_go = statistics.median(per_task(go, "fds"))
    fds_rs = statistics.median(per_task(rs, "fds"))
    kids = ", ".join(f"{n} `{k}`" for k, n in sorted(m["agent_children"].items()))
    w(f"Open fds per task (median): raw_exec {fds_go:.0f}, goplugin_exec {fds_rs:.0f}. "
      f"The agent's children at the measurement: {kids}.")
    agent_pid = meta["agent_pid"]
    driver_pids = {d["pid"] for d in drivers}
    go_par = {h["ppid"] for hs in go.values() for h in hs}
    rs_par = {h["ppid"] for hs in rs.values() for h in hs}
    w("")
    w("Parents: " + (f"every raw_exec helper is a child of the agent (pid {agent_pid})"
                     if go_par == {agent_pid} else f"raw_exec helpers' parents: {sorted(go_par)}")
      + "; " + (f"every goplugin_exec helper is a child of the driver (pid "
                f"{', '.join(map(str, sorted(rs_par)))})" if rs_par and rs_par <= driver_pids
                else f"goplugin_exec helpers' parents: {sorted(rs_par)}") + ".")
    odd = []
    for name, other in (("raw_exec", go_other), ("goplugin_exec", rs_other)):
        for k, n in other.items():
            odd.append(f"{n} {name} task(s) with helpers {' + '.join(k) or 'none'}")
    for s in m["stray"]:
        odd.append(f"helper pid {s['pid']} ({s['bin']} {s['role']}) matched allocs {s['allocs'] or 'none'}")
    if odd:
        w("")
        w("Not as expected: " + "; ".join(odd) + ".")
    w("")
    w("How: the helpers of a task are the processes of the agent's Nomad binary or of the plugin "
      "binary whose argv[1] is `executor`, `logmon` or `task-helper` and whose argv, cwd or open files name the "
      "task's allocation id (the executor's argv JSON holds its log file in the alloc dir, the "
      "logmon has the task's FIFOs and log files open). PSS splits each shared page among all "
      "processes mapping it: the Nomad binary's pages are shared by the agent and the raw_exec "
      "helpers, the plugin's by the driver and the goplugin helpers (both binaries are private "
      "copies in the run's work dir, so no other process on the machine shares them). "
      "The start figures: the time between the task's `Task Setup` and `Started` events in the "
      "agent's API (Nomad's prestart hooks, then the driver's StartTask: helpers started, Launch), "
      "for the tasks above (every task of both jobs placed at the same moment on this machine's "
      "CPUs) and for one-task jobs started one after the other afterwards; and goplugin_exec's "
      "StartTask alone, from the `elapsed_ms` of the driver's `task started` log line. "
      f"Reproduce: `NOMAD_BIN={meta['nomad_bin']} scripts/bench-nomad-tasks --tasks {meta['tasks_asked']} "
      f"--helpers {form}`.")
    print("\n".join(L))
    print("bench-nomad-tasks: " + "; ".join(verdicts), file=sys.stderr)


def cmd_compare(sep_meas, sep_meta, comb_meas, comb_meta):
    """Print the section comparing goplugin_exec's two helper forms, from the measure and meta
    JSON of one run per form (same Nomad binary, same task count)."""
    runs = {}
    for form, mf, tf in (("separate", sep_meas, sep_meta), ("combined", comb_meas, comb_meta)):
        with open(mf) as f:
            m = json.load(f)
        with open(tf) as f:
            meta = json.load(f)
        allocs = m["jobs"][meta["rust_job"]]
        drv = {k: sum(d[k] for d in m["drivers"]) for k in ("pss", "anonymous", "threads", "fds")}
        lat = list(((m.get("start_ms") or {}).get(meta["rust_job"]) or {}).values())
        lat_go = list(((m.get("start_ms") or {}).get(meta["go_job"]) or {}).values())
        runs[form] = (m, meta, allocs, drv, lat, lat_go)
    _, meta, _, _, _, _ = runs["combined"]
    n = len(runs["combined"][2])
    L = []
    w = L.append
    w(f"## goplugin_exec's helper forms under one Nomad agent: one process per task "
      f"(`helpers = \"combined\"`) vs two (`\"separate\"`), Nomad v{meta['version']}")
    w("")
    w(f"Generated by `scripts/bench-nomad-tasks --helpers separate,combined` on "
      f"{runs['combined'][0]['time']}: the same run as the two sections below it, one agent per "
      f"form ({meta['nomad_bin']}, server and client, loopback, fresh data dir), each running {n} "
      f"`sleep 3600` tasks under goplugin_exec next to {n} under raw_exec, measured "
      f"{meta['settle']} s after the last one started, then one-task jobs started one at a time "
      f"(the start figures \"one task at a time\"). goplugin: `{meta['goplugin_bin']}` "
      f"({meta['goplugin_kind']} build). Machine: {machine()}.")
    w("")
    w("Each cell: **median** over the tasks (mean; min–max) of the sum over the task's helper "
      "processes (separate: `goplugin executor` + `goplugin logmon`; combined: one `goplugin "
      "task-helper`). \"+ driver/N\": the driver process, shared by all tasks, divided by the "
      "task count and added to each task. Ratio = combined median / separate median.")
    w("")
    w("| Metric, per task | separate (two helpers) | combined (one helper) | combined/separate |")
    w("|---|---|---|---|")
    rows = [("pss", "PSS"), ("anonymous", "Anonymous memory"), ("threads", "Threads"),
            ("fds", "Open fds"), ("rss", "RSS (context)")]
    for key, name in rows:
        for with_driver in (False, True):
            if with_driver and key == "rss":
                continue
            cells, meds = [], []
            for form in ("separate", "combined"):
                _, _, allocs, drv, _, _ = runs[form]
                extra = drv[key] / max(len(allocs), 1) if with_driver else 0.0
                c, med, _ = cell(key, per_task(allocs, key), extra)
                cells.append(c)
                meds.append(med)
            label = name + (" + driver/N" if with_driver else "")
            w(f"| {label} | {cells[0]} | {cells[1]} | {meds[1] / meds[0] if meds[0] else float('nan'):.3f} |")
    procs = []
    for form in ("separate", "combined"):
        allocs = runs[form][2]
        procs.append(statistics.median(len(hs) for hs in allocs.values()))
    w(f"| Helper processes | {procs[0]:g} | {procs[1]:g} | {procs[1] / procs[0]:.3f} |")
    def seq_of(form, kind, key):
        return ((runs[form][0].get("sequential") or {}).get(kind) or {}).get(key) or []

    def conc_driver(form):
        m, meta = runs[form][0], runs[form][1]
        return list(((m.get("driver_ms") or {}).get(meta["rust_job"]) or {}).values())

    for label, a, b in (
            ("StartTask in the driver (its `task started` log line), one task at a time",
             seq_of("separate", "goplugin_exec", "driver_ms"), seq_of("combined", "goplugin_exec", "driver_ms")),
            ("Task Setup → Started events, one task at a time",
             seq_of("separate", "goplugin_exec", "setup_ms"), seq_of("combined", "goplugin_exec", "setup_ms")),
            (f"StartTask in the driver, all {2 * n} tasks of the run starting at once",
             conc_driver("separate"), conc_driver("combined"))):
        if a and b:
            w(f"| {label} | {ms_cell(a)} | {ms_cell(b)} | {statistics.median(b) / statistics.median(a):.3f} |")
    ls, lc = runs["separate"][4], runs["combined"][4]
    if ls and lc:
        w(f"| Task Setup → Started events, all {2 * n} starting at once | {ms_cell(ls)} | {ms_cell(lc)} | "
          f"{statistics.median(lc) / statistics.median(ls):.3f} |")
        gs, gc = runs["separate"][5], runs["combined"][5]
        if gs and gc:
            w(f"| the same for the raw_exec tasks started alongside (context: the load) | "
              f"{ms_cell(gs)} | {ms_cell(gc)} | {statistics.median(gc) / statistics.median(gs):.3f} |")
    w("")
    print("\n".join(L))


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    fn = globals().get("cmd_" + sys.argv[1].replace("-", "_"))
    if fn is None:
        sys.exit(f"bench_tasks.py: unknown command {sys.argv[1]!r}")
    sys.exit(fn(*sys.argv[2:]) or 0)


if __name__ == "__main__":
    main()
