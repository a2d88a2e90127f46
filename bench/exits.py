#!/usr/bin/env python3
"""Exits per operation: what hardware assistance trades against software.

For each nanobench operation (syscall, sysenter, in, cr8wr = TPR write,
call/ret, pgfault, divzero, ptemod) this counts, per operation, what the
monitor had to do, from the counters `modevisor run --stats --json` reports
when the real nanobench guest is booted through the real CLI:

  bt-swmmu   hidden page faults, traced page-table writes, true faults
             reflected, emulated instructions, monitor entries  (this machine)
  hv-swmmu   VM exits handled in modevisor (userspace, by kind) and VM exits
             KVM handled in the kernel (its binary stats fd)      (kvm_amd npt=0)
  hv-hwmmu   the same                                             (kvm_amd npt=1)

Counts are isolated by a differential: for each op the guest runs with
`only=<op> count=N trials=1` for several N, and `only=none` (the empty-loop
baselines alone) for the same N; per op = the increase of (op run - none
run) per extra iteration, for each pair of consecutive N.  A count is
reported as exact when every pair gives the same integer; otherwise the
table marks it and the JSON keeps the per-pair values.  Every raw counter of
every run is written to the results JSON.

The HV plugins need a usable KVM.  Where this machine has none, the two HV
columns are measured inside the nested KVM test host (scripts/kvm-host: QEMU
TCG emulating an AMD EPYC with SVM, kvm_amd npt=1 and npt=0).  Only counts
are reported: times inside that emulated host say nothing about hardware.

Usage: bench/run.sh --suite exits [options]   (or python3 bench/exits.py)
See bench/README.md, section 4.
"""
import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from fractions import Fraction

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import bench  # noqa: E402  (the Modevisor runner, JSON parsing, table printing)

OPS = ["syscall", "sysenter", "in", "cr8wr", "call/ret", "pgfault", "divzero", "ptemod"]
BASELINE = "none"  # nanobench only=none: only the empty-loop baselines run
PLUGINS = [("bt-swmmu", "BT"), ("hv-swmmu", "HV"), ("hv-hwmmu", "HWMMU")]
MODE_OF = dict(PLUGINS)
NPT_OF = {"hv-hwmmu": "1", "hv-swmmu": "0"}  # kvm_amd npt setting each HV plugin needs

# Counters driven by wall-clock time, not by the guest's instructions: they
# are kept in the raw data but never reported as per-op counts.
TIME_DRIVEN = {
    "bt.irq_check_exits": "the engine's 1 ms host timer makes the next block entry leave translated code",
    "kvm.interrupted": "KVM_RUN returned EINTR (the session kicked the vCPU thread)",
    "kvm.kernel.irq_exits": "host interrupts (the L1 kernel's timer) exit the guest",
    "kvm.kernel.preemption_reported": "the vCPU thread was preempted",
    "kvm.kernel.preemption_other": "the vCPU thread was preempted",
    "kvm.kernel.host_state_reload": "includes reloads after preemption",
    "kvm.kernel.fpu_reload": "includes reloads after preemption",
    "kvm.kernel.halt_exits": "HLT polling",
    "kvm.kernel.halt_wakeup": "HLT polling",
    "kvm.kernel.halt_successful_poll": "HLT polling",
    "kvm.kernel.halt_attempted_poll": "HLT polling",
    "kvm.kernel.halt_poll_invalid": "HLT polling",
    "kvm.kernel.halt_poll_success_ns": "nanoseconds",
    "kvm.kernel.halt_poll_fail_ns": "nanoseconds",
    "kvm.kernel.halt_wait_ns": "nanoseconds",
    "kvm.kernel.blocking": "HLT blocking",
    "kvm.kernel.signal_exits": "signals to the vCPU thread",
    "kvm.kernel.request_irq_exits": "the session asked for an interrupt window",
    "kvm.kernel.directed_yield_attempted": "spin-loop yields",
    "kvm.kernel.directed_yield_successful": "spin-loop yields",
}

