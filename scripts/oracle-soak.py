#!/usr/bin/env python3
"""Targeted kill -9 soak for ferromq's storage engine (stdlib only).

Small segments, a workload that posts / reserves / deletes / releases / clears / deletes
queues (so retention drops and relocates segments, spares are recycled and the restart
index is rewritten often), SIGKILL at random moments, restart, and a check against an
oracle after every restart.

Usage: scripts/oracle-soak.py --bin target/release/ferromq --work DIR [--minutes M] [--sync always|never]
       [--kill-on time|index|spare] [--early-kill-p P]   (see --help). Not part of CI; ends by
       itself after --minutes, then drains every queue against the oracle. Exit status 1 on any
       failure. Written in session 7, used for the crash checks in benches/README.md.
"""
import argparse
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

PID_ = "0123456789abcdef01234567"
TOKEN = "soak-project-token-0123456789"
ADMIN = "soak-admin-token-0123456789ab"
HDR = {"Authorization": f"OAuth {TOKEN}", "Content-Type": "application/json"}


def qp(q):
    return f"/3/projects/{PID_}/queues/{q}"


class Gone(Exception):
    """The server went away mid-request."""


class Conn:
    def __init__(self, port, timeout=60):
        self.port = port
        self.timeout = timeout
        self.c = None

    def req(self, method, path, body=None, hdr=HDR):
        if self.c is None:
            self.c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        data = None if body is None else json.dumps(body).encode()
        try:
            self.c.request(method, path, body=data, headers=hdr)
            r = self.c.getresponse()
            raw = r.read()
        except (OSError, http.client.HTTPException) as e:
            self.close()
            raise Gone(str(e))
        try:
            v = json.loads(raw) if raw else None
        except ValueError:
            v = raw
        return r.status, v

    def close(self):
        if self.c is not None:
            try:
                self.c.close()
            except Exception:
                pass
        self.c = None


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Fail(Exception):
    pass


class Oracle:
    """What the server acknowledged. msgs: id -> [queue, body, state] with state one of
    'present', 'deleting' (delete sent, answer not seen), 'deleted'."""

    def __init__(self):
        self.lock = threading.Lock()
        self.msgs = {}
        # queue -> state: 'live', 'deleting' (delete sent, not answered), 'deleted',
        # 'creating' (PUT sent, not answered)
        self.queues = {}
        # queue -> list of bodies posted without a seen answer (ids unknown)
        self.inflight_posts = {}
        # queue -> count of unknown-id messages known to have survived
        self.unknown = {}
        # queue -> bodies -> True, for adoption by body when seen
        self.unknown_bodies = {}
        # queue -> messages a reserve-with-delete in flight may have taken
        self.rd_slack = {}
        # queue -> clear in flight: ids present when the clear was sent
        self.clearing = {}
        self.recent_deleted = []  # ids deleted since the last check (checked next time)

    def known_present(self, q):
        return [i for i, (qq, _, s) in self.msgs.items() if qq == q and s == "present"]


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


