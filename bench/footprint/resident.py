#!/usr/bin/env python3
"""Which code of a running process is resident: the pages of BINARY's
executable mapping present in PID's page tables (/proc/PID/pagemap), each
attributed to the symbol it falls in (`nm -C`) and summed by crate (the
first path segment of the demangled name).

    sudo bench/footprint/resident.py PID BINARY [--top 25]

File pages count in RSS once mapped, and the kernel maps the page-cache
pages around each fault (fault_around_bytes, 64 KiB): code a process never
ran shows up beside code it did. Needs root (pagemap's frame bits are not
needed, only the present bit, but the file is root-only for other users'
processes) and a binary with symbols (not stripped).
"""
import argparse
import bisect
import collections
import os
import re
import struct
import subprocess


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pid", type=int)
    parser.add_argument("binary")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    binary = os.path.realpath(args.binary)
    symbols = []
    nm = subprocess.run(["nm", "-C", "--defined-only", binary],
                        capture_output=True, text=True, check=True).stdout
    for line in nm.splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[1] in "tTwW":
            symbols.append((int(parts[0], 16), parts[2]))
    symbols.sort()
    addresses = [a for a, _ in symbols]
    maps = [line.split() for line in open(f"/proc/{args.pid}/maps")]
    mine = [m for m in maps if len(m) >= 6 and os.path.realpath(m[5]) == binary]
    # The load address: the mapping of file offset 0 (PIE).
    base = next(int(m[0].split("-")[0], 16) for m in mine if int(m[2], 16) == 0)
    by_crate = collections.Counter()
    total = 0
    with open(f"/proc/{args.pid}/pagemap", "rb") as pagemap:
        for m in mine:
            if "x" not in m[1]:
                continue
            start, end = (int(x, 16) for x in m[0].split("-"))
            for page in range(start, end, 4096):
                pagemap.seek(page // 4096 * 8)
                (entry,) = struct.unpack("Q", pagemap.read(8))
                if not entry >> 63:
                    continue
                total += 1
                i = bisect.bisect_right(addresses, page - base) - 1
                name = symbols[i][1].lstrip("<") if i >= 0 else "?"
                crate = re.match(r"([A-Za-z_0-9]+)::", name)
                by_crate[crate.group(1) if crate else name[:40]] += 1
    print(f"resident text: {total * 4} KiB")
    for crate, pages in by_crate.most_common(args.top):
        print(f"{pages * 4:8} KiB  {crate}")


if __name__ == "__main__":
    main()