# Counters that include a time-driven part; the exact part is a derived.* counter.
TIME_AFFECTED = {
    "bt.dispatcher_lookups": "one extra pass per timer poll exit (derived.bt.translated_code_exits leaves them out)",
    "bt.translation_cache_hits": "one extra lookup hit per timer poll exit",
    "kvm.kernel.exits": "includes irq_exits (derived.kvm.kernel_handled_exits leaves them out)",
}

# The userspace exit kinds modevisor's kernel-driver counts (kvm.exits is
# their sum); apic_mmio and apic_tpr_write classify mmio exits further.
USER_EXIT_KINDS = ["io_in", "io_out", "io_string", "mmio_read", "mmio_write", "hlt", "irq_window_open", "set_tpr",
                   "shutdown", "internal_error", "fail_entry", "other"]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def derived(counters):
    """Counters computed from one run's raw counters (added under 'derived.')."""
    c, d = counters, {}
    if "bt.dispatcher_lookups" in c:
        # The dispatcher makes one pass (one lookup) per exit from translated
        # code and one per instruction it emulates (a special block).  Exits
        # for the 1 ms timer poll are time-driven: left out.  A hidden fault
        # is handled in the SIGSEGV handler, which resumes translated code
        # without a dispatcher pass: added.  Together: the times the monitor
        # took control from the guest for this guest's own instructions.
        tc_exits = c["bt.dispatcher_lookups"] - c.get("bt.special_exits", 0) - c.get("bt.irq_check_exits", 0)
        d["derived.bt.translated_code_exits"] = tc_exits
        d["derived.bt.monitor_entries"] = tc_exits + c.get("swmmu.hidden_faults", 0)
    if "kvm.exits" in c and "kvm.kernel.exits" in c:
        # KVM's own count of VM exits, less the host-interrupt exits (time-driven)
        # and less the exits it passed to modevisor: the exits KVM handled itself
        d["derived.kvm.kernel_handled_exits"] = (c["kvm.kernel.exits"] - c.get("kvm.kernel.irq_exits", 0)
                                                 - c["kvm.exits"])
    return d


# ------------------------------------------------------------------ measuring
def run_keys(counts, repeat):
    """(key, N) of every run per op: each N once, the first N `repeat` times in all
    (keys "N", and "N#2", "N#3", ... for the repeats)."""
    keys = [(str(n), n) for n in counts]
    keys[1:1] = [("%d#%d" % (counts[0], i), counts[0]) for i in range(2, repeat + 1)]
    return keys


def measure(exe, plugin, work_dir, elf, counts, ops, timeout, repeat):
    """Boot nanobench through `modevisor run --stats --json` under one plugin
    for every (op, N) and (none, N).  Returns {op: {N: run}} with the raw
    counters of every run, and whether every run passed its checks."""
    mv = bench.Modevisor(exe, MODE_OF[plugin], plugin, work_dir)
    runs, ok = {}, True
    for op in ops + [BASELINE]:
        runs[op] = {}
        for key, n in run_keys(counts, repeat):
            cmdline = "only=%s count=%d trials=1" % (op, n)
            log("exits: %-8s %s" % (plugin, cmdline))
            r = mv.run_elf(elf, "nanobench", cmdline, timeout, stats=True, tag="exits")
            run = {"cmdline": cmdline, "ok": r.ok, "exit_status": r.status, "seconds": round(r.seconds, 3)}
            if r.ok:
                # the guest must report exactly N iterations (and N handler entries)
                line = bench.parse_nano(r.text).get(op)
                if op == BASELINE:
                    pass
                elif line is None:
                    run.update(ok=False, note="no 'nb %s' line in the transcript" % op)
                elif "skipped" in line:
                    run["skipped"] = line["skipped"]
                elif line["iterations"] != n or (line["handler"] is not None and line["handler"] != n):
                    run.update(ok=False, note="guest reports %s, not %d iterations" % (line, n))
            else:
                run["note"] = r.note
            if not run["ok"]:
                run["console_tail"] = r.text[-600:]
                ok = False
            run["counters"] = r.counters
            runs[op][key] = run
            if r.note and r.note.startswith(("not runnable yet", "no monitor mode")):
                return runs, False  # the plugin refuses: no point in more runs
    return runs, ok