class Soak:
    def __init__(self, args):
        self.a = args
        self.rng = random.Random(args.seed)
        self.work = args.work
        self.data = os.path.join(self.work, "data")
        self.logs = os.path.join(self.work, "logs")
        os.makedirs(self.logs, exist_ok=True)
        self.port = free_port()
        self.proc = None
        self.starts = 0
        self.o = Oracle()
        self.stats = {"kills": 0, "restarts": 0, "posted": 0, "deleted": 0,
                      "index_loaded": 0, "index_absent": 0, "index_ignored": 0,
                      "torn_tail": 0, "undecided_deletes_resolved_present": 0,
                      "undecided_deletes_resolved_gone": 0, "inflight_posts_survived": 0,
                      "inflight_posts_lost": 0, "clears": 0, "queue_deletes": 0,
                      "rd": 0, "relocated": 0, "dropped": 0, "index_writes": 0,
                      "max_first_segment": 0, "max_last_segment": 0, "lost_allowed_never": 0}
        self.eph_no = 0
        self.seq = 0

    # ---- server ----
    def env(self):
        e = dict(os.environ)
        e.update({
            "FERROMQ_PROJECT_ID": PID_, "FERROMQ_TOKEN": TOKEN, "FERROMQ_ADMIN_TOKEN": ADMIN,
            "FERROMQ_SYNC": self.a.sync, "FERROMQ_SEGMENT_BYTES": str(self.a.segment_bytes),
            "FERROMQ_BODY_BYTES_MAX": str(self.a.body_max),
            "FERROMQ_LOG_LEVEL": "debug,hyper=info,h2=info,reqwest=info,tower=info,axum=info",
            "FERROMQ_LOG_REQUESTS_LEVEL": "off",
        })
        return e

    def start(self):
        path = os.path.join(self.logs, f"server-{self.starts:04d}.log")
        self.starts += 1
        self.logpath = path
        f = open(path, "w")
        self.proc = subprocess.Popen(
            [self.a.bin, "serve", "--data-dir", self.data, "--listen", f"127.0.0.1:{self.port}"],
            env=self.env(), stdout=subprocess.DEVNULL, stderr=f)
        f.close()
        with open(os.path.join(self.work, "pids"), "a") as pf:
            pf.write(f"{self.proc.pid}\n")
        deadline = time.time() + 90
        while time.time() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                raise Fail(f"server exited with {rc} at start; log {path}:\n" + self.tail(path))
            try:
                c = Conn(self.port, timeout=5)
                s, _ = c.req("GET", "/ready", hdr={})
                c.close()
                if s == 200:
                    return
            except Gone:
                pass
            time.sleep(0.05)
        raise Fail(f"server not ready in 90 s; log {path}:\n" + self.tail(path))

    def early_kill(self):
        """Starts the server and kills it during recovery / right after it."""
        path = os.path.join(self.logs, f"server-{self.starts:04d}-early.log")
        self.starts += 1
        f = open(path, "w")
        p = subprocess.Popen(
            [self.a.bin, "serve", "--data-dir", self.data, "--listen", f"127.0.0.1:{self.port}"],
            env=self.env(), stdout=subprocess.DEVNULL, stderr=f)
        f.close()
        with open(os.path.join(self.work, "pids"), "a") as pf:
            pf.write(f"{p.pid}\n")
        time.sleep(self.rng.uniform(0.0, 0.25))
        rc = p.poll()
        if rc is not None:
            raise Fail(f"server exited with {rc} at an early start; log {path}:\n" + self.tail(path))
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        self.stats["early_kills"] = self.stats.get("early_kills", 0) + 1
        bad = [l for l in open(path, errors="replace") if "lvl=crit" in l or "msg=panic" in l]
        if bad:
            raise Fail(f"early start log {path}: {bad}")

    def tail(self, path, n=40):
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])

    def kill(self):
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.stats["kills"] += 1

    def stop_clean(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                raise Fail("no clean stop within 60 s")

    def scan_log(self, path):
        """Facts from one server log; bad lines raise Fail."""
        bad = []
        with open(path, errors="replace") as f:
            for line in f:
                if "lvl=crit" in line or "lvl=eror" in line or "msg=panic" in line:
                    bad.append(line.rstrip())
                if "restart index loaded" in line:
                    self.stats["index_loaded"] += 1
                elif "no restart index" in line:
                    self.stats["index_absent"] += 1
                elif "restart index unusable" in line:
                    self.stats["index_ignored"] += 1
                    log("NOTE index ignored:", line.strip())
                if "torn_tail=true" in line:
                    self.stats["torn_tail"] += 1
                if "restart index written" in line:
                    self.stats["index_writes"] += 1
                m = re.search(r"segments_dropped=(\d+) messages_relocated=(\d+)", line)
                if m:
                    self.stats["dropped"] += int(m.group(1))
                    self.stats["relocated"] += int(m.group(2))
                if "maintenance failed" in line or "maintenance task panicked" in line:
                    bad.append(line.rstrip())
        return bad

    # ---- workload ----
    def body(self, q, tag):
        with self.o.lock:
            self.seq += 1
            n = self.seq
        pad = "x" * self.rng.randint(20, self.a.body_max - 80)
        return f"{q}|{tag}|{n}|{pad}"

    def post(self, c, q, k):
        bodies = [self.body(q, "p") for _ in range(k)]
        o = self.o
        with o.lock:
            fl = o.inflight_posts.setdefault(q, set())
            fl.update(bodies)
        s, v = c.req("POST", qp(q) + "/messages", {"messages": [{"body": b} for b in bodies]})
        if s != 201:
            raise Fail(f"post to {q}: {s} {v}")
        with o.lock:
            fl = o.inflight_posts[q]
            for i, b in zip(v["ids"], bodies):
                fl.discard(b)
                if i not in o.msgs:  # a consumer may have seen (and adopted) it first
                    o.msgs[i] = [q, b, "present"]
            self.stats["posted"] += len(bodies)
        return v["ids"]

    def adopt(self, q, m):
        """A message seen in a reserve: known, or an unknown survivor of a lost post."""
        o = self.o
        with o.lock:
            rec = o.msgs.get(m["id"])
            if rec is None and m["body"] in o.inflight_posts.get(q, ()):
                # durable post whose 201 the producer has not processed yet
                o.inflight_posts[q].discard(m["body"])
                rec = o.msgs[m["id"]] = [q, m["body"], "present"]
            if rec is None:
                ub = o.unknown_bodies.get(q, {})
                if m["body"] in ub:
                    del ub[m["body"]]
                    o.unknown[q] -= 1
                    o.msgs[m["id"]] = [q, m["body"], "present"]
                    return True
                raise Fail(f"reserve on {q} returned unknown message {m['id']} body {m['body'][:40]!r}")
            if rec[0] != q or rec[1] != m["body"]:
                raise Fail(f"reserve on {q}: message {m['id']} is {rec[0]}/{rec[1][:40]!r}, got {m['body'][:40]!r}")
            if rec[2] == "deleted":
                raise Fail(f"reserve on {q} returned deleted message {m['id']}")
            return True

    def delete_ids(self, c, q, items):
        """items: [(id, rid or None)]"""
        o = self.o
        with o.lock:
            for i, _ in items:
                o.msgs[i][2] = "deleting"
        if len(items) == 1 and self.rng.random() < 0.5:
            i, rid = items[0]
            s, v = c.req("DELETE", qp(q) + f"/messages/{i}", {"reservation_id": rid} if rid else {})
        else:
            s, v = c.req("DELETE", qp(q) + "/messages",
                         {"ids": [({"id": i, "reservation_id": r} if r else {"id": i}) for i, r in items]})
        if s != 200:
            raise Fail(f"delete on {q} {items[:3]}: {s} {v}")
        with o.lock:
            for i, _ in items:
                o.msgs[i][2] = "deleted"
                o.recent_deleted.append(i)
            self.stats["deleted"] += len(items)

    def w_producer(self, c, stop, q):
        backlog, k = 0, 0
        while not stop.is_set():
            if k % 10 == 0:
                with self.o.lock:
                    backlog = sum(1 for rec in self.o.msgs.values() if rec[0] == q and rec[2] == "present")
            k += 1
            if backlog > self.a.churn_cap:
                time.sleep(0.2)
                continue
            self.post(c, q, self.rng.choice([1, 5, 20, 50, 100]))

    def w_consumer(self, c, stop, q):
        r = self.rng
        while not stop.is_set():
            s, v = c.req("POST", qp(q) + "/reservations",
                         {"n": r.randint(1, 100), "timeout": r.choice([5, 10, 20])})
            if s != 200:
                raise Fail(f"reserve {q}: {s} {v}")
            msgs = v["messages"]
            for m in msgs:
                self.adopt(q, m)
            if not msgs:
                time.sleep(0.01)
                continue
            # most deleted, some released, some left to time out
            dele, rel = [], []
            for m in msgs:
                x = r.random()
                if x < 0.85:
                    dele.append((m["id"], m["reservation_id"]))
                elif x < 0.93:
                    rel.append(m)
            for k in range(0, len(dele), 100):
                self.delete_ids(c, q, dele[k:k + 100])
            for m in rel[:5]:
                s, v = c.req("POST", qp(q) + f"/messages/{m['id']}/release",
                             {"reservation_id": m["reservation_id"], "delay": 0})
                if s != 200:
                    raise Fail(f"release {q}: {s} {v}")

    def w_sticky(self, c, stop, q):
        """Long-lived messages (live data in old segments: relocation); random deletes by
        id without reservation once above a cap."""
        r = self.rng
        while not stop.is_set():
            self.post(c, q, r.choice([1, 10, 50]))
            with self.o.lock:
                present = self.o.known_present(q)
            if len(present) > self.a.sticky_cap:
                pick = r.sample(present, min(len(present), r.randint(1, 60)))
                self.delete_ids(c, q, [(i, None) for i in pick])
            time.sleep(0.02)

    def w_rd(self, c, stop, q):
        """Posts then reserve with delete=true (the answer names what was taken)."""
        r = self.rng
        o = self.o
        while not stop.is_set():
            self.post(c, q, r.choice([10, 30]))
            n = r.randint(1, 40)
            with o.lock:
                o.rd_slack[q] = o.rd_slack.get(q, 0) + n
            s, v = c.req("POST", qp(q) + "/reservations", {"n": n, "delete": True})
            if s != 200:
                raise Fail(f"reserve-delete {q}: {s} {v}")
            for m in v["messages"]:
                self.adopt(q, m)
            with o.lock:
                o.rd_slack[q] -= n
                for m in v["messages"]:
                    o.msgs[m["id"]][2] = "deleted"
                    o.recent_deleted.append(m["id"])
                self.stats["rd"] += len(v["messages"])

    def w_clear(self, c, stop, q):
        r = self.rng
        o = self.o
        while not stop.is_set():
            self.post(c, q, r.choice([5, 40]))
            if r.random() < 0.15:
                with o.lock:
                    ids = o.known_present(q)
                    o.clearing[q] = ids
                    for i in ids:
                        o.msgs[i][2] = "deleting"
                s, v = c.req("DELETE", qp(q) + "/messages", {})
                if s != 200:
                    raise Fail(f"clear {q}: {s} {v}")
                with o.lock:
                    for i in ids:
                        o.msgs[i][2] = "deleted"
                        o.recent_deleted.append(i)
                    del o.clearing[q]
                    # The clear took the survivors of lost posts (ids unknown) too.
                    o.unknown[q] = 0
                    o.unknown_bodies.pop(q, None)
                    self.stats["clears"] += 1
            time.sleep(0.01)

    def w_ephemeral(self, c, stop):
        r = self.rng
        o = self.o
        while not stop.is_set():
            with o.lock:
                self.eph_no += 1
                q = f"eph-{self.eph_no}"
                o.queues[q] = "creating"
            s, v = c.req("PUT", qp(q), {})
            if s not in (200, 201):
                raise Fail(f"create {q}: {s} {v}")
            with o.lock:
                o.queues[q] = "live"
            for _ in range(r.randint(1, 4)):
                self.post(c, q, r.choice([5, 50]))
            time.sleep(r.random() * 0.3)
            with o.lock:
                o.queues[q] = "deleting"
            s, v = c.req("DELETE", qp(q))
            if s != 200:
                raise Fail(f"delete queue {q}: {s} {v}")
            with o.lock:
                o.queues[q] = "deleted"
                for rec in o.msgs.values():
                    if rec[0] == q:
                        rec[2] = "qdeleted"
                self.stats["queue_deletes"] += 1

    def watch_and_wait(self, seconds, stop):
        """Returns at an index write (index.idx.tmp being rewritten) or a spare being
        made from a dropped segment, plus a random 0-15 ms, or after `seconds` * 3."""
        tmp = os.path.join(self.data, "index.idx.tmp")
        def mt():
            try:
                return os.stat(tmp).st_mtime_ns
            except OSError:
                return 0
        def spares():
            try:
                return {n for n in os.listdir(self.data) if n.startswith("spare-2")}
            except OSError:
                return set()
        base_t, base_s = mt(), spares()
        t0 = time.time()
        time.sleep(self.rng.uniform(0.2, 1.0))
        base_t, base_s = max(base_t, mt()), spares()
        while time.time() - t0 < seconds * 3 and not stop.is_set():
            if self.a.kill_on == "index":
                m = mt()
                if m > base_t:
                    time.sleep(self.rng.uniform(0, 0.015))
                    self.stats["watch_hits"] = self.stats.get("watch_hits", 0) + 1
                    return
            else:
                sp = spares()
                if sp - base_s:
                    time.sleep(self.rng.uniform(0, 0.03))
                    self.stats["watch_hits"] = self.stats.get("watch_hits", 0) + 1
                    return
                base_s = sp
            time.sleep(0.0005)
        self.stats["watch_misses"] = self.stats.get("watch_misses", 0) + 1

    def run_load(self, seconds, kill=True, during=None):
        stop = threading.Event()
        errors = []

        def wrap(fn, *args):
            c = Conn(self.port)
            try:
                fn(c, stop, *args)
            except Gone:
                pass
            except Fail as e:
                errors.append(str(e))
                stop.set()
            except Exception as e:  # noqa
                import traceback
                errors.append("exception: " + traceback.format_exc())
                stop.set()
            finally:
                c.close()

        ts = [threading.Thread(target=wrap, args=a) for a in [
            (self.w_producer, "churn"), (self.w_producer, "churn"),
            (self.w_consumer, "churn"), (self.w_consumer, "churn"),
            (self.w_sticky, "sticky"), (self.w_rd, "rdq"), (self.w_clear, "clearq"),
            (self.w_ephemeral,)]]
        for t in ts:
            t.start()
        t0 = time.time()
        if self.a.kill_on in ("index", "spare") and kill:
            self.watch_and_wait(seconds, stop)
        while time.time() - t0 < seconds and not stop.is_set() and not (self.a.kill_on in ("index", "spare") and kill):
            time.sleep(0.01)
        if during is not None and not stop.is_set():
            during()
        # kill while the load is running
        if kill:
            self.kill()
        stop.set()
        for t in ts:
            t.join(120)
            if t.is_alive():
                errors.append("a load thread did not stop")
        return errors

    # ---- checks ----
    def verify(self, strict):
        """After a restart. strict: every acknowledged change must be there (sync=always);
        else only resolve the oracle to what the server has (data loss allowed)."""
        o = self.o
        errs = []
        c = Conn(self.port)
        # queues
        with o.lock:
            queues = dict(o.queues)
        for q, st in queues.items():
            s, v = c.req("GET", qp(q))
            if st == "live" and s != 200:
                if strict:
                    errs.append(f"queue {q} (created, acknowledged) missing: {s} {v}")
                else:
                    self.stats["queue_lost_allowed_never"] = self.stats.get("queue_lost_allowed_never", 0) + 1
                    o.queues[q] = "deleted"
                    self._drop_queue_msgs(q)
            elif st == "deleted" and s != 404:
                if strict:
                    errs.append(f"queue {q} deleted (acknowledged) is back: {s} {v}")
                else:
                    self.stats["queue_back_allowed_never"] = self.stats.get("queue_back_allowed_never", 0) + 1
                    o.queues[q] = "live"  # resurrected by loss of the delete; adopt
                    self._adopt_queue_back(q)
            elif st in ("deleting", "creating"):
                if s == 200:
                    o.queues[q] = "live"
                    if st == "deleting":
                        for rec in o.msgs.values():
                            if rec[0] == q and rec[2] == "qdeleted":
                                rec[2] = "present"
                else:
                    o.queues[q] = "deleted"
                    self._drop_queue_msgs(q)
        # messages
        with o.lock:
            items = [(i, list(rec)) for i, rec in o.msgs.items()
                     if rec[2] in ("present", "deleting")]
            recent = set(o.recent_deleted)
            o.recent_deleted = []
            old_deleted = [i for i, rec in o.msgs.items() if rec[2] == "deleted" and i not in recent]
        sample = self.rng.sample(old_deleted, min(len(old_deleted), self.a.deleted_sample))
        to_check_deleted = list(recent) + sample
        # a reserve-with-delete in flight may have taken up to rd_slack messages of its queue
        slack = dict(o.rd_slack)
        missing_rd = {}
        clearing = dict(o.clearing)
        clear_seen = {}
        for i, (q, body, st) in items:
            if o.queues.get(q) != "live":
                continue
            s, v = c.req("GET", qp(q) + f"/messages/{i}")
            if s == 200:
                if v["message"]["body"] != body:
                    errs.append(f"{q}/{i}: body differs")
                if st == "deleting":
                    o.msgs[i][2] = "present"
                    self.stats["undecided_deletes_resolved_present"] += 1
                    if q in clearing:
                        clear_seen.setdefault(q, set()).add("present")
            elif s == 404:
                if st == "deleting":
                    o.msgs[i][2] = "deleted"
                    self.stats["undecided_deletes_resolved_gone"] += 1
                    if q in clearing:
                        clear_seen.setdefault(q, set()).add("gone")
                elif q in slack and slack[q] > 0:
                    missing_rd[q] = missing_rd.get(q, 0) + 1
                    o.msgs[i][2] = "deleted"
                elif strict:
                    errs.append(f"acknowledged message {q}/{i} lost: {s} {v}")
                else:
                    o.msgs[i][2] = "deleted"
                    self.stats["lost_allowed_never"] += 1
            else:
                errs.append(f"GET {q}/{i}: {s} {v}")
        for q, n in missing_rd.items():
            if n > slack[q]:
                errs.append(f"{q}: {n} messages missing, but reserve-deletes in flight took at most {slack[q]}")
        for q, seen in clear_seen.items():
            if len(seen) > 1:
                errs.append(f"{q}: a clear in flight at the kill was applied partly: {seen}")
        deleted_back = 0
        for i in to_check_deleted:
            q = o.msgs[i][0]
            if o.queues.get(q) != "live":
                continue
            s, v = c.req("GET", qp(q) + f"/messages/{i}")
            if s == 200:
                if strict:
                    errs.append(f"acknowledged delete undone: {q}/{i}")
                else:
                    o.msgs[i][2] = "present"
                    self.stats["resurrected_allowed_never"] = self.stats.get("resurrected_allowed_never", 0) + 1
                deleted_back += 1
            elif s != 404:
                errs.append(f"GET deleted {q}/{i}: {s} {v}")
        o.rd_slack = {}
        o.clearing = {}
        # sizes: known present + unknown survivors of lost posts
        for q, st in list(o.queues.items()):
            if st != "live":
                continue
            s, v = c.req("GET", qp(q))
            if s != 200:
                errs.append(f"GET queue {q}: {s} {v}")
                continue
            size = v["queue"]["size"]
            known = sum(1 for rec in o.msgs.values() if rec[0] == q and rec[2] == "present")
            prev_unknown = o.unknown.get(q, 0)
            inflight = o.inflight_posts.get(q, set())
            rd_left = slack.get(q, 0) - missing_rd.get(q, 0)
            # A clear in flight at the kill may have taken the unknown survivors too.
            pu_lo = 0 if q in clearing else prev_unknown
            lo, hi = known + pu_lo - max(0, rd_left), known + prev_unknown + len(inflight)
            if strict and not (lo <= size <= hi):
                errs.append(f"queue {q}: size {size}, expected {lo}..{hi} (known {known}, "
                            f"unknown survivors {prev_unknown}, posts in flight {len(inflight)}, "
                            f"reserve-delete slack {rd_left})")
            unknown = max(0, size - known)
            if inflight:
                survived = max(0, min(unknown - prev_unknown, len(inflight)))
                self.stats["inflight_posts_survived"] += survived
                self.stats["inflight_posts_lost"] += len(inflight) - survived
                if survived:
                    ub = o.unknown_bodies.setdefault(q, {})
                    for b in inflight:
                        ub[b] = True
            o.unknown[q] = unknown
            o.inflight_posts[q] = set()
        # queues that should not exist: list
        s, v = c.req("GET", f"/3/projects/{PID_}/queues?per_page=100")
        c.close()
        return errs, len(items), len(to_check_deleted)

    def _drop_queue_msgs(self, q):
        for rec in self.o.msgs.values():
            if rec[0] == q:
                rec[2] = "qdeleted"

    def _adopt_queue_back(self, q):
        for rec in self.o.msgs.values():
            if rec[0] == q and rec[2] == "qdeleted":
                rec[2] = "present"

    def drain_and_stop(self, label):
        """A full drain against the oracle, a clean stop, the server log scanned: failures."""
        failures = []
        errs = self.final_drain()
        if errs:
            failures.append(f"{label} drain: " + "\n  ".join(errs[:30]))
        self.stop_clean()
        bad = self.scan_log(self.logpath)
        if bad:
            failures.append(f"{label} log: " + "\n".join(bad))
        return failures

    def final_drain(self):
        """Wait out the reservations, then reserve everything from every live queue and
        compare the id sets exactly with the oracle; every deleted id: 404."""
        o = self.o
        c = Conn(self.port)
        errs = []
        time.sleep(22)
        total = 0
        for q, st in sorted(o.queues.items()):
            if st != "live":
                continue
            s, v = c.req("GET", qp(q))
            size = v["queue"]["size"]
            got = {}
            while True:
                s, v = c.req("POST", qp(q) + "/reservations", {"n": 100, "timeout": 3600})
                if s != 200:
                    errs.append(f"drain {q}: {s} {v}")
                    break
                if not v["messages"]:
                    break
                for m in v["messages"]:
                    if m["id"] in got:
                        errs.append(f"drain {q}: {m['id']} twice")
                    got[m["id"]] = m["body"]
            expect = {i: rec[1] for i, rec in o.msgs.items() if rec[0] == q and rec[2] == "present"}
            ub = o.unknown_bodies.get(q, {})
            extra = {i: b for i, b in got.items() if i not in expect}
            adopted = sum(1 for b in extra.values() if b in ub)
            unexplained = [i for i, b in extra.items() if b not in ub]
            missing = [i for i in expect if i not in got]
            wrong = [i for i in expect if i in got and got[i] != expect[i]]
            if unexplained:
                errs.append(f"drain {q}: {len(unexplained)} messages not in the oracle, e.g. {unexplained[:3]} "
                            f"deleted?={[o.msgs.get(i, ['?', '?', 'unknown'])[2] for i in unexplained[:3]]}")
            if missing:
                errs.append(f"drain {q}: {len(missing)} acknowledged messages not reserved, e.g. {missing[:3]}")
            if wrong:
                errs.append(f"drain {q}: bodies differ for {wrong[:3]}")
            if adopted != o.unknown.get(q, 0):
                errs.append(f"drain {q}: {adopted} survivors of lost posts, oracle counted {o.unknown.get(q, 0)}")
            if len(got) != size:
                errs.append(f"drain {q}: size said {size}, reserved {len(got)}")
            total += len(got)
            log(f"drain {q}: size {size}, reserved {len(got)}, expected {len(expect)} + {adopted} survivors of lost posts")
        # every deleted id gone
        n = 0
        for i, rec in o.msgs.items():
            if rec[2] == "deleted" and o.queues.get(rec[0]) == "live":
                s, v = c.req("GET", qp(rec[0]) + f"/messages/{i}")
                n += 1
                if s != 404:
                    errs.append(f"deleted {rec[0]}/{i} is back: {s}")
        log(f"final: {total} messages drained, {n} deleted ids checked 404")
        c.close()
        return errs

    def snapshot_dir(self):
        names = sorted(os.listdir(self.data))
        segs = [int(n.split(".")[0], 16) if False else n for n in names]
        seg_ids = []
        for n in names:
            m = re.match(r"^(\d+|[0-9a-f]+)\.(seg|log)$", n)
            if m:
                seg_ids.append(n)
        return names

    def main(self):
        a = self.a
        os.makedirs(self.data, exist_ok=True)
        self.start()
        c = Conn(self.port)
        for q in ["churn", "sticky", "rdq", "clearq"]:
            s, v = c.req("PUT", qp(q), {})
            assert s in (200, 201), (s, v)
            self.o.queues[q] = "live"
        c.close()
        strict = a.sync == "always"
        t_end = time.time() + a.minutes * 60
        rnd = 0
        failures = []
        while rnd < a.rounds and time.time() < t_end:
            dur = self.rng.uniform(0.02, 0.3) if self.rng.random() < 0.15 else self.rng.uniform(a.min_run, a.max_run)
            errs = self.run_load(dur)
            prev_log = self.logpath
            bad = self.scan_log(prev_log)
            if bad:
                errs += [f"log {prev_log}: {b}" for b in bad]
            files = sorted(os.listdir(self.data))
            prev = os.path.join(self.work, "data.before-restart")
            shutil.rmtree(prev, ignore_errors=True)
            shutil.copytree(self.data, prev)
            try:
                if self.rng.random() < a.early_kill_p:
                    self.early_kill()
                self.start()
            except Fail as e:
                failures.append(f"round {rnd}: {e}")
                log("FAIL", failures[-1])
                self.save_evidence(rnd, files)
                break
            self.stats["restarts"] += 1
            t0 = time.time()
            verrs, nchk, ndel = self.verify(strict)
            errs += verrs
            segs = [int(f[:-4], 16) if False else f for f in files]
            log(f"round {rnd}: ran {dur:.1f}s, files {len(files)} "
                f"[{', '.join(f for f in files if not f.startswith('00') or f == files[0])}] "
                f"checked {nchk} live/undecided + {ndel} deleted in {time.time()-t0:.1f}s; "
                f"posted {self.stats['posted']} deleted {self.stats['deleted']} rd {self.stats['rd']} "
                f"clears {self.stats['clears']} qdel {self.stats['queue_deletes']}")
            self.note_segments(files)
            if errs:
                failures.append(f"round {rnd}: " + "\n  ".join(errs[:30]))
                log("FAIL", failures[-1])
                self.save_evidence(rnd, files)
                break
            rnd += 1
        if not failures:
            failures += self.drain_and_stop("final")
        else:
            self.kill()
        log("stats", json.dumps(self.stats))
        log("rounds", rnd, "failures", len(failures))
        for f in failures:
            print(f)
        return 1 if failures else 0

    def note_segments(self, files):
        ids = []
        for f in files:
            m = re.match(r"^([0-9a-fA-F]+)\.", f)
            if m and not f.startswith("index"):
                try:
                    ids.append(int(m.group(1), 16))
                except ValueError:
                    pass
        if ids:
            self.stats["max_first_segment"] = max(self.stats["max_first_segment"], min(ids))
            self.stats["max_last_segment"] = max(self.stats["max_last_segment"], max(ids))

    def save_evidence(self, rnd, files):
        ev = os.path.join(self.work, f"evidence-round{rnd}")
        shutil.copytree(os.path.join(self.work, "data.before-restart"), ev)
        log("evidence: data dir as the kill left it:", files, "copied to", ev)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--rounds", type=int, default=1000)
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--sync", default="always")
    p.add_argument("--seed", type=int, default=int(time.time()))
    p.add_argument("--segment-bytes", type=int, default=1 << 20)
    p.add_argument("--body-max", type=int, default=1024)
    p.add_argument("--sticky-cap", type=int, default=3000)
    p.add_argument("--churn-cap", type=int, default=8000)
    p.add_argument("--deleted-sample", type=int, default=3000)
    p.add_argument("--min-run", type=float, default=0.3)
    p.add_argument("--early-kill-p", type=float, default=0.0)
    p.add_argument("--kill-on", default="time", choices=["time", "index", "spare"])
    p.add_argument("--max-run", type=float, default=6.0)
    a = p.parse_args()
    run(Soak, a)


def run(soak_class, a):
    """Runs a soak built from the parsed arguments `a`, kills its server if it is still up
    whatever happens, and exits with the soak's status."""
    log("seed", a.seed, vars(a))
    s = soak_class(a)
    try:
        rc = s.main()
    finally:
        if s.proc and s.proc.poll() is None:
            os.kill(s.proc.pid, signal.SIGKILL)
            s.proc.wait()
    sys.exit(rc)


if __name__ == "__main__":
    main()
