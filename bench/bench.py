#!/usr/bin/env python3
"""modevisor benchmark driver (Python 3 standard library only).

Two suites, both comparing against peers measured in the same run (no
absolute thresholds, nothing is asserted about speed):

  compute  the compute guests (sieve crc32 sha256 matmul sort) natively
           (x86-64 and -m32 builds of the same cores), under QEMU TCG and
           under every installed modevisor mode plugin that can run on this
           host; best of k wall-clock times, RESULT: PASS checked for every
           run, result values cross-checked between native and guest runs.
  nano     the nanobench guest (cycles/op of syscall, sysenter, in, cr8wr,
           call/ret, pgfault, divzero, ptemod) under QEMU and the monitors,
           next to host-process analogues where one exists, plus the
           monitor's own event counters per op when `modevisor run --stats
           --json` reports them.

A third suite, `--suite exits` (not part of `all`), counts exits, hidden
faults and traces per nanobench operation under every plugin, the HV ones
inside the nested KVM test host: bench/exits.py, whose options follow
`--suite exits` (bench/run.sh --suite exits --help).

See bench/README.md.  Results are printed and written as JSON to
bench/results/ (gitignored).
"""
import argparse
import datetime
import errno
import json
import math
import os
import pathlib
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

GUESTS = ["sieve", "crc32", "sha256", "matmul", "sort"]
# Benchmark sizes (tests/guests/README.md; matmul n tuned so native x86-64 takes ~1 s here).
FULL_ARGS = {
    "sieve": "n=100000000 r=4",
    "crc32": "n=4096 r=256",
    "sha256": "n=4096 r=64",
    "matmul": "n=1300",
    "sort": "n=4000000 r=2",
}
# --quick: the ctest default sizes (well under a second each under QEMU).
QUICK_ARGS = {
    "sieve": "n=10000000 r=1",
    "crc32": "n=1024 r=32",
    "sha256": "n=256 r=16",
    "matmul": "n=200 r=1",
    "sort": "n=1000000 r=1",
}
# The value each guest prints and native_bench prints the same way.
RESULT_RE = {
    "sieve": r"primes below \d+: (\d+)",
    "crc32": r"crc32 = ([0-9a-f]{8})",
    "sha256": r"sha256\(buffer\) = ([0-9a-f]{64})",
    "matmul": r"checksum = ([0-9a-f]{8})",
    "sort": r"weighted sum = ([0-9a-f]{8}) \(quick\)",
    "forkwait": r"forkwait checksum = ([0-9a-f]{8})",
}
# Macrobenchmarks (--suite macro): guest kernels doing an OS's work, no native peer.
MACRO_ARGS = {"forkwait": "n=40000"}
MACRO_QUICK_ARGS = {"forkwait": "n=2000"}
NANO_OPS = ["syscall", "sysenter", "in", "cr8wr", "call/ret", "pgfault", "divzero", "ptemod"]
NB_LINE = re.compile(r"^nb (\S+): (\d+) iterations(?:, (\d+) handler entries)?(?:, (-?\d+(?:\.\d+)?) cycles/op)?")
NB_SKIP = re.compile(r"^nb (\S+): skipped \((.*)\)")
HOST_LINE = re.compile(r"^host (\S+): (\d+) iterations, (-?\d+(?:\.\d+)?) cycles/op \((.*)\)")
# VM YAML hints that ask selection for each mode (hints, not orders: the
# driver checks which plugin was actually selected).
MODE_HINTS = {
    "BT": ("software", "software"),
    "HV": ("hardware", "software"),
    "HWMMU": ("hardware", "hardware"),
}
EXIT_NO_MODE, EXIT_MONITOR_FAILED = 3, 4


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class RunResult:
    """One run of one guest/program under one runner."""

    def __init__(self, ok, seconds=None, text="", note="", value=None, counters=None, status=None):
        self.ok, self.seconds, self.text, self.note = ok, seconds, text, note
        self.value, self.counters, self.status = value, counters, status


# A column this host cannot run: reported with the reason, never a failure.
NOT_RUNNABLE_HERE = "not runnable on this host:"


def run_timed(cmd, timeout, env=None, cwd=None):
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout, env=env,
                           cwd=cwd, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None, time.perf_counter() - t0, "", "timeout after %ds" % timeout
    except OSError as e:  # e.g. ENOEXEC: a program this kernel cannot run
        return None, time.perf_counter() - t0, "", "cannot execute %s: %s" % (cmd[0], e.strerror)
    dt = time.perf_counter() - t0
    return p.returncode, dt, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def check_transcript(text):
    """A guest run is good iff its transcript ends with RESULT: PASS and has no FAIL line."""
    lines = text.splitlines()
    if any(l.startswith("FAIL") or l.startswith("FATAL") for l in lines):
        return "FAIL lines in transcript"
    if "RESULT: PASS" not in lines:
        return "no RESULT: PASS in transcript"
    return ""


