#!/usr/bin/env python3
"""Print, for every test of the last ctest run that failed, the lines of its
output that say why (FAIL / Failure / error / Abort lines and what follows a
gtest failure), so the end of a long CI log names the causes.
usage: failure-digest.py BUILD_DIR"""
import re
import sys
from pathlib import Path

build = Path(sys.argv[1])
tmp = build / "Testing" / "Temporary"
failed_list = tmp / "LastTestsFailed.log"
if not failed_list.exists():
    sys.exit(0)
failed = [line.split(":", 1)[1].strip() for line in failed_list.read_text(errors="replace").splitlines() if ":" in line]
log = (tmp / "LastTest.log").read_text(errors="replace") if (tmp / "LastTest.log").exists() else ""
# Each test's section: from "<n>/<N> Test: NAME" to "<end of output>".
sections = {}
for m in re.finditer(r"^\d+/\d+ Test: (.+?)\n(.*?)^<end of output>", log, re.S | re.M):
    sections[m.group(1).strip()] = m.group(2)
why = re.compile(r"FAIL|Failure|failed|error:|ERROR|Abort|AddressSanitizer|runtime error|Timeout|timed out|SKIPPED:")
print(f"\n=== why {len(failed)} test(s) failed (lines from each one's output; whole output above) ===")
for name in failed:
    out = sections.get(name, "")
    lines = out.splitlines()
    picked = []
    for i, line in enumerate(lines):
        if why.search(line):
            picked.append(line)
            # a gtest failure's next lines hold expected/actual
            if "Failure" in line:
                picked.extend(lines[i + 1:i + 4])
    print(f"--- {name}: {len(lines)} output lines")
    for line in picked[-40:]:
        print("    " + line[:300])
