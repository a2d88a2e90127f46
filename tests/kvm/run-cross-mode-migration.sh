#!/bin/bash
# ctest "kvm_cross_mode_migration" (label kvm), and part 2 of
# scripts/demo-migration.sh: live migration across monitor modes and hosts.
#   host A: a modevisord on this machine (no usable KVM: bt-swmmu);
#   host B: a modevisord inside the KVM test host (scripts/kvm-host, kvm_amd
#           npt=1: hv-hwmmu), booted with QEMU user networking.
# The stamper guest, declared with `monitor: {virtual_exec: hardware}`,
# starts on A (the hint ignored, with the reason), moves to B (the hint
# honoured: hv-hwmmu), and comes back to A (ignored again).  Checked: every
# migration completed; the serial output of A, B, A together is byte for byte
# what an unmigrated run prints (one header, then tick 0, 1, 2, ... with no
# gap and no repeat); each host's VM log has its own MONITOR MODE lines; each
# host ran the VM in one stretch per visit.
# Traffic: A -> B through hostfwd (127.0.0.1:PORT_B on this machine); B -> A
# to 10.0.2.2:PORT_A, which slirp turns into a connection to this machine's
# 127.0.0.1:PORT_A.  Nothing leaves loopback here.
# Exit 77 (ctest SKIP_RETURN_CODE) with the reason when it cannot run here.
#   usage: run-cross-mode-migration.sh BUILD_DIR SOURCE_DIR
set -uo pipefail
BUILD=$(cd "$1" && pwd); SRC=$(cd "$2" && pwd)
bin=$BUILD/bin
skip() { echo "SKIPPED: $*"; exit 77; }
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
NAME=ticker

usable=$("$bin/modevisor" --json host 2>/dev/null |
         python3 -c 'import json,sys; print("yes" if json.load(sys.stdin)["driver"]["usable"] else "no")' 2>&1)
[ "$usable" = no ] || skip "this machine's KVM is usable ($usable): the VM would not start under bt-swmmu here"
command -v qemu-system-x86_64 >/dev/null || skip "no qemu-system-x86_64 to boot the KVM test host (apt-get install qemu-system-x86)"
OUT=$BUILD/kvm-host
"$SRC/scripts/kvm-host/build.sh" "$OUT" >/dev/null 2>&1 ||
  skip "the KVM test host cannot be built ($("$SRC/scripts/kvm-host/build.sh" "$OUT" 2>&1 | tail -1))"

W=$OUT/xmode-work
rm -rf "$W"; mkdir -p "$W/a"
a_dir=$(mktemp -d /tmp/modevisor-xmode-a.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  [ -n "${KEEP:-}" ] || rm -rf "$a_dir"
}
trap cleanup EXIT
. "$SRC/scripts/lib/migration-host.sh"
new_cluster_secret "$W/cluster.secret"
cp "$W/cluster.secret" "$a_dir/cluster.secret"; chmod 600 "$a_dir/cluster.secret"
PORT_A=$(free_port); PORT_B=$(free_port)
while [ "$PORT_B" = "$PORT_A" ]; do PORT_B=$(free_port); done

write_migration_host_yaml "$a_dir" host-a "127.0.0.1:$PORT_A" "$a_dir/cluster.secret" "$BUILD/plugins" \
  host-b "127.0.0.1:$PORT_B"
"$bin/modevisord" --config "$a_dir/host.yaml" > "$W/a/daemon.out" 2>&1 &
pids+=($!)
a() { "$bin/modevisor" --socket "$a_dir/control.sock" "$@"; }
for _ in $(seq 100); do a host >/dev/null 2>&1 && break; sleep 0.1; done
a host >/dev/null 2>&1 || { echo "FAIL: host A's modevisord did not start"; cat "$W/a/daemon.out"; exit 1; }

# The guest paces itself with the TSC rate it is given; inside the test host
# the TSC runs at another rate, which changes only how fast ticks come.
khz=$(awk '/cpu MHz/ {printf "%d\n", $4*1000; exit}' /proc/cpuinfo)
cat > "$W/$NAME.yaml" <<YAML
name: $NAME
guest:
  os: other-32
  kernel: $BUILD/guests/stamper.elf
  cmdline: "mib=1 rate=1 every=100 khz=${khz:-1000000}"
memory: 32MiB
cpu_model: portable-32   # a model both hosts present leaf for leaf
monitor:
  virtual_exec: hardware # impossible here (no usable KVM), possible in the test host
YAML

step "host A (this machine) starts $NAME, declared with virtual_exec: hardware"
a vm start "$W/$NAME.yaml" | grep -E '^(name|state|mode|plugin):'
a vm log "$NAME" | grep 'MONITOR MODE' | sed 's/^/  A: /'

