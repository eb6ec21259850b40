"""Connects to HOST:PORT every 10 ms (100 ms timeout each) for DURATION
seconds; prints `<CLOCK_MONOTONIC seconds> ok|fail` per attempt. Run inside
the client namespace; the clock is the machine's, so the bench can compare."""
import socket
import sys
import time

host, port, duration = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
end = time.monotonic() + duration
out = []
while time.monotonic() < end:
    start = time.monotonic()
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(0.1)
    try:
        s.connect((host, port))
        out.append(f"{start:.4f} ok")
    except OSError:
        out.append(f"{start:.4f} fail")
    finally:
        s.close()
    time.sleep(max(0.0, 0.01 - (time.monotonic() - start)))
print("\n".join(out), flush=True)
