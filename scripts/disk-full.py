#!/usr/bin/env python3
"""A full disk, for real: the release server on a small tmpfs (needs root to mount it).

Posts batches until the disk is full and posts are refused, checks that the refusals are the
documented 500 and store nothing, that reads and reservations go on and the server stays up,
then consumes the oldest messages (keeping two reserved, which retention moves) and checks
that posts resume by themselves, with no stray spare files left in the data directory.
Finally restarts the server and checks that every acknowledged message is there.

Usage: scripts/disk-full.py --bin target/release/ferromq [--size-mb 200] [--mount /tmp/ferromq-full]
       [--body-bytes 1000] [--consume pop|reserve-delete] [--kill] [--optional]
(`--body-bytes 100 --consume reserve-delete`: small messages, whose consumers' records take
about 30 % of what the messages took; the test suite runs this too, about 35 s.)
The test suite runs it with --optional: where no tmpfs can be mounted (not root, or a
container without the right), it says so and exits 0. Exit status 1 on any failure. Stdlib only.
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

PROJECT = "000000000000000000000001"
TOKEN = "diskfulltoken0001"


def call(port, method, path, body=None):
    url = f"http://127.0.0.1:{port}/3/projects/{PROJECT}/queues/{path}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={"Authorization": f"OAuth {TOKEN}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def metric(port, name):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics",
                                 headers={"Authorization": "OAuth diskfulladmin0001"})
    with urllib.request.urlopen(req, timeout=30) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return None


def start(binary, data, config, port, log):
    env = dict(os.environ, FERROMQ_ADMIN_TOKEN="diskfulladmin0001", FERROMQ_PROJECT_ID=PROJECT,
               FERROMQ_TOKEN=TOKEN, FERROMQ_LOG_LEVEL="info")
    p = subprocess.Popen([binary, "serve", "--data-dir", data, "--listen", f"127.0.0.1:{port}",
                          "--config", config], env=env, stdout=log, stderr=subprocess.STDOUT)
    for _ in range(200):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as r:
                if r.status == 200:
                    return p
        except OSError:
            pass
        if p.poll() is not None:
            sys.exit(f"the server exited at start (status {p.returncode})")
        time.sleep(0.05)
    sys.exit("the server did not become ready")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--size-mb", type=int, default=200)
    ap.add_argument("--mount", default="/tmp/ferromq-full")
    ap.add_argument("--port", type=int, default=0, help="default: a free one")
    ap.add_argument("--body-bytes", type=int, default=1000,
                    help="message body size (small ones make consumers' records weigh more)")
    ap.add_argument("--consume", choices=["pop", "reserve-delete"], default="pop",
                    help="pop: reserve with delete:true; reserve-delete: reserve 100, then "
                         "delete them by id and reservation id")
    ap.add_argument("--kill", action="store_true",
                    help="restart after a SIGKILL instead of a SIGTERM")
    ap.add_argument("--optional", action="store_true",
                    help="skip (exit 0) where no tmpfs can be mounted")
    a = ap.parse_args()
    if not a.port:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            a.port = sock.getsockname()[1]
    binary = os.path.abspath(a.bin)
    os.makedirs(a.mount, exist_ok=True)
    try:
        m = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={a.size_mb}m", "tmpfs", a.mount],
                           capture_output=True, text=True)
        why = None if m.returncode == 0 else (m.stderr or m.stdout).strip()
    except OSError as e:
        why = str(e)
    if why is not None:
        if a.optional:
            print(f"SKIPPED: cannot mount a tmpfs here ({why})")
            return
        sys.exit(f"cannot mount a tmpfs at {a.mount}: {why}")
    failures = []

    def check(ok, what):
        print(("ok   " if ok else "FAIL ") + what, flush=True)
        if not ok:
            failures.append(what)

    server = None
    log = None
    try:
        data = os.path.join(a.mount, "data")
        config = os.path.join(a.mount, "..", "ferromq-full.json")
        with open(config, "w") as f:
            json.dump({"sync": "always", "segment_bytes": 32 << 20}, f)
        log = open(os.path.join("/tmp", "ferromq-full.log"), "w")
        server = start(binary, data, config, a.port, log)
        batch = {"messages": [{"body": "x" * a.body_bytes} for _ in range(100)]}
        acked, refused, first_refusal = 0, 0, None
        for _ in range(10_000_000):
            s, v = call(a.port, "POST", "q/messages", batch)
            if s == 201:
                acked += len(v["ids"])
                continue
            refused += 1
            first_refusal = first_refusal or (s, v)
            if refused >= 20:
                break
        print(f"posted {acked} messages, then {refused} refusals", flush=True)
        s, v = first_refusal or (0, {})
        check(s == 500 and v.get("msg", "").startswith("Insufficient storage"),
              f"a post on a full disk gets 500 'Insufficient storage': {s} {v}")
        check(server.poll() is None, "the server is still running")
        s, info = call(a.port, "GET", "q")
        check(s == 200 and info["queue"]["size"] == acked,
              f"refused posts stored nothing: size {info.get('queue', {}).get('size')} vs {acked}")
        # The allocator tries again every 200 ms: failed tries would pile up by now.
        time.sleep(1)
        spares = [n for n in os.listdir(data) if n.startswith("spare-")]
        check(len(spares) <= 1, f"no failed spare left behind (at most one being tried): {spares}")
        s, v = call(a.port, "POST", "q/reservations", {"n": 2})
        check(s == 200 and len(v["messages"]) == 2, "two of the oldest messages reserved and kept")
        kept = {m["id"] for m in v["messages"]}
        consumed = 0

        def consume(upto):
            # Reserve 100 and delete them (in one call with `delete`, or by id); False once
            # a call fails or the queue is empty.
            nonlocal consumed
            while consumed < upto:
                pop = a.consume == "pop"
                s, v = call(a.port, "POST", "q/reservations", {"n": 100, "delete": pop})
                if s != 200 or not v["messages"]:
                    return False
                if not pop:
                    ids = [{"id": m["id"], "reservation_id": m["reservation_id"]}
                           for m in v["messages"]]
                    s, _ = call(a.port, "DELETE", "q/messages", {"ids": ids})
                    if s != 200:
                        return False
                consumed += len(v["messages"])
            return True

        consume(acked // 2)
        check(consumed >= acked // 2, f"consumers go on in the kept room: {consumed} consumed")
        # Posts resume once retention has dropped enough segments for the next segment's
        # file and the reserve: half the queue's segments emptied is enough but for the
        # messages at the edge of the last one (tiny messages make many). Consumers go on
        # meanwhile, a segment's tenth at a time.
        resumed = None
        for i in range(60):
            s, v = call(a.port, "POST", "q/messages", batch)
            if s == 201:
                resumed = i
                acked += len(v["ids"])
                break
            if not consume(consumed + acked // 50):
                time.sleep(0.5)
        check(resumed is not None,
              f"posts resume by themselves (after {resumed} tries, {consumed} consumed)")
        check(metric(a.port, "ferromq_reserve_segment") == 1,
              "posts resumed with the reserve segment held")
        more = 0
        for _ in range(200):
            s, v = call(a.port, "POST", "q/messages", batch)
            if s != 201:
                break
            more += len(v["ids"])
        acked += more
        print(f"then {more} more messages posted", flush=True)
        # Dropped segments waiting to be zeroed as spares are named `spare-2…` (at most 2);
        # besides them, the reserve (made from one of those, or new) and at most the one
        # spare being made.
        spares = [n for n in os.listdir(data) if n.startswith("spare-")]
        recycled = [n for n in spares if n.startswith("spare-2")]
        check(len(recycled) <= 3 and len(spares) <= 4,
              f"no stray spare file, only the reserve, the one being made and reused segments: {spares}")
        # With --kill the restart follows a SIGKILL: recovery on the full disk's files.
        server.send_signal(signal.SIGKILL if a.kill else signal.SIGTERM)
        server.wait(timeout=30)
        server = start(binary, data, config, a.port, log)
        s, info = call(a.port, "GET", "q")
        want = acked - consumed
        check(s == 200 and info["queue"]["size"] == want,
              f"after a restart every acknowledged message is there: {info.get('queue', {}).get('size')} vs {want}")
        for mid in kept:
            s, _ = call(a.port, "GET", f"q/messages/{mid}")
            check(s == 200, f"the kept message {mid} was moved, not lost")
    finally:
        if server is not None and server.poll() is None:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
        subprocess.run(["umount", a.mount], check=False)
        if log is not None and (failures or sys.exc_info()[0] is not None):
            # What the server said, but for its request lines: the cause of a stop.
            with open(log.name) as f:
                lines = [line for line in f if "msg=request" not in line]
            print("server log (no request lines), last 30:")
            sys.stdout.writelines(lines[-30:])
    print(f"failures {len(failures)}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