def runnable_here(exe, work_dir):
    """{plugin: None if it runs on this host, else why not} from `modevisor plugins --json`."""
    p = subprocess.run([exe, "--json", "--log-dir", os.path.join(work_dir, "logs"), "plugins"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        info = json.loads(p.stdout.decode())
    except ValueError:
        return {name: "modevisor plugins --json: unreadable output" for name, _ in PLUGINS}
    out = {name: "not installed" for name, _ in PLUGINS}
    for pl in info.get("plugins", []):
        if pl.get("name") in out:
            out[pl["name"]] = None if pl.get("runs_here") else "; ".join(pl.get("why_not", [])) or "cannot run here"
    return out


def host_facts():
    facts = {"kernel": platform.release(), "machine": platform.machine()}
    for mod, par in (("kvm_amd", "npt"), ("kvm_intel", "ept")):
        try:
            with open("/sys/module/%s/parameters/%s" % (mod, par)) as f:
                facts["%s.%s" % (mod, par)] = f.read().strip()
        except OSError:
            pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    facts["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return facts


def inner_main(args):
    """Inside the nested KVM host (or on any host): measure the HV plugins that run here."""
    work = os.path.abspath(args.work_dir or os.getcwd())
    os.makedirs(work, exist_ok=True)
    npt = os.environ.get("MODEVISOR_KVM_NPT", "x")
    out = args.out or os.path.join(work, "exits-npt%s.json" % npt)
    doc = {"host": host_facts(), "npt_env": npt, "plugins": {}, "notes": []}
    can = runnable_here(args.modevisor, work)
    status = 0
    # In the nested host each kvm_amd setting runs the plugin it is for.
    plugins = [p for p in args.plugins if npt not in ("0", "1") or NPT_OF.get(p) == npt]
    for plugin in plugins:
        if can.get(plugin):
            doc["notes"].append("%s: cannot run here (%s)" % (plugin, can[plugin]))
            continue
        t0 = time.time()
        runs, ok = measure(args.modevisor, plugin, work, args.elf, args.counts, args.ops, args.timeout,
                                args.repeat)
        doc["plugins"][plugin] = {"runs": runs, "ok": ok, "wall_s": round(time.time() - t0, 1)}
        status |= 0 if ok else 1
    with open(out, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
    log("exits: wrote %s (%s)" % (out, ", ".join(doc["plugins"]) or "no plugin ran: " + "; ".join(doc["notes"])))
    return status


# ------------------------------------------------------------------ nested host
def run_nested(args, plugins):
    """Measure `plugins` (hv-hwmmu and/or hv-swmmu) inside the KVM test host.
    Returns ({plugin: measurement}, notes, info)."""
    info, notes, results = {}, [], {}
    if not shutil.which("qemu-system-x86_64"):
        notes.append("nested KVM host: no qemu-system-x86_64 (apt-get install qemu-system-x86)")
        return results, notes, info
    out = os.path.join(args.build, "kvm-host")
    p = subprocess.run([os.path.join(REPO, "scripts", "kvm-host", "build.sh"), out], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT)
    if p.returncode != 0:
        notes.append("nested KVM host: cannot be built: %s" % p.stdout.decode("utf-8", "replace").strip()[-400:])
        return results, notes, info
    work = os.path.join(args.build, "bench", "exits-nested")
    os.makedirs(work, exist_ok=True)
    for f in os.listdir(work):
        if f.startswith("exits-npt") and f.endswith(".json"):
            os.remove(os.path.join(work, f))
    npts = " ".join(NPT_OF[p] for p in plugins)
    cmd = [os.path.join(REPO, "scripts", "kvm-host", "run.sh"), "-o", out, "-w", work, "-t", str(args.nested_timeout),
           "--", sys.executable, os.path.abspath(__file__), "--inner", "--build", args.build,
           "--modevisor", args.modevisor, "--work-dir", work, "--timeout", str(args.timeout),
           "--counts", ",".join(map(str, args.counts)), "--repeat", str(args.repeat), "--ops", ",".join(args.ops),
           "--plugins", ",".join(plugins)]
    log("exits: booting the nested KVM host (QEMU TCG, AMD EPYC + SVM), kvm_amd npt=%s: %s" % (npts, " ".join(cmd)))
    t0 = time.time()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(os.environ, NPTS=npts),
                       stdin=subprocess.DEVNULL)
    console = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1bc", "", p.stdout.decode("utf-8", "replace"))
    info = {"command": cmd, "npts": npts, "exit_status": p.returncode, "wall_s": round(time.time() - t0, 1),
            "console": [l for l in console.splitlines() if l.startswith("kvm-host") or l.startswith("exits:")]}
    for plugin in plugins:
        path = os.path.join(work, "exits-npt%s.json" % NPT_OF[plugin])
        try:
            with open(path) as f:
                doc = json.load(f)
        except (OSError, ValueError):
            why = "run.sh exit %d: %s" % (p.returncode, " | ".join(console.strip().splitlines()[-3:]))
            notes.append("%s: the nested KVM host (npt=%s) gave no results (%s)" % (
                plugin, NPT_OF[plugin], why if why not in " ".join(notes) else "as above"))
            continue
        notes += ["%s (nested, npt=%s): %s" % (plugin, NPT_OF[plugin], n) for n in doc.get("notes", [])]
        if plugin in doc.get("plugins", {}):
            m = doc["plugins"][plugin]
            m["where"] = "nested KVM host: QEMU %s TCG, %s, kernel %s, kvm_amd npt=%s" % (
                os.environ.get("KVM_HOST_CPU", "EPYC"), doc["host"].get("cpu", "?"), doc["host"].get("kernel", "?"),
                doc["host"].get("kvm_amd.npt", "?"))
            m["host"] = doc["host"]
            results[plugin] = m
    return results, notes, info


# ------------------------------------------------------------------ per-op counts
def per_op(runs, counts, ops, repeat):
    """{op: {counter: {"per_pair": [per op, for each pair of consecutive N], "exact": bool, "value": ...}}}

    exact: every pair gives the same integer, and the repeated runs of the
    first N (op and none) gave the same value as the first run."""
    def ctr(op, n):
        run = runs.get(op, {}).get(str(n))
        if not run or not run["ok"] or run["counters"] is None:
            return None
        c = dict(run["counters"])
        c.update(derived(c))
        return c
    out = {}
    reps = ["%d#%d" % (counts[0], i) for i in range(2, repeat + 1)]
    base = [ctr(BASELINE, n) for n in counts]
    base_reps = [ctr(BASELINE, k) for k in reps]
    for op in ops + [BASELINE]:
        cs = [ctr(op, n) for n in counts]
        cs_reps = [ctr(op, k) for k in reps]
        if any(c is None for c in cs + base + cs_reps + base_reps):
            out[op] = None
            continue
        if any(runs[op][str(n)].get("skipped") for n in counts):
            out[op] = {"skipped": runs[op][str(counts[0])]["skipped"]}
            continue
        names = set().union(*cs, *base)
        res = {}
        for k in sorted(names):
            vals = []
            for i in range(len(counts) - 1):
                d = cs[i + 1].get(k, 0) - cs[i].get(k, 0)
                if op != BASELINE:
                    d -= base[i + 1].get(k, 0) - base[i].get(k, 0)
                vals.append(Fraction(d, counts[i + 1] - counts[i]))
            # the same run again: the same count?
            varies = {c.get(k, 0) for c in [cs[0]] + cs_reps}, {c.get(k, 0) for c in [base[0]] + base_reps}
            exact = len(set(vals)) == 1 and vals[0].denominator == 1 and len(varies[0]) == 1 and len(varies[1]) == 1
            if not exact or vals[0] != 0:
                res[k] = {"per_pair": [float(v) for v in vals], "exact": exact,
                          "value": int(vals[0]) if exact else float(sum(vals) / len(vals))}
                if len(varies[0]) > 1 or len(varies[1]) > 1:
                    res[k]["repeats_differ"] = {"op": sorted(varies[0]), "none": sorted(varies[1])}
                if k in TIME_DRIVEN:
                    res[k]["time_driven"] = TIME_DRIVEN[k]
                if k in TIME_AFFECTED:
                    res[k]["time_affected"] = TIME_AFFECTED[k]
        out[op] = res
    return out


def fmt(entry, signed=False):
    """An exact count as an integer; anything else marked with '~' (not a per-op integer)."""
    if entry is None:
        return "0"
    if entry["exact"]:
        return str(entry["value"])
    return "~%.3g" % entry["value"]


def user_exit_kinds(res):
    parts = []
    for k in USER_EXIT_KINDS:
        e = res.get("kvm.exit." + k)
        if e:
            name = k
            if k == "mmio_write" and res.get("kvm.exit.apic_tpr_write", {}).get("value") == e["value"]:
                name = "mmio_write(TPR)"
            parts.append("%s %s" % (fmt(e), name))
    return ", ".join(parts) or "-"


def tables(measured, counts, ops, repeat):
    """The summary table (op x plugin) and one detail table per plugin."""
    col = {}
    for plugin, m in measured.items():
        col[plugin] = per_op(m["runs"], counts, ops, repeat)
    header = ["op"]
    have = [p for p, _ in PLUGINS if p in col]
    if "bt-swmmu" in col:
        header += ["BT hidden PF", "BT traces", "BT true PF", "BT emulated", "BT monitor entries"]
    for p in ("hv-swmmu", "hv-hwmmu"):
        if p in col:
            header += ["%s user exits" % p, "%s kernel exits" % p]
    rows = []
    for op in ops:
        row = [op]
        for p in have:
            r = col[p].get(op)
            width = 5 if p == "bt-swmmu" else 2
            if r is None:
                row += ["failed"] * width
                continue
            if "skipped" in r:
                row += ["skipped"] * width
                continue
            if p == "bt-swmmu":
                row += [fmt(r.get(k)) for k in ("swmmu.hidden_faults", "swmmu.traced_pt_writes", "swmmu.true_faults",
                                                "bt.special_exits", "derived.bt.monitor_entries")]
            else:
                user, kinds = fmt(r.get("kvm.exits")), user_exit_kinds(r)
                if kinds.count(",") == 0 and kinds.split(" ")[0] == user:
                    user = kinds  # one kind: "1 io_in"
                elif r.get("kvm.exits"):
                    user = "%s (%s)" % (user, kinds)
                # n/a: this KVM has no binary stats fd (kernel-driver reads none)
                stats_fd = "kvm.kernel.exits" in measured[p]["runs"][op][str(counts[0])]["counters"]
                kern = fmt(r.get("derived.kvm.kernel_handled_exits")) if stats_fd else "n/a"
                row += [user, kern]
        rows.append(row)
    return col, header, rows


def detail_lines(res_by_op, ops, plugin):
    """Per op: every counter that changed (derived.* first), then the time-driven ones."""
    lines = []
    for op in ops + [BASELINE]:
        name = op if op != BASELINE else "(both empty loops)"
        r = res_by_op.get(op)
        if r is None or "skipped" in r:
            lines.append("  %-18s %s" % (name, "failed" if r is None else "skipped: " + r["skipped"]))
            continue
        keys = sorted(r, key=lambda k: (not k.startswith("derived."), k))
        shown = ["%s=%s" % (k.replace("derived.", "").replace("kvm.kernel.", "kernel.").replace("kvm.exit.", "exit."),
                            fmt(r[k])) for k in keys if not r[k].get("time_driven") and
                 not (r[k].get("time_affected") and abs(r[k]["value"]) < 0.005)]
        td = ["%s=%s" % (k, fmt(r[k])) for k in keys if r[k].get("time_driven") and abs(r[k]["value"]) >= 0.005]
        lines.append("  %-18s %s" % (name, " ".join(shown) or "(nothing)"))
        if td:
            lines.append("  %-18s time-driven: %s" % ("", " ".join(td)))
    return lines


# ------------------------------------------------------------------ main
def parse_args(argv):
    ap = argparse.ArgumentParser(prog="bench/run.sh --suite exits", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(REPO, "build"), help="build tree (default: <repo>/build)")
    ap.add_argument("--modevisor", default=None, help="modevisor binary (default <build>/bin/modevisor)")
    ap.add_argument("--counts", default="1000,2000,3000",
                    help="iteration counts N of the differential (at least two; default 1000,2000,3000)")
    ap.add_argument("--repeat", type=int, default=2,
                    help="runs of the first count (identical runs must give identical counts; default 2)")
    ap.add_argument("--ops", default=",".join(OPS), help="nanobench ops (default: all of them)")
    ap.add_argument("--plugins", default=",".join(p for p, _ in PLUGINS), help="plugins to measure")
    ap.add_argument("--no-nested", action="store_true", help="do not boot the nested KVM host for the HV plugins")
    ap.add_argument("--timeout", type=int, default=120, help="seconds per modevisor run (default 120)")
    ap.add_argument("--nested-timeout", type=int, default=900, help="seconds for the whole nested host (default 900)")
    ap.add_argument("--out", default=None, help="JSON output (default bench/results/exits-<time>.json)")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)  # the part run inside the KVM host
    ap.add_argument("--work-dir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.build = os.path.abspath(args.build)
    args.modevisor = os.path.abspath(args.modevisor or os.path.join(args.build, "bin", "modevisor"))
    args.counts = sorted({int(x) for x in args.counts.split(",") if x})
    if len(args.counts) < 2 or args.counts[0] < 1:
        ap.error("--counts needs at least two different counts >= 1")
    if len({len(str(n)) for n in args.counts}) != 1:
        # the guest prints N ("count=N", "N iterations"): each serial byte is
        # an I/O access (an exit under HV), so N's digits would leak into the counts
        ap.error("--counts must all have the same number of decimal digits (the guest prints them)")
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    args.ops = [o for o in args.ops.split(",") if o]
    for o in args.ops:
        if o not in OPS:
            ap.error("unknown op %s (known: %s)" % (o, " ".join(OPS)))
    args.plugins = [p for p in args.plugins.split(",") if p]
    for p in args.plugins:
        if p not in MODE_OF:
            ap.error("unknown plugin %s (known: %s)" % (p, " ".join(MODE_OF)))
    args.elf = os.path.join(args.build, "guests", "nanobench.elf")
    if not os.path.exists(args.elf) or not os.access(args.modevisor, os.X_OK):
        ap.error("%s or %s missing: build first (ninja -C %s)" % (args.elf, args.modevisor, args.build))
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.inner:
        return inner_main(args)
    t_start = time.time()
    info = bench.machine_info()
    info["host"] = host_facts()
    print("modevisor exits per operation: %s, %s (%s CPUs), git %s" % (
        info.get("date"), info.get("cpu", "?"), info.get("nproc"), info.get("git", "?")))
    work = os.path.join(args.build, "bench", "exits")
    os.makedirs(work, exist_ok=True)
    can = runnable_here(args.modevisor, work)
    measured, notes, nested_info, failed = {}, [], None, False
    nested = []
    for plugin in args.plugins:
        if can.get(plugin) is None:
            t0 = time.time()
            runs, ok = measure(args.modevisor, plugin, work, args.elf, args.counts, args.ops, args.timeout,
                                args.repeat)
            measured[plugin] = {"runs": runs, "ok": ok, "wall_s": round(time.time() - t0, 1),
                                "where": "this machine (%s)" % info.get("cpu", "?"), "host": info["host"]}
        elif plugin in NPT_OF and not args.no_nested:
            notes.append("%s: cannot run on this machine (%s): to be measured in the nested KVM host" % (
                plugin, can[plugin]))
            nested.append(plugin)
        else:
            notes.append("%s: not measured: cannot run on this machine (%s)%s" % (
                plugin, can[plugin], ", and --no-nested" if plugin in NPT_OF else ""))
    if nested:
        got, nnotes, nested_info = run_nested(args, nested)
        measured.update(got)
        notes += nnotes
    for plugin, m in measured.items():
        if not m["ok"]:
            failed = True
            bad = [r for op in m["runs"].values() for r in op.values() if not r["ok"]]
            notes.append("%s: %d run(s) failed, first: %s: %s" % (plugin, len(bad), bad[0]["cmdline"],
                                                                  bad[0].get("note")) if bad else "%s: failed" % plugin)

    col, header, rows = tables(measured, args.counts, args.ops, args.repeat)
    print("\n== exits per operation (nanobench only=<op>, differential over count=%s, minus only=none) ==" %
          ",".join(map(str, args.counts)))
    for p in measured:
        print("  %-9s %s" % (p + ":", measured[p]["where"]))
    if rows and len(header) > 1:
        bench.print_table(header, rows)
    print("Integers are exact per-operation counts: the same integer for every pair of counts, and the same count\n"
          "when a run is repeated (%d runs of count=%d). '~x' is not (the JSON has the per-pair values and repeats).\n"
          "BT monitor entries: exits from translated code (timer polls left out) + hidden faults.  user exits: VM\n"
          "exits modevisor handled (by kind); kernel exits: VM exits KVM handled itself (stats fd: exits - irq_exits\n"
          "- user exits).  None of these is a time; times in the nested host are not measured." % (
              args.repeat, args.counts[0]))
    for p in [p for p, _ in PLUGINS if p in col]:
        print("\n-- %s: every counter that changed, per op --" % p)
        print("\n".join(detail_lines(col[p], args.ops, p)))
    inexact = sorted({"%s %s %s" % (p, op, k) for p in col for op, r in col[p].items() if r and "skipped" not in r
                      for k, e in r.items() if not e["exact"] and not e.get("time_driven") and k not in TIME_AFFECTED})
    if inexact:
        notes.append("not an exact count per op (and not known to be time-driven): " + "; ".join(inexact))
    for n in notes:
        print("note: " + n)
    report = {"machine": info, "counts": args.counts, "repeat": args.repeat, "ops": args.ops, "method": (
        "per op = ((C(op,N[i+1]) - C(op,N[i])) - (C(none,N[i+1]) - C(none,N[i]))) / (N[i+1] - N[i]) for each i; "
        "C = counters of `modevisor --json run --stats` of nanobench 'only=<op> count=N trials=1'; "
        "exact = the same integer for every i, and the first N run `repeat` times gave the same counter"),
        "time_driven": TIME_DRIVEN, "time_affected": TIME_AFFECTED, "plugins": {}, "table": {"header": header, "rows": rows}, "notes": notes,
        "nested_host": nested_info, "wall_s": round(time.time() - t_start, 1)}
    for p, m in measured.items():
        report["plugins"][p] = dict(m, per_op={op: ({k: {kk: vv for kk, vv in e.items()} for k, e in r.items()}
                                                    if r else r) for op, r in col[p].items()})
    out = args.out or os.path.join(HERE, "results", "exits-%s.json" % datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(report, f, indent=1, sort_keys=True)
    shown = os.path.relpath(out) if not os.path.relpath(out).startswith("..") else out
    print("\nJSON: %s   (suite wall time %.0f s%s)" % (shown, time.time() - t_start, (
        ", nested host %.0f s" % nested_info["wall_s"]) if nested_info else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
