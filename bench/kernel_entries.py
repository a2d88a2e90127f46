#!/usr/bin/env python3
"""Host-kernel entries per nanobench operation under bt-swmmu.

For each op, runs `nanobench only=<op> count=N trials=1` and count=2N under
`strace -f -c` and prints (calls(2N) - calls(N)) / N per system call, so boot
and everything else cancel.  Host signals show up as rt_sigreturn (one per
handled signal).  Needs strace; not part of bench.py (strace slows the run).

usage: bench/kernel_entries.py [--build DIR] [--count N] [--ops op1,op2]
"""
import argparse
import pathlib
import re
import subprocess
import sys
import tempfile

OPS = ['syscall', 'sysenter', 'in', 'cr8wr', 'call/ret', 'pgfault', 'divzero', 'ptemod']


def run(build, tmp, op, n):
    yaml = tmp / 'vm.yaml'
    yaml.write_text(f'name: kernel-entries\nguest:\n  os: other-32\n  kernel: "{build}/guests/nanobench.elf"\n'
                    f'  cmdline: "only={op} count={n} trials=1"\nmemory: 128MiB\n'
                    'monitor:\n  virtual_exec: software\n  virtual_mmu: software\n')
    out = tmp / 'strace.txt'
    p = subprocess.run(['strace', '-f', '-c', '-o', str(out), f'{build}/bin/modevisor', '--json', '--log-dir',
                        str(tmp / 'logs'), 'run', str(yaml)], capture_output=True, text=True)
    if 'RESULT: PASS' not in p.stdout:
        sys.exit(f'{op} count={n}: the guest did not pass:\n{p.stdout[-2000:]}{p.stderr[-2000:]}')
    calls = {}
    for line in out.read_text().splitlines():
        m = re.match(r'\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)$', line)
        if m and m.group(2) != 'total':
            calls[m.group(2)] = int(m.group(1))
    return calls


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--build', default=str(pathlib.Path(__file__).resolve().parent.parent / 'build'))
    ap.add_argument('--count', type=int, default=2000)
    ap.add_argument('--ops', default=','.join(OPS))
    a = ap.parse_args()
    a.build = str(pathlib.Path(a.build).resolve())  # the VM file lives in a temporary directory
    with tempfile.TemporaryDirectory() as d:
        tmp = pathlib.Path(d)
        for op in a.ops.split(','):
            c1, c2 = run(a.build, tmp, op, a.count), run(a.build, tmp, op, 2 * a.count)
            per = {k: (c2.get(k, 0) - c1.get(k, 0)) / a.count for k in set(c1) | set(c2)}
            per = {k: v for k, v in per.items() if abs(v) >= 0.05}
            detail = ' '.join(f'{k}={v:.2f}' for k, v in sorted(per.items(), key=lambda kv: -kv[1]))
            print(f'{op:9s} {sum(per.values()):6.2f} per op  {detail}')


if __name__ == '__main__':
    main()