step "boot the KVM test host (QEMU TCG, nested SVM, kvm_amd npt=1) with host B inside"
echo "hostfwd tcp:127.0.0.1:$PORT_B -> test host :$PORT_B; inside, host-a is 10.0.2.2:$PORT_A"
start=$(date +%s)
KVM_HOST_NET="hostfwd=tcp:127.0.0.1:$PORT_B-:$PORT_B" NPTS=1 \
  "$SRC/scripts/kvm-host/run.sh" -o "$OUT" -w "$W" -t "${KVM_HOST_TIMEOUT:-900}" -- \
  bash "$SRC/tests/kvm/cross-mode-host-b.sh" "$BUILD" "$W" "$PORT_B" "$PORT_A" "$NAME" > "$W/test-host.out" 2>&1 &
qemu_runner=$!
pids+=($qemu_runner)
until [ -f "$W/b-ready" ] || [ -f "$W/b-failed" ] || ! kill -0 "$qemu_runner" 2>/dev/null; do sleep 1; done
if [ ! -f "$W/b-ready" ]; then
  wait "$qemu_runner"; rc=$?
  cat "$W/test-host.out"
  [ "$rc" = 2 ] && skip "the KVM test host did not boot or did not report back (see above)"
  echo "FAIL: host B did not come up inside the test host: $(cat "$W/b-failed" 2>/dev/null)"; exit 1
fi
echo "host B is up after $(( $(date +%s) - start ))s"
sed 's/^/  B: /' "$W/b-host.txt" | grep -iE 'driver|kvm|npt|hv-hwmmu|usable' | head -8

# Let the guest print a few lines here first.
for _ in $(seq 300); do [ "$(a vm console --no-follow "$NAME" 2>/dev/null | grep -c '^tick ')" -ge 10 ] && break; sleep 0.2; done
step "migrate $NAME from host A (bt-swmmu) to host B (inside the test host)"
a --json migrate "$NAME" --to host-b > "$W/a-migrate.json" 2> "$W/a-migrate.err"
echo "exit status $?: $(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(", ".join(f"{k} {r.get(k)}" for k in ("outcome","mode","plugin","total_ms","downtime_ms","rounds","bytes_sent","pages_sent","zero_pages_elided")))' "$W/a-migrate.json" 2>&1)"
a vm console --no-follow "$NAME" > "$W/a-console-1.txt" 2>/dev/null
a vm log "$NAME" > "$W/a-log-1.txt" 2>/dev/null

step "host B runs it, then migrates it back to host A (10.0.2.2 from inside)"
wait "$qemu_runner"; qrc=$?
pids=("${pids[@]:0:1}")
grep -E '^(host-b|kvm-host):' "$W/test-host.out" | grep -v 'TCG doesn' | sed 's/^/  /'
echo "test host: $(( $(date +%s) - start ))s wall, run.sh status $qrc"
if [ ! -f "$W/b-migrate.json" ]; then
  cat "$W/test-host.out"
  [ "$qrc" = 2 ] && [ ! -f "$W/b-status.json" ] && skip "the KVM test host stopped before the VM arrived (see above)"
  echo "FAIL: host B never migrated the VM back"; exit 1
fi
echo "back: $(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(", ".join(f"{k} {r.get(k)}" for k in ("outcome","mode","plugin","total_ms","downtime_ms","rounds","bytes_sent","pages_sent","zero_pages_elided")))' "$W/b-migrate.json" 2>&1)"

# Let it print a few more lines back home.
for _ in $(seq 100); do [ "$(a vm console --no-follow "$NAME" 2>/dev/null | grep -c '^tick ')" -ge 5 ] && break; sleep 0.2; done
a vm console --no-follow "$NAME" > "$W/a-console-2.txt" 2>/dev/null
a vm log "$NAME" > "$W/a-log-2.txt" 2>/dev/null
a --json vm status "$NAME" > "$W/a-status.json" 2>/dev/null
cp "$a_dir/state/run-intervals.log" "$W/a-run-intervals.log" 2>/dev/null

step "host B's log of the VM (the test host's own MONITOR MODE lines)"
grep -E 'MONITOR MODE|migration (in|out)' "$W/b-log.txt" | sed 's/^/  B: /'
step "host A's log of the VM (start, then its return)"
grep -E 'MONITOR MODE|migration (in|out)' "$W/a-log-2.txt" | sed 's/^/  A: /'

step "checks"
python3 - "$W" <<'PY'
import json, re, sys
W = sys.argv[1]
def text(name):
    try:
        return open(f"{W}/{name}", errors="replace").read()
    except OSError:
        return ""
failures = []
def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok: failures.append(what)