# ------------------------------------------------------------------ runners
class Native:
    """build/guests/native_bench (x86-64) or native_bench32 (-m32 -march=i686)."""

    def __init__(self, exe, label):
        self.exe, self.label = exe, label

    def available(self):
        return os.access(self.exe, os.X_OK)

    def why_not_runnable(self):
        """'' when this host runs the program (probed by running a tiny sieve),
        else why not: some kernels run no 32-bit x86 programs at all."""
        try:
            p = subprocess.run([self.exe, "sieve", "n=1000", "r=1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               stdin=subprocess.DEVNULL, timeout=60)
        except OSError as e:
            hint = " (this kernel runs no 32-bit x86 programs)" if e.errno == errno.ENOEXEC and self.label == "native32" else ""
            return "cannot execute %s: %s%s" % (os.path.relpath(self.exe), e.strerror, hint)
        except subprocess.TimeoutExpired:
            return "%s did not finish a tiny run in 60 s" % os.path.relpath(self.exe)
        if p.returncode != 0:
            return "%s exits with status %d on a tiny run: %s" % (os.path.relpath(self.exe), p.returncode,
                                                                 p.stderr.decode("utf-8", "replace").strip()[:200])
        return ""

    def run(self, guest, args, timeout):
        rc, dt, out, err = run_timed([self.exe, guest] + args.split(), timeout)
        if rc != 0:
            return RunResult(False, dt, out, "exit %s: %s" % (rc, err.strip()[:200]))
        if guest == "matmul" and "freivalds=ok" not in out:
            return RunResult(False, dt, out, "Freivalds check failed")
        m = re.search(RESULT_RE[guest], out)
        return RunResult(True, dt, out, value=m.group(1) if m else None)


class Qemu:
    """tests/guests/run-qemu.sh: qemu-system-i386 -accel tcg, the oracle's exact invocation
    (qemu and cpu: another binary and -cpu model, as the 64-bit guests' oracle runs;
    elf_names: guest -> ELF base name where they differ)."""

    label = "QEMU"

    def __init__(self, guest_dir, qemu=None, cpu=None, label=None, elf_names=None):
        self.guest_dir = guest_dir
        self.script = os.path.join(REPO, "tests", "guests", "run-qemu.sh")
        self.qemu, self.cpu, self.elf_names = qemu, cpu, elf_names or {}
        if label:
            self.label = label

    def binary(self):
        return self.qemu or os.environ.get("QEMU", "qemu-system-i386")

    def available(self):
        return shutil.which(self.binary()) is not None

    def run(self, guest, args, timeout):
        env = dict(os.environ, GUEST_TIMEOUT=str(timeout))
        if self.qemu:
            env["QEMU"] = self.qemu
        if self.cpu:
            env["QEMU_CPU"] = self.cpu
        elf = os.path.join(self.guest_dir, self.elf_names.get(guest, guest) + ".elf")
        rc, dt, out, err = run_timed([self.script, elf, args], timeout + 30, env=env)
        bad = check_transcript(out)
        if rc != 1 or bad:
            return RunResult(False, dt, out, "QEMU status %s%s" % (rc, (", " + bad) if bad else ""), status=rc)
        m = re.search(RESULT_RE.get(guest, r"(?!)"), out)
        return RunResult(True, dt, out, value=m.group(1) if m else None, status=rc)


def json_documents(text):
    """Split modevisor's stdout into top-level JSON objects (each starting a
    line with '{') and the remaining text (the guest's serial output)."""
    docs, rest, i, dec = [], [], 0, json.JSONDecoder()
    lines = text.splitlines(keepends=True)
    pos, starts = 0, []
    for l in lines:
        starts.append(pos)
        pos += len(l)
    li = 0
    while li < len(lines):
        if lines[li].startswith("{"):
            try:
                obj, end = dec.raw_decode(text, starts[li])
                docs.append(obj)
                # skip the lines the document covered
                while li < len(lines) and starts[li] < end:
                    li += 1
                continue
            except ValueError:
                pass
        rest.append(lines[li])
        li += 1
    return docs, "".join(rest)


def find_counters(docs):
    """{"counters": {...}} at the top level of a document or under "stats"."""
    for d in docs:
        if not isinstance(d, dict):
            continue
        for holder in (d, d.get("stats") if isinstance(d.get("stats"), dict) else None):
            if holder and isinstance(holder.get("counters"), dict):
                return {k: v for k, v in holder["counters"].items() if isinstance(v, (int, float))}
    return None


class Modevisor:
    """build/bin/modevisor run VM.yaml for one mode (BT, HV, HWMMU)."""

    def __init__(self, exe, mode, plugin, work_dir, memory="128MiB", label=None, cpu_model=None, elf_names=None,
                 log_must=None):
        self.exe, self.mode, self.plugin, self.work_dir, self.memory = exe, mode, plugin, work_dir, memory
        self.label = label or mode
        self.cpu_model, self.elf_names = cpu_model, elf_names or {}
        # (regex, what): a line the VM's log must have for the run to count
        # (BT64: the BT32 -> BT64 switch, so that no run under another engine is timed as BT64)
        self.log_must = log_must
        self.not_runnable = None  # message once the plugin refused to run a guest

    def vm_yaml(self, guest_elf, guest, args, tag):
        exec_hint, mmu_hint = MODE_HINTS[self.mode]
        name = "bench-%s-%s-%s" % (guest, self.label.lower(), tag)
        name = re.sub(r"[^A-Za-z0-9._-]", "_", name)
        path = os.path.join(self.work_dir, "vms", name + ".yaml")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write("# generated by bench/bench.py\n")
            f.write("name: %s\n" % name)
            f.write("guest:\n  os: other-32\n  kernel: %s\n  cmdline: %s\n" % (json.dumps(guest_elf), json.dumps(args)))
            f.write("memory: %s\n" % self.memory)
            if self.cpu_model:
                f.write("cpu_model: %s\n" % self.cpu_model)
            f.write("monitor:\n  virtual_exec: %s\n  virtual_mmu: %s\n" % (exec_hint, mmu_hint))
        return name, path

    def run_elf(self, guest_elf, guest, args, timeout, stats=False, tag="t"):
        name, path = self.vm_yaml(guest_elf, guest, args, tag)
        cmd = [self.exe, "--json", "--log-dir", os.path.join(self.work_dir, "logs"), "run", path]
        if stats:
            cmd.append("--stats")
        # The VM log is appended to across runs of the same VM name: this run's part starts here.
        log_path = os.path.join(self.work_dir, "logs", name + ".log")
        try:
            log_start = os.path.getsize(log_path)
        except OSError:
            log_start = 0
        rc, dt, out, err = run_timed(cmd, timeout)
        docs, serial = json_documents(out)
        # `modevisor --json run` prints one document: {"selection": {...},
        # "console": "<COM1 output>", "counters": {...}, "exit_status": N, ...}.
        for d in docs:
            if isinstance(d, dict) and isinstance(d.get("console"), str):
                serial = d["console"]
        # Which plugin did selection pick?  (hints can be ignored)
        picked = None
        for d in docs:
            sel = d.get("selection") if isinstance(d, dict) and isinstance(d.get("selection"), dict) else d
            if isinstance(sel, dict) and isinstance(sel.get("plugin"), dict) and "selected" in sel:
                picked = sel["plugin"].get("name")
                break
        msg = ""
        for l in err.splitlines():
            m = re.match(r"modevisor: error: (?:VM \S+: )?(.*)", l)
            if m:
                msg = m.group(1)
        if rc is None:
            return RunResult(False, dt, serial, "timeout after %ds" % timeout)
        if picked and picked != self.plugin:
            return RunResult(False, dt, serial, "selection picked %s, not %s" % (picked, self.plugin), status=rc)
        if rc in (EXIT_NO_MODE, EXIT_MONITOR_FAILED) and not serial.strip():
            # The plugin (exit 4) or selection (exit 3) refused before any guest code ran.
            what = "not runnable yet" if rc == EXIT_MONITOR_FAILED else "no monitor mode can run it"
            self.not_runnable = "%s (%s)" % (what, msg or "exit status %d" % rc)
            return RunResult(False, dt, "", self.not_runnable, status=rc)
        bad = check_transcript(serial)
        if self.log_must and not bad:
            try:
                with open(log_path, "rb") as f:
                    f.seek(log_start)
                    vm_log = f.read().decode("utf-8", "replace")
            except OSError:
                vm_log = ""
            if not re.search(self.log_must[0], vm_log):
                bad = "no '%s' line in the VM log" % self.log_must[1]
        # `modevisor run` returns the guest's debug-exit status as QEMU does:
        # (code << 1) | 1, so 1 is a guest that exited with code 0.
        if rc != 1 or bad:
            return RunResult(False, dt, serial, "modevisor exit %s%s%s" % (rc, (", " + bad) if bad else "",
                                                                           (": " + msg) if msg else ""), status=rc)
        m = re.search(RESULT_RE.get(guest, r"(?!)"), serial)
        return RunResult(True, dt, serial, value=m.group(1) if m else None, counters=find_counters(docs), status=rc)

    def run(self, guest, args, timeout):
        return self.run_elf(os.path.join(GUEST_DIR, self.elf_names.get(guest, guest) + ".elf"), guest, args, timeout)


def modevisor_modes(exe, work_dir, want):
    """Runners for installed plugins that can run on this host, plus notes for the others."""
    runners, notes = [], []
    if not os.access(exe, os.X_OK):
        notes.append("modevisor: %s not built" % exe)
        return runners, notes
    p = subprocess.run([exe, "--json", "--log-dir", os.path.join(work_dir, "logs"), "plugins"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        info = json.loads(p.stdout.decode())
    except ValueError:
        notes.append("modevisor plugins --json: unreadable output (exit %d)" % p.returncode)
        return runners, notes
    seen = set()
    for pl in sorted(info.get("plugins", []), key=lambda x: list(MODE_HINTS).index(x.get("mode"))
                     if x.get("mode") in MODE_HINTS else 9):
        mode = pl.get("mode")
        if mode not in MODE_HINTS or mode in seen or mode not in want:
            continue
        seen.add(mode)
        if not pl.get("runs_here"):
            notes.append("%s: %s %s: %s" % (mode, NOT_RUNNABLE_HERE, pl.get("name"),
                                            "; ".join(pl.get("why_not", [])) or "?"))
            continue
        runners.append(Modevisor(exe, mode, pl.get("name"), work_dir))
    for mode in want:
        if mode not in seen:
            notes.append("%s: no plugin installed" % mode)
    return runners, notes


# ------------------------------------------------------------------ formatting
def fmt_s(x):
    return "%.3f" % x if x is not None else "-"


def fmt_ratio(x):
    return "%.2f" % x if x is not None else "-"


def geomean(xs):
    xs = [x for x in xs if x is not None and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def print_table(header, rows, out=sys.stdout):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = "  ".join(str(h).ljust(w) if i == 0 else str(h).rjust(w) for i, (h, w) in enumerate(zip(header, widths)))
    print(line, file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for r in rows:
        print("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths))),
              file=out)


# ------------------------------------------------------------------ macro suite
def macro_suite(args, mv_runners):
    """forkwait (Adams & Agesen's process-creation benchmark) under QEMU TCG and
    each mode, best of k wall-clock seconds, also per fork/wait pair."""
    sizes = MACRO_QUICK_ARGS if args.quick else MACRO_ARGS
    qemu = Qemu(GUEST_DIR)
    runners, notes = ([qemu] if qemu.available() else []), ([] if qemu.available() else ["QEMU: not found"])
    runners += mv_runners
    results = {}
    for g, a in sizes.items():
        results[g] = {}
        for r in runners:
            log("macro: %-8s %-6s %s (k=%d)" % (g, r.label, a, args.k))
            results[g][r.label] = best_of(r, g, a, args.k, args.timeout)
        vals = {lbl: c.get("value") for lbl, c in results[g].items() if c["ok"] and c.get("value") is not None}
        if len(set(vals.values())) > 1:
            notes.append("%s: result values differ between runners: %s" % (g, vals))
            for c in results[g].values():
                c["mismatch"] = True
    labels = [r.label for r in runners]
    header = ["guest", "args"] + ["%s s" % l for l in labels] + ["%s us/fork" % l for l in labels]
    header += ["%s/TCG" % r.label for r in mv_runners]
    rows = []
    for g, a in sizes.items():
        n = int(re.search(r"n=(\d+)", a).group(1))
        best = {l: (c["best"] if c["ok"] and not c.get("mismatch") else None) for l, c in results[g].items()}
        row = [g, a]
        row += [fmt_s(best[l]) if best[l] is not None else results[g][l].get("note", "-")[:40] for l in labels]
        row += ["%.1f" % (best[l] * 1e6 / n) if best[l] is not None else "-" for l in labels]
        row += [fmt_ratio(best[r.label] / best["QEMU"]) if best.get(r.label) and best.get("QEMU") else "-"
                for r in mv_runners]
        rows.append(row)
    print("\n== Macrobenchmarks: wall-clock seconds, best of %d (start-up included) ==" % args.k)
    print_table(header, rows)
    for n in notes:
        print("note: " + n)
    return {"args": sizes, "results": results, "notes": notes}


# ------------------------------------------------------------------ compute suite
def run_guests(suite, args, runners, sizes, notes):
    """Best of k of every guest under every runner; every successful run must
    agree on the result value (a mismatch is noted and marks the cells)."""
    results = {}
    for g in args.guests:
        results[g] = {}
        for r in runners:
            log("%s: %-7s %-9s %s (k=%d)" % (suite, g, r.label, sizes[g], args.k))
            results[g][r.label] = best_of(r, g, sizes[g], args.k, args.timeout)
        vals = {lbl: c.get("value") for lbl, c in results[g].items() if c["ok"] and c.get("value") is not None}
        if len(set(vals.values())) > 1:
            notes.append("%s: result values differ between runners: %s" % (g, vals))
            for c in results[g].values():
                c["mismatch"] = True
    return results


def best_of(runner, guest, args, k, timeout):
    """Best (minimum) wall time of k runs; any failed run fails the cell."""
    times, value, first = [], None, None
    for i in range(k):
        r = runner.run(guest, args, timeout)
        if not r.ok:
            return {"ok": False, "note": r.note, "times": times}
        times.append(r.seconds)
        value = r.value
    return {"ok": True, "best": min(times), "times": times, "value": value}


def compute_suite(args, mv_runners):
    sizes = QUICK_ARGS if args.quick else FULL_ARGS
    natives = [Native(os.path.join(GUEST_DIR, "native_bench"), "native"),
               Native(os.path.join(GUEST_DIR, "native_bench32"), "native32")]
    qemu = Qemu(GUEST_DIR)
    runners, notes = [], []
    for n in natives:
        if not n.available():
            notes.append("%s: %s not built" % (n.label, n.exe))
        elif n.why_not_runnable():
            notes.append("%s: %s %s" % (n.label, NOT_RUNNABLE_HERE, n.why_not_runnable()))
        else:
            runners.append(n)
    if qemu.available():
        runners.append(qemu)
    else:
        notes.append("QEMU: qemu-system-i386 not found")
    runners += mv_runners
    results = run_guests("compute", args, runners, sizes, notes)

    # Start-up cost (process + firmware + boot of the tiny hello guest), part of every time above.
    startup = {}
    for r in runners:
        if isinstance(r, (Qemu, Modevisor)):
            log("compute: startup  %-9s hello (k=%d)" % (r.label, args.k))
            startup[r.label] = best_of(r, "hello", "hello=world n=42", args.k, args.timeout)
    labels = [r.label for r in runners]
    mv_labels = [r.label for r in mv_runners]

    def cell(g, lbl):
        c = results[g].get(lbl)
        if c is None:
            return "-"
        if not c["ok"]:
            return c["note"] if lbl not in mv_labels else c["note"].split(" (")[0]
        return fmt_s(c["best"]) + (" MISMATCH" if c.get("mismatch") else "")

    def best(g, lbl):
        c = results[g].get(lbl)
        return c["best"] if c and c["ok"] and not c.get("mismatch") else None

    def ratio(a, b):
        return a / b if a is not None and b else None

    header = ["guest", "args"] + ["%s s" % l for l in labels] + ["TCG/native"]
    for m in mv_labels:
        header += ["%s/native" % m, "%s/TCG" % m]
    rows, ratios = [], {}
    for g in args.guests:
        row = [g, sizes[g]] + [cell(g, l) for l in labels]
        rs = [("TCG/native", ratio(best(g, "QEMU"), best(g, "native")))]
        for m in mv_labels:
            rs += [("%s/native" % m, ratio(best(g, m), best(g, "native"))),
                   ("%s/TCG" % m, ratio(best(g, m), best(g, "QEMU")))]
        for name, v in rs:
            ratios.setdefault(name, []).append(v)
            row.append(fmt_ratio(v))
        rows.append(row)
    gm = ["geomean", ""] + [""] * len(labels) + [fmt_ratio(geomean(ratios[h])) for h in header[2 + len(labels):]]
    rows.append(gm)
    print("\n== compute guests: wall-clock seconds, best of %d (%s sizes) ==" % (args.k,
                                                                             "quick" if args.quick else "benchmark"))
    print_table(header, rows)
    if startup:
        print("start-up (hello guest, included in the times above): " + ", ".join(
            "%s %s" % (l, fmt_s(c["best"]) + " s" if c["ok"] else c["note"].split(" (")[0]) for l, c in startup.items()))
    if "native32" in labels:
        r32 = [ratio(best(g, "native32"), best(g, "native")) for g in args.guests]
        print("native32/native (i686 code vs x86-64 code, geomean): %s" % fmt_ratio(geomean(r32)))
    counters = compute_counters(args, mv_runners, sizes, results)
    for r in mv_runners:
        if r.not_runnable:
            notes.append("%s: %s" % (r.label, r.not_runnable))
    for n in notes:
        print("note: " + n)
    print("Ratios are time/time: BT/native 2.0 means twice native's time (target <= 2.0); "
          "BT/TCG 0.33 means a third of QEMU's time (target <= 0.33).")
    return {"sizes": {g: sizes[g] for g in args.guests}, "k": args.k, "results": results, "startup": startup,
            "counters": counters,
            "geomean": {h: geomean(v) for h, v in ratios.items()}, "notes": notes}


# ------------------------------------------------------------------ compute64 suite
# The 64-bit builds of the compute guests (tests/guests/compute64.c): the same
# cmdline, checks and result lines, their work x86-64 code without x87/SSE.
GUESTS64 = {"sieve": "sieve64", "crc32": "crc32_64", "sha256": "sha256_64", "matmul": "matmul64", "sort": "sort64"}
BT64_SWITCH = (r"MONITOR MODE: switch +: BT32 -> BT64 \(bt-swmmu .*continues under BT64", "switch: BT32 -> BT64")


def compute64_suite(args, mv_exe):
    """BT64 (the 64-bit guests under bt-swmmu, which switches BT32 -> BT64 at
    long mode) against native x86-64 built with the guests' flags
    (native_bench_gr: -mgeneral-regs-only) and QEMU TCG x86_64 on the same
    64-bit guests; and BT32 (the 32-bit guests) against BT64 on the same
    workload.  native_bench (SSE allowed) and native_bench32 (i686) are
    measured beside them for reference: native_gr/native32 is what the same
    change of code costs natively."""
    sizes = QUICK_ARGS if args.quick else FULL_ARGS
    notes, runners = [], []
    for exe, label in (("native_bench_gr", "native_gr"), ("native_bench", "native"), ("native_bench32", "native32")):
        n = Native(os.path.join(GUEST_DIR, exe), label)
        if not n.available():
            notes.append("%s: %s not built" % (label, n.exe))
        elif n.why_not_runnable():
            notes.append("%s: %s %s" % (label, NOT_RUNNABLE_HERE, n.why_not_runnable()))
        else:
            runners.append(n)
    qemu = Qemu(GUEST_DIR, qemu="qemu-system-x86_64", cpu="qemu64", label="TCG64", elf_names=GUESTS64)
    if qemu.available():
        runners.append(qemu)
    else:
        notes.append("TCG64: qemu-system-x86_64 not found")
    bt_plugin = None
    if os.access(mv_exe, os.X_OK):
        p = subprocess.run([mv_exe, "--json", "--log-dir", os.path.join(args.work_dir, "logs"), "plugins"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            for pl in json.loads(p.stdout.decode()).get("plugins", []):
                if pl.get("mode") == "BT":
                    if pl.get("runs_here"):
                        bt_plugin = pl.get("name")
                    else:
                        notes.append("BT: %s %s: %s" % (NOT_RUNNABLE_HERE, pl.get("name"),
                                                         "; ".join(pl.get("why_not", [])) or "?"))
                    break
            else:
                notes.append("BT: no plugin installed")
        except ValueError:
            notes.append("modevisor plugins --json: unreadable output (exit %d)" % p.returncode)
    else:
        notes.append("modevisor: %s not built" % mv_exe)
    mv = []
    if bt_plugin:
        # BT64: the 64-bit guest with a CPU model that offers long mode (check-bt64.sh's);
        # the run counts only if the VM log shows the switch to BT64.
        mv.append(Modevisor(mv_exe, "BT", bt_plugin, args.work_dir, label="BT64", cpu_model="kvm64",
                            elf_names=GUESTS64, log_must=BT64_SWITCH))
        mv.append(Modevisor(mv_exe, "BT", bt_plugin, args.work_dir, label="BT32"))
    runners += mv
    results = run_guests("compute64", args, runners, sizes, notes)
    labels = [r.label for r in runners]
    # Start-up: a tiny sieve (n=1000) through each guest runner (process, boot, and for
    # BT64 the BT32 start and the switch), part of every time above.
    startup = {}
    for r in runners:
        if isinstance(r, (Qemu, Modevisor)):
            log("compute64: startup %-9s sieve n=1000 r=1 (k=%d)" % (r.label, args.k))
            startup[r.label] = best_of(r, "sieve", "n=1000 r=1", args.k, args.timeout)

    def best(g, lbl):
        c = results[g].get(lbl)
        return c["best"] if c and c["ok"] and not c.get("mismatch") else None

    def ratio(a, b):
        return a / b if a is not None and b else None

    def cell(g, lbl):
        c = results[g][lbl]
        if not c["ok"]:
            return c["note"].split(" (")[0][:60]
        return fmt_s(c["best"]) + (" MISMATCH" if c.get("mismatch") else "")

    ratio_defs = [("BT64/native_gr", "BT64", "native_gr"), ("TCG64/BT64", "TCG64", "BT64"),
                  ("BT64/BT32", "BT64", "BT32"), ("native_gr/native32", "native_gr", "native32"),
                  ("native_gr/native", "native_gr", "native")]
    header = ["guest", "args"] + ["%s s" % l for l in labels] + [d[0] for d in ratio_defs]
    rows, ratios = [], {d[0]: [] for d in ratio_defs}
    for g in args.guests:
        row = [g, sizes[g]] + [cell(g, l) for l in labels]
        for name, a, b in ratio_defs:
            v = ratio(best(g, a), best(g, b))
            ratios[name].append(v)
            row.append(fmt_ratio(v))
        rows.append(row)
    rows.append(["geomean", ""] + [""] * len(labels) + [fmt_ratio(geomean(ratios[d[0]])) for d in ratio_defs])
    print("\n== compute64: 64-bit compute guests, wall-clock seconds, best of %d (%s sizes, start-up included) ==" % (
        args.k, "quick" if args.quick else "benchmark"))
    print_table(header, rows)
    if startup:
        print("start-up (sieve n=1000 r=1, included in the times above): " + ", ".join(
            "%s %s" % (l, fmt_s(c["best"]) + " s" if c["ok"] else c["note"].split(" (")[0])
            for l, c in startup.items()))
    print("BT64 = the 64-bit guest under %s (BT32 until long mode, then BT64; the switch is checked in each run's "
          "log); TCG64 = the same ELF under qemu-system-x86_64 -cpu qemu64; BT32 = the 32-bit guest under %s; "
          "native_gr = native_bench with the cores built -mgeneral-regs-only like the guests' 64-bit code, native "
          "= with SSE, native32 = -m32 -march=i686." % (bt_plugin or "bt-swmmu", bt_plugin or "bt-swmmu"))
    print("Targets (issue 14): BT64/native_gr <= 2.0 (half native), TCG64/BT64 >= 3.0 (3x QEMU TCG). "
          "BT64/BT32: > 1 means the 64-bit guest under BT64 takes longer than the 32-bit one under BT32; "
          "native_gr/native32 is the same change of code natively.")
    for r in mv:
        if r.not_runnable:
            notes.append("%s: %s" % (r.label, r.not_runnable))
    for n in notes:
        print("note: " + n)
    return {"sizes": {g: sizes[g] for g in args.guests}, "elf": {g: GUESTS64[g] for g in args.guests}, "k": args.k,
            "results": results, "startup": startup, "geomean": {h: geomean(v) for h, v in ratios.items()}, "notes": notes}


# Counters the table shows when a monitor reports them (all go to the JSON).
SHOWN_COUNTERS = ["bt.blocks_translated", "bt.dispatcher_lookups", "bt.indirect_lookup_hits", "bt.translation_cache_hits",
                  "swmmu.hidden_faults", "swmmu.true_faults", "swmmu.traced_pt_writes"]


def tc_hit_rate(c):
    """Share of counted block entries served from the translation cache.

    bt-swmmu counts the block entries that reach its dispatcher and those
    through its inline indirect-branch lookup (bt.translation_cache_hits
    = dispatcher hits + inline indirect hits); entries through chained
    direct jumps never leave translated code and are not counted, so the
    share of all block entries served from the cache is at least this."""
    entries = (c or {}).get("bt.dispatcher_lookups", 0) + (c or {}).get("bt.indirect_lookup_hits", 0)
    if entries:
        return c.get("bt.translation_cache_hits", 0) / entries
    return None


def compute_counters(args, mv_runners, sizes, results):
    """One extra `run --stats` per guest and runnable mode (timed runs go without --stats)."""
    out = {}
    for mv in mv_runners:
        rows, per = [], {}
        for g in args.guests:
            if not results[g].get(mv.label, {}).get("ok"):
                continue
            log("compute: %-7s %-9s --stats" % (g, mv.label))
            r = mv.run_elf(os.path.join(GUEST_DIR, g + ".elf"), g, sizes[g], args.timeout, stats=True, tag="stats")
            per[g] = r.counters if r.ok else None
            c = per[g]
            if c is None:
                rows.append([g, "no counters" if r.ok else r.note] + [""] * len(SHOWN_COUNTERS))
                continue
            rate = tc_hit_rate(c)
            rows.append([g, "%.3f%%" % (100 * rate) if rate is not None else "-"] +
                        [str(c[k]) if k in c else "-" for k in SHOWN_COUNTERS])
        out[mv.label] = per
        if rows:
            print("\n-- %s counters (modevisor run --stats --json); TC hit = cache hits / counted block entries, a lower "
                  "bound: entries through chained jumps are not counted --" % mv.label)
            print_table(["guest", "TC hit"] + SHOWN_COUNTERS, rows)
    return out


# ------------------------------------------------------------------ nano suite
def parse_nano(text):
    ops = {}
    for l in text.splitlines():
        m = NB_LINE.match(l)
        if m:
            ops[m.group(1)] = {"iterations": int(m.group(2)),
                               "handler": int(m.group(3)) if m.group(3) else None,
                               "cycles": float(m.group(4)) if m.group(4) else None}
            continue
        m = NB_SKIP.match(l)
        if m:
            ops[m.group(1)] = {"skipped": m.group(2)}
    return ops


def host_nano(args):
    """Compile bench/host_nano.c (x86-64 Linux only) and run it."""
    if platform.machine() not in ("x86_64", "AMD64") or not sys.platform.startswith("linux"):
        return {}, "host analogues need x86-64 Linux"
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if not cc:
        return {}, "no C compiler for bench/host_nano.c"
    exe = os.path.join(args.work_dir, "host_nano")
    src = os.path.join(HERE, "host_nano.c")
    if not os.path.exists(exe) or os.path.getmtime(exe) < os.path.getmtime(src):
        p = subprocess.run([cc, "-O2", "-o", exe, src], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if p.returncode != 0:
            return {}, "host_nano.c did not compile: " + p.stdout.decode()[:300]
    rc, dt, out, err = run_timed([exe, "count=%d" % args.nano_count, "trials=%d" % args.nano_trials], args.timeout)
    ops = {}
    for l in out.splitlines():
        m = re.match(r"host TSC: ([\d.]+) GHz", l)
        if m:
            args.tsc_ghz = float(m.group(1))
        m = HOST_LINE.match(l)
        if m:
            ops[m.group(1)] = {"iterations": int(m.group(2)), "cycles": float(m.group(3)), "what": m.group(4)}
    if rc != 0:
        return ops, "host_nano exit %s: %s" % (rc, (out + err).strip()[-200:])
    return ops, ""


def nano_suite(args, mv_runners):
    elf = os.path.join(GUEST_DIR, "nanobench.elf")
    cmdline = "timing=1 count=%d trials=%d" % (args.nano_count, args.nano_trials)
    notes, columns = [], {}
    host_ops, note = host_nano(args)
    columns["host analogue"] = host_ops
    if note:
        notes.append("host analogue: " + note)
    def repeated(label, run_once):
        """args.nano_runs runs of the guest; per op the minimum over runs. Any failed run voids the column."""
        best, runs = {}, []
        for i in range(args.nano_runs):
            log("nano: %-9s %s (run %d/%d)" % (label, cmdline, i + 1, args.nano_runs))
            r = run_once()
            if not r.ok:
                notes.append("%s: %s" % (label, r.note))
                return {}, runs
            ops = parse_nano(r.text)
            runs.append(ops)
            for op, c in ops.items():
                if op not in best or (c.get("cycles") is not None and c["cycles"] < best[op].get("cycles", 1e300)):
                    best[op] = c
        return best, runs

    all_runs = {}
    qemu = Qemu(GUEST_DIR)
    if qemu.available():
        columns["QEMU"], all_runs["QEMU"] = repeated("QEMU", lambda: qemu.run("nanobench", cmdline, args.timeout))
    counters = {}
    for mv in mv_runners:
        columns[mv.label], all_runs[mv.label] = repeated(
            mv.label, lambda: mv.run_elf(elf, "nanobench", cmdline, args.timeout, tag="nano"))
        if not columns[mv.label]:
            continue
        # Per-op counters: (C(2N) - C(N)) / N with only=<op>, so boot and
        # baseline loops cancel out.
        per_op, n = {}, args.counter_count
        for op in NANO_OPS:
            c = []
            for mult in (1, 2):
                rr = mv.run_elf(elf, "nanobench", "only=%s count=%d trials=1" % (op, n * mult), args.timeout,
                                stats=True, tag="ctr")
                c.append(rr.counters if rr.ok else None)
            if c[0] is None or c[1] is None:
                per_op[op] = None
                continue
            per_op[op] = {k: (c[1].get(k, 0) - c[0].get(k, 0)) / n for k in set(c[0]) | set(c[1])}
        if all(v is None for v in per_op.values()):
            notes.append("%s: no counters in `modevisor run --stats --json` output" % mv.label)
            per_op = None
        counters[mv.label] = per_op
    # Host-kernel entries per op under BT (system calls and host signals,
    # which show up as rt_sigreturn), counted by strace the same way:
    # (calls(2N) - calls(N)) / N with only=<op>.
    entries = {}
    if columns.get("BT") and shutil.which("strace"):
        import kernel_entries
        n = args.kernel_entries_count
        with tempfile.TemporaryDirectory(dir=args.work_dir) as d:
            for op in NANO_OPS:
                try:
                    c1 = kernel_entries.run(os.path.abspath(args.build), pathlib.Path(d), op, n)
                    c2 = kernel_entries.run(os.path.abspath(args.build), pathlib.Path(d), op, 2 * n)
                except SystemExit as e:
                    notes.append("kernel entries of %s: %s" % (op, str(e)[:200]))
                    continue
                entries[op] = {k: (c2.get(k, 0) - c1.get(k, 0)) / n for k in set(c1) | set(c2)}
    elif columns.get("BT"):
        notes.append("BT kernel entries/op: strace not found")
    labels = list(columns)
    ratio = "BT" in columns and "QEMU" in columns
    header = (["op"] + ["%s cyc/op" % l for l in labels] + (["BT/QEMU"] if ratio else []) +
              (["BT kernel entries/op"] if entries else []) + ["%s counters/op" % m for m in counters])
    rows = []
    for op in NANO_OPS:
        row = [op]
        for l in labels:
            c = columns[l].get(op)
            if not c:
                mv = [m for m in mv_runners if m.label == l and m.not_runnable]
                row.append("n/a" if l == "host analogue" else mv[0].not_runnable.split(" (")[0] if mv else "-")
            elif "skipped" in c:
                row.append("skipped")
            elif c.get("cycles") is None:
                row.append("-")
            else:
                row.append("%.1f" % c["cycles"])
        if ratio:
            bt, q = columns["BT"].get(op) or {}, columns["QEMU"].get(op) or {}
            row.append("%.2f" % (bt["cycles"] / q["cycles"]) if bt.get("cycles") and q.get("cycles") else "-")
        if entries:
            e = entries.get(op)
            if e is None:
                row.append("-")
            else:
                detail = " ".join("%s=%.2f" % (k, v) for k, v in sorted(e.items(), key=lambda kv: -kv[1])
                                  if abs(v) >= 0.05)
                total = sum(e.values())
                row.append("%.2f%s" % (total if abs(total) >= 0.005 else 0.0, " (" + detail + ")" if detail else ""))
        for m, per_op in counters.items():
            v = (per_op or {}).get(op)
            row.append(" ".join("%s=%.2f" % (k, x) for k, x in sorted(v.items()) if abs(x) >= 0.005) if v else "-")
        rows.append(row)
    print("\n== nanobench: cycles per operation (rdtsc, minus empty-loop baseline; count=%d, "
          "best of %d trials x %d runs) ==" % (args.nano_count, args.nano_trials, args.nano_runs))
    print_table(header, rows)
    if getattr(args, "tsc_ghz", None):
        print("cycles are TSC ticks (%.3f GHz on this host; QEMU TCG's rdtsc reads the host TSC): "
              "ns = cycles / %.3f" % (args.tsc_ghz, args.tsc_ghz))
    if host_ops:
        print("host analogue column: a Linux user process doing the nearest thing it can, NOT the guest op:")
        for op, c in host_ops.items():
            print("  %-8s %s" % (op, c["what"]))
    for mv in mv_runners:
        if mv.not_runnable and not any(mv.label in n for n in notes):
            notes.append("%s: %s" % (mv.label, mv.not_runnable))
    for n in notes:
        print("note: " + n)
    return {"cmdline": cmdline, "runs": args.nano_runs, "all_runs": all_runs,
            "tsc_ghz": getattr(args, "tsc_ghz", None), "columns": columns, "counters": counters,
            "bt_kernel_entries": entries, "notes": notes}


# ------------------------------------------------------------------ main
def machine_info():
    info = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "nproc": os.cpu_count(),
            "python": platform.python_version()}
    try:
        info["loadavg_start"] = os.getloadavg()
    except OSError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for l in f:
                if l.startswith("model name"):
                    info["cpu"] = l.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        q = subprocess.run([os.environ.get("QEMU", "qemu-system-i386"), "--version"], stdout=subprocess.PIPE)
        info["qemu"] = q.stdout.decode().splitlines()[0]
    except (OSError, IndexError):
        pass
    try:
        g = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], stdout=subprocess.PIPE)
        info["git"] = g.stdout.decode().strip()
    except OSError:
        pass
    return info


def main():
    global GUEST_DIR
    argv = sys.argv[1:]
    for i, a in enumerate(argv):
        if a == "--suite" and argv[i + 1:i + 2] == ["exits"] or a == "--suite=exits":
            import exits  # its own options; --build is shared
            return exits.main(argv[:i] + argv[i + (1 if "=" in a else 2):])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(REPO, "build"), help="build tree (default: <repo>/build)")
    ap.add_argument("--quick", action="store_true", help="ctest-sized compute runs, k=1, short nanobench")
    ap.add_argument("-k", type=int, default=None, help="runs per cell, best is reported (default 3; 1 with --quick)")
    ap.add_argument("--suite", choices=["all", "compute", "compute64", "nano", "macro", "exits"], default="all",
                    help="all = compute + nano + macro (forkwait); compute64: the 64-bit compute guests under BT64 "
                         "vs native and QEMU TCG x86_64, and BT32 vs BT64 (not in all); exits: exits per op "
                         "(bench/exits.py, own options)")
    ap.add_argument("--guests", default=",".join(GUESTS), help="comma-separated compute guests")
    ap.add_argument("--modes", default="BT,HV,HWMMU", help="modevisor modes to try (comma-separated, '' for none)")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per run")
    ap.add_argument("--nano-count", type=int, default=None, help="nanobench iterations per op (default 20000; 5000 with --quick)")
    ap.add_argument("--nano-trials", type=int, default=None, help="nanobench trials per op, the minimum is reported (default 10; 5 with --quick)")
    ap.add_argument("--nano-runs", type=int, default=None,
                    help="nanobench guest runs per column, per-op minimum reported (default 3; 1 with --quick)")
    ap.add_argument("--counter-count", type=int, default=10000, help="iterations for the per-op counter runs")
    ap.add_argument("--kernel-entries-count", type=int, default=2000,
                    help="iterations for the per-op host-kernel entry counts under strace (BT)")
    ap.add_argument("--modevisor", default=None, help="modevisor binary (default <build>/bin/modevisor)")
    ap.add_argument("--out", default=None, help="JSON output file (default bench/results/bench-<time>.json)")
    args = ap.parse_args()
    args.k = args.k or (1 if args.quick else 3)
    args.nano_count = args.nano_count or (5000 if args.quick else 20000)
    args.nano_trials = args.nano_trials or (5 if args.quick else 10)
    args.nano_runs = args.nano_runs or (1 if args.quick else 3)
    args.guests = [g for g in args.guests.split(",") if g]
    for g in args.guests:
        if g not in GUESTS:
            ap.error("unknown guest %s (known: %s)" % (g, " ".join(GUESTS)))
    want = [m for m in args.modes.split(",") if m]
    for m in want:
        if m not in MODE_HINTS:
            ap.error("unknown mode %s (known: %s)" % (m, " ".join(MODE_HINTS)))
    GUEST_DIR = os.path.join(os.path.abspath(args.build), "guests")
    if not os.path.exists(os.path.join(GUEST_DIR, "nanobench.elf")):
        ap.error("%s has no guests: build first (ninja -C %s)" % (GUEST_DIR, args.build))
    args.work_dir = os.path.join(os.path.abspath(args.build), "bench")
    os.makedirs(args.work_dir, exist_ok=True)

    info = machine_info()
    print("modevisor benchmarks: %s, %s CPUs (%s), load %s, %s" % (
        info.get("date"), info.get("nproc"), info.get("cpu", "?"),
        " ".join("%.2f" % x for x in info.get("loadavg_start", ())), info.get("qemu", "no QEMU")))
    mv_exe = args.modevisor or os.path.join(os.path.abspath(args.build), "bin", "modevisor")
    if want:
        mv_runners, mv_notes = modevisor_modes(mv_exe, args.work_dir, want)
    else:
        mv_runners, mv_notes = [], ["modevisor: not run (--modes '')"]
    for n in mv_notes:
        print("note: " + n)
    report = {"machine": info, "modes": [m.label for m in mv_runners], "mode_notes": mv_notes}
    if args.suite in ("all", "compute"):
        report["compute"] = compute_suite(args, mv_runners)
    if args.suite == "compute64":
        report["compute64"] = compute64_suite(args, mv_exe)
    if args.suite in ("all", "nano"):
        report["nano"] = nano_suite(args, mv_runners)
    if args.suite in ("all", "macro"):
        report["macro"] = macro_suite(args, mv_runners)
    try:
        report["machine"]["loadavg_end"] = os.getloadavg()
    except OSError:
        pass
    out = args.out or os.path.join(HERE, "results", "bench-%s.json" % datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(report, f, indent=2, sort_keys=True)
    print("\nJSON: %s" % os.path.relpath(out))
    refused = ("not runnable yet", "no monitor mode can run it")
    failed = any(not c["ok"] and not c.get("note", "").startswith(refused)
                 for suite in ("compute", "compute64", "macro")
                 for g in report.get(suite, {}).get("results", {}).values() for c in g.values())
    failed = failed or any(": " in n and not n.split(": ", 1)[1].startswith(refused) and not n.startswith("host")
                           for n in report.get("nano", {}).get("notes", []))
    return 1 if failed else 0


GUEST_DIR = None
if __name__ == "__main__":
    sys.exit(main())