there, back = json.loads(text("a-migrate.json") or "{}"), json.loads(text("b-migrate.json") or "{}")
check(there.get("outcome") == "completed", f"A -> B completed ({there.get('outcome')})")
check(str(there.get("plugin", "")).split(" ")[0] == "hv-hwmmu", f"B selected hv-hwmmu for it ({there.get('mode')}, {there.get('plugin')})")
check(back.get("outcome") == "completed", f"B -> A completed ({back.get('outcome')})")
check(str(back.get("plugin", "")).split(" ")[0] == "bt-swmmu", f"A selected bt-swmmu for it again ({back.get('mode')}, {back.get('plugin')})")

# Serial output: A's first stretch, B's stretch, A's second, as one stream,
# must be exactly what the guest prints when it never moves.
stream = text("a-console-1.txt") + text("b-console.txt") + text("a-console-2.txt")
lines = stream.split("\n")
header = lines[0]
ticks = [int(l[5:]) for l in lines[1:] if l.startswith("tick ")]
expected = header + "\n" + "".join(f"tick {i}\n" for i in range(len(ticks) + 1))
check(header.startswith("stamper: 256 pages"), f"one header line ({header!r})")
check(len(ticks) >= 20, f"{len(ticks)} tick lines in all")
check(stream == expected[:len(stream)], "A + B + A is byte for byte the unmigrated output (no gap, no repeat)")
seg = [len(re.findall(r"^tick ", text(f), re.M)) for f in ("a-console-1.txt", "b-console.txt", "a-console-2.txt")]
check(all(n > 0 for n in seg), f"tick lines printed on A, B, A: {seg}")

log_a1, log_b, log_a2 = text("a-log-1.txt"), text("b-log.txt"), text("a-log-2.txt")
hint_re = re.compile(r"MONITOR MODE: hint ignored\s*: monitor\.virtual_exec = hardware \((.*)\)")
def hint(text): return hint_re.search(text)
def selected(plugin, text): return re.search(r"MONITOR MODE: selected\s*: .*\(" + plugin + " ", text) is not None
check(hint(log_a1) is not None, "A's log: the hint ignored at start, with its reason")
check(selected("bt-swmmu", log_a1), "A's log: bt-swmmu selected at start")
check("migration in: VM ticker from host-a" in log_b, "B's log: migration in from host-a")
check(selected("hv-hwmmu", log_b), "B's log: hv-hwmmu selected")
allowed_b = re.search(r"MONITOR MODE: allowed modes\s*: (.*)", log_b)
requested_b = re.search(r"MONITOR MODE: user requested modes\s*: (.*)", log_b)
allowed_b = allowed_b.group(1).split() if allowed_b else []
requested_b = requested_b.group(1).split() if requested_b else []
check(hint(log_b) is None and requested_b != [] and requested_b != allowed_b and
      all(m.startswith(("HV", "HWMMU")) for m in requested_b),
      f"B's log: the hint honoured, no 'hint ignored' (allowed {allowed_b}, requested {requested_b})")
ret = log_a2.rfind("migration in: VM ticker from host-b")
check(ret >= 0, "A's log: migration in from host-b")
check(ret >= 0 and hint(log_a2[ret:]) is not None, "A's log: the hint ignored again after the return, with its reason")
check(ret >= 0 and selected("bt-swmmu", log_a2[ret:]),
      "A's log: bt-swmmu selected again after the return")
m = hint(log_a2[ret:]) if ret >= 0 else None
if m: print("     reason: " + m.group(1))

def intervals(name):
    out = []
    for l in text(name).split("\n"):
        f = l.split()
        if len(f) >= 4 and f[0] == "run": out.append([int(f[3]), None])
        elif len(f) >= 4 and out and out[-1][1] is None: out[-1][1] = int(f[3])
    return out
ia, ib = intervals("a-run-intervals.log"), intervals("b-run-intervals.log")
check(len(ia) == 2 and ia[0][1] is not None and ia[1][1] is None,
      f"A ran it in two stretches, the first ended, the second running ({ia})")
check(len(ib) == 1 and ib[0][1] is not None, f"B ran it in one stretch that ended ({ib})")
check(json.loads(text("a-status.json") or "{}").get("state") == "running", "the VM runs on A at the end")
check(json.loads(text("b-status-after.json") or "{}").get("state") != "running", "the VM no longer runs on B")
sys.exit(1 if failures else 0)
PY
rc=$?
a vm stop "$NAME" >/dev/null 2>&1
[ "$rc" = 0 ] || { echo "--- test host console ---"; cat "$W/test-host.out"; echo "--- host B daemon ---"; cat "$W/b-daemon.out" 2>/dev/null; }
exit $rc
