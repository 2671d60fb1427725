#!/usr/bin/env python3
"""Push-delivery crash soak for ferromq (stdlib only).

Runs in-process HTTP subscribers (a threading HTTP server) that record every delivery and
answer by a deterministic-random policy (mostly 2xx; some 500s and dropped connections, so
retries; some 202s acknowledged later by DELETE on Iron-Subscriber-Message-Url with the
reservation id and subscriber_name, some 202s left to lapse; some answers slower than
push_timeout_ms; some subscriber/message pairs that fail every try, into the error queue).
Three push queues: `mcfix` (multicast, fixed subscribers f0 f1 f2), `uni` (unicast, u0 u1 u2)
and `mcchg` (multicast: c0 always, c1 c2 c3 added and removed over time). Posts unique bodies
(some with a delay), keeps a pull queue `filler` busy so that 1 MiB segments roll and
retention relocates pending push messages (restating their delivery state), and kills the
server with SIGKILL at random moments (sometimes SIGTERM, sometimes again during recovery),
also shortly after a subscriber was added. Then stops posting, lets deliveries drain
(bounded), and checks:

 1. every acknowledged post to mcfix reached every subscriber with a 2xx (or a 202 whose
    acknowledgement was answered 200, or whose answer was lost), or is in mcfix-err for it;
 2. every acknowledged post to uni reached one subscriber, or is in uni-err;
    (and every acknowledged post to mcchg reached c0, or is in mcchg-err for c0);
 3. every push queue drains to size 0;
 4. a delivery of a message to a subscriber after it answered 2xx (after any subscriber, for
    unicast), or after its 202 was acknowledged, happens only across a kill -9: never from
    the same server process (X-Ferromq-Path names the sending process), never across a
    clean SIGTERM restart only. Allowed: a retry already on its way when an acknowledgement
    that came after the hold lapsed (a late one, or one held up by a restart) was taken;
 5. a subscriber added to mcchg at T never gets a message seen finished (GET
    .../messages/{id}/subscribers: all states deleted/error, or 404) before T (the replay bug
    fixed in 5de3fbe); a removed subscriber gets nothing once its removal was answered;
 plus: every delivery is of a body posted to that queue, under the id its post was given,
 with the right Iron-* headers, and not before its post's delay; error reports name known
 messages and no subscriber that surely took the message; a 202 acknowledged well within
 retries_delay is refused (403) only across a restart or the subscriber's removal; an
 acknowledged subscriber change survives restarts; no crit/eror/panic line in the logs.

Usage: scripts/push-soak.py --bin target/release/ferromq [--work DIR] [--minutes M]
       [--seed N] [--port 18500] [--sub-port 18510] [--drain-seconds 180] [--keep]
       [--delay-p P] (see --help). --minutes is the loaded phase; the drain and the checks
       follow (about a minute). Not part of CI. Exit status 1 on any failure. The work
       directory (default /tmp/pushsoak/run-SEED) keeps the server logs and, after a failure,
       the data directory and oracle.json (every delivery, kill and subscriber change seen).
       Written in session 9; its first runs found delayed push messages delivered early
       after a restart or a subscriber change (--delay-p 0 leaves delays out).
"""
import argparse
import heapq
import http.server
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

# The HTTP client, credentials and helpers of oracle-soak.py (as backup-soak.py takes them).
import importlib.util  # noqa: E402
_spec = importlib.util.spec_from_file_location(
    "soak", os.path.join(os.path.dirname(os.path.abspath(__file__)), "oracle-soak.py"))
soak = importlib.util.module_from_spec(_spec)
sys.modules["soak"] = soak
_spec.loader.exec_module(soak)  # noqa: E402
from soak import ADMIN, HDR, PID_, TOKEN, Conn, Fail, Gone, log, qp  # noqa: E402,F401

MCFIX, UNI, MCCHG, FILLER = "mcfix", "uni", "mcchg", "filler"
PUSH_QUEUES = [MCFIX, UNI, MCCHG]
FIXED_SUBS = {MCFIX: ["f0", "f1", "f2"], UNI: ["u0", "u1", "u2"]}
CHG_ALWAYS = "c0"
CHG_TOGGLE = ["c1", "c2", "c3"]
CHG_INITIAL = ["c0", "c1"]
RETRIES = {MCFIX: 3, UNI: 2, MCCHG: 2}
RETRIES_DELAY = 3  # the API's minimum
PUSH_TIMEOUT_MS = 5000
# A 2xx we sent later than this after the request arrived may have reached the server after
# its push timeout: not counted as a delivery the server surely took.
PROMPT_S = 2.5
# A redelivery claimed before an acknowledgement was applied may arrive just after its 200.
ACK_RACE_S = 1.0
# Our handler thread notes a request's arrival a little after the server sent it: a request
# a process sent just before its kill -9 can be noted after it.
LAG_S = 1.0
# After a removal was answered, an attempt claimed before it may still arrive this late.
REMOVE_SLACK_S = 2.0


class SubHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    soak = None  # set before the server starts

    def do_POST(self):
        t0 = time.time()
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n).decode("utf-8", "replace")
        parts = self.path.strip("/").split("/")
        hdrs = {k.lower(): v for k, v in self.headers.items()}
        if len(parts) != 2:
            self.soak.error(f"push to unexpected path {self.path}")
            self._answer(404)
            return
        rec, act = self.soak.on_delivery(parts[0], parts[1], body, hdrs, t0)
        kind = act[0]
        if kind == "close":
            rec["t1"] = time.time()
            self.close_connection = True
            return
        if kind == "slow":
            time.sleep(act[2])
        rec["t1"] = time.time()
        self._answer(act[1])
        if kind == "hold" and act[2] is not None:
            self.soak.schedule_ack(rec, rec["t1"] + act[2])

    def _answer(self, code):
        try:
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()
        except OSError:
            pass

    def log_message(self, *a):
        pass


class SubServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        # a connection cut by a killed server (mid-request or idle): nothing to record
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class Soak:
    def __init__(self, a):
        self.a = a
        self.rng = random.Random(a.seed)
        self.work = a.work
        self.data = os.path.join(self.work, "data")
        self.logs = os.path.join(self.work, "logs")
        os.makedirs(self.logs, exist_ok=True)
        self.port = a.port
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc = None
        self.starts = 0
        self.epoch = 0
        self.up = threading.Event()
        self.stop_load = threading.Event()
        self.lock = threading.Lock()
        self.errors = []
        self.seq = 0
        # body -> {"q", "id", "state": inflight|acked|unknown, "t"}
        self.posts = {}
        self.by_id = {}  # (q, id) -> body
        self.deliveries = []  # dicts, see on_delivery
        self.attempts = {}  # policy key -> attempts seen
        self.kills = []  # times of SIGKILLs (also early ones)
        self.clean_stops = []  # (t_sigterm, t_exit)
        self.acks = []  # heap (due, seq, rec)
        self.ack_cv = threading.Condition(self.lock)
        self.ack_pending = 0
        # mcchg membership: sub -> [(t_sent, t_done, "add"|"remove")]; believed current set
        self.members = set(CHG_INITIAL)
        self.events = {s: [] for s in CHG_TOGGLE}
        self.finished_at = {}  # mcchg id -> time it was first seen finished
        self.kill_at = None  # a kill requested (after an add)
        self.stats = {"posted_acked": 0, "posted_unknown": 0, "deliveries": 0, "kills": 0,
                      "early_kills": 0, "clean_restarts": 0, "restarts": 0,
                      "acks_ok": 0, "acks_refused": 0, "acks_unknown": 0,
                      "dups_after_kill": 0, "dups_ack_race": 0, "sub_adds": 0,
                      "sub_removes": 0, "sub_changes_unknown": 0, "finished_checks": 0,
                      "finished_seen": 0, "finished_404": 0, "filler_posts": 0,
                      "index_loaded": 0, "index_absent": 0, "torn_tail": 0,
                      "segments_dropped": 0, "messages_relocated": 0, "kill_after_add": 0,
                      "error_reports": 0}
        self.outcomes = {}
        self.early = []  # deliveries before their post's delay: (q, s, id, t_post, delay, t)

    def error(self, msg):
        with self.lock:
            self.errors.append(msg)
        log("ERROR", msg)

    def bump(self, k, n=1):
        with self.lock:
            self.stats[k] = self.stats.get(k, 0) + n

    # ---- server ----
    def write_config(self):
        cfg = {"segment_bytes": self.a.segment_bytes, "body_bytes_max": 2048,
               "push_timeout_ms": PUSH_TIMEOUT_MS,
               "log_level": "debug,hyper=info,h2=info,reqwest=info,tower=info,axum=info,rustls=info",
               "log_requests_level": "off"}
        self.cfg = os.path.join(self.work, "config.json")
        with open(self.cfg, "w") as f:
            json.dump(cfg, f)

    def spawn(self, path):
        e = dict(os.environ)
        e.update({"FERROMQ_PROJECT_ID": PID_, "FERROMQ_TOKEN": TOKEN, "FERROMQ_ADMIN_TOKEN": ADMIN})
        f = open(path, "w")
        p = subprocess.Popen(
            [self.a.bin, "serve", "--data-dir", self.data, "--listen", f"127.0.0.1:{self.port}",
             "--config", self.cfg],
            env=e, stdout=subprocess.DEVNULL, stderr=f)
        f.close()
        with open(os.path.join(self.work, "pids"), "a") as pf:
            pf.write(f"{p.pid}\n")
        return p

    def start(self):
        path = os.path.join(self.logs, f"server-{self.starts:04d}.log")
        self.starts += 1
        self.logpath = path
        self.proc = self.spawn(path)
        deadline = time.time() + 90
        while time.time() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                raise Fail(f"server exited with {rc} at start; log {path}:\n" + tail(path))
            try:
                c = Conn(self.port, timeout=5)
                s, _ = c.req("GET", "/ready", hdr={})
                c.close()
                if s == 200:
                    self.epoch += 1
                    self.up.set()
                    return
            except Gone:
                pass
            time.sleep(0.05)
        raise Fail(f"server not ready in 90 s; log {path}:\n" + tail(path))

    def early_kill(self):
        path = os.path.join(self.logs, f"server-{self.starts:04d}-early.log")
        self.starts += 1
        p = self.spawn(path)
        time.sleep(self.rng.uniform(0.0, 0.3))
        rc = p.poll()
        if rc is not None:
            raise Fail(f"server exited with {rc} at an early start; log {path}:\n" + tail(path))
        with self.lock:
            self.kills.append(time.time())
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        self.bump("early_kills")
        self.scan_log(path)

    def kill(self):
        self.up.clear()
        if self.proc and self.proc.poll() is None:
            with self.lock:
                self.kills.append(time.time())
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.bump("kills")

    def stop_clean(self):
        self.up.clear()
        if self.proc and self.proc.poll() is None:
            t = time.time()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                with self.lock:
                    self.kills.append(time.time())
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                raise Fail("no clean stop within 60 s")
            with self.lock:
                self.clean_stops.append((t, time.time()))
            if self.proc.returncode != 0:
                self.error(f"clean stop exited with {self.proc.returncode}; log {self.logpath}")
            elif "stopped cleanly" not in tail(self.logpath, 5):
                self.error(f"no 'stopped cleanly' after SIGTERM; log {self.logpath}")

    def scan_log(self, path):
        with open(path, errors="replace") as f:
            for line in f:
                if "lvl=crit" in line or "lvl=eror" in line or "msg=panic" in line:
                    self.error(f"log {os.path.basename(path)}: {line.rstrip()}")
                if "restart index loaded" in line:
                    self.bump("index_loaded")
                elif "no restart index" in line:
                    self.bump("index_absent")
                if "torn_tail=true" in line:
                    self.bump("torn_tail")
                m = re.search(r"segments_dropped=(\d+) messages_relocated=(\d+)", line)
                if m:
                    self.bump("segments_dropped", int(m.group(1)))
                    self.bump("messages_relocated", int(m.group(2)))

    def wait_up(self, conn=None, epoch=None):
        """Blocks until the server is up; returns the epoch (a new one closes `conn`)."""
        while not self.up.wait(0.5):
            pass
        if conn is not None and epoch != self.epoch:
            conn.close()
        return self.epoch

    # ---- subscribers ----
    def policy(self, q, s, body, n):
        """What to answer to attempt n (1-based) of `body` on (q, s): deterministic in
        (seed, q, s, body, n). For unicast the mode is the message's, n counts over every
        subscriber."""
        mode_rng = random.Random(f"{self.a.seed}|{q}|{'' if q == UNI else s}|{body}")
        x = mode_rng.random()
        r = random.Random(f"{self.a.seed}|{q}|{s}|{body}|{n}")
        ok = ("ok", r.choice([200, 200, 200, 201, 204]))
        bad = ("fail", r.choice([500, 500, 503, 404, 429, 400])) if r.random() < 0.85 else ("close",)
        if x < 0.68:  # mostly fine, a failure now and then
            return bad if r.random() < 0.08 else ok
        if x < 0.76:  # fails its first try or two
            return bad if n <= 1 + (mode_rng.random() < 0.5) else ok
        if x < 0.85:  # 202, acknowledged in time
            return ("hold", 202, r.uniform(0.05, 1.5)) if n == 1 else ok
        if x < 0.87:  # 202, acknowledged after the hold lapsed
            return ("hold", 202, r.uniform(4.5, 6.0)) if n == 1 else ok
        if x < 0.91:  # 202, never acknowledged
            return ("hold", 202, None) if n == 1 else ok
        if x < 0.95:  # fails every try: the error queue
            return bad
        if x < 0.97:  # slower than push_timeout_ms once
            return ("slow", 200, PUSH_TIMEOUT_MS / 1000 + 1.5) if n == 1 else ok
        return bad if r.random() < 0.08 else ok

    def on_delivery(self, q, s, body, h, t0):
        mid = h.get("iron-message-id", "")
        rec = {"q": q, "s": s, "mid": mid, "rid": h.get("iron-reservation-id", ""),
               "url": h.get("iron-subscriber-message-url", ""), "body": body, "t0": t0,
               "t1": None, "ack": None, "ta0": None, "ta1": None,
               # names the sending server process (a hash of its id, new at each start)
               "proc": h.get("x-ferromq-path", "")}
        errs = []
        if h.get("iron-subscriber-name") != s:
            errs.append(f"delivery to {q}/{s} with Iron-Subscriber-Name {h.get('iron-subscriber-name')!r}")
        want_url = f"{self.base}{qp(q)}/messages/{mid}"
        if rec["url"] != want_url:
            errs.append(f"delivery {q}/{s}/{mid}: Iron-Subscriber-Message-Url {rec['url']!r}, expected {want_url!r}")
        if not re.fullmatch(r"[0-9a-f]{16}", rec["proc"]):
            errs.append(f"delivery {q}/{s}/{mid}: X-Ferromq-Path {rec['proc']!r}, expected one entry")
        if not re.fullmatch(r"[0-9a-f]{32}", rec["rid"]):
            errs.append(f"delivery {q}/{s}/{mid}: Iron-Reservation-Id {rec['rid']!r}")
        with self.lock:
            p = self.posts.get(body)
            if p is None or p["q"] != q:
                errs.append(f"delivery to {q}/{s} of a body never posted there: {body[:40]!r}")
            else:
                if t0 < p["t"] + p.get("delay", 0) - 0.5:
                    self.early.append((q, s, mid, p["t"], p["delay"], t0))
                if p["id"] is None:
                    p["id"] = mid
                    self.by_id[(q, mid)] = body
                elif p["id"] != mid:
                    errs.append(f"delivery {q}/{s}: body {body[:30]!r} posted as {p['id']}, pushed as {mid}")
            key = (q, body) if q == UNI else (q, s, body)
            n = self.attempts[key] = self.attempts.get(key, 0) + 1
            act = self.policy(q, s, body, n)
            rec["kind"] = act[0]
            rec["code"] = act[1] if len(act) > 1 else 0
            self.deliveries.append(rec)
            self.stats["deliveries"] += 1
            self.outcomes[act[0]] = self.outcomes.get(act[0], 0) + 1
        for e in errs:
            self.error(e)
        return rec, act

    def schedule_ack(self, rec, due):
        with self.lock:
            rec["ack"] = "pending"
            rec["ack_due"] = due
            self.ack_pending += 1
            self.seq += 1
            heapq.heappush(self.acks, (due, self.seq, rec))
            self.ack_cv.notify()

    def w_acker(self):
        """Acknowledges held deliveries when due: DELETE on Iron-Subscriber-Message-Url
        with reservation_id and subscriber_name, no token. A lost answer is retried (the
        hold survives restarts) for 10 s; the outcome is then 'unknown' unless a 200 came."""
        c = Conn(self.port, timeout=30)
        epoch = 0
        while True:
            with self.lock:
                while not self.acks or self.acks[0][0] > time.time():
                    if self.acks:
                        self.ack_cv.wait(max(0.0, self.acks[0][0] - time.time()))
                    else:
                        self.ack_cv.wait(1.0)
                _, _, rec = heapq.heappop(self.acks)
            path = rec["url"][len(self.base):] if rec["url"].startswith(self.base) else rec["url"]
            body = {"reservation_id": rec["rid"], "subscriber_name": rec["s"]}
            rec["ta0"] = time.time()
            lost = False
            result = None
            give_up = time.time() + 10
            while result is None:
                epoch = self.wait_up(c, epoch)
                try:
                    st, v = c.req("DELETE", path, body, hdr={"Content-Type": "application/json"})
                except Gone:
                    lost = True
                    if time.time() > give_up:
                        result = "unknown"
                    else:
                        time.sleep(0.3)
                    continue
                if st == 200:
                    result = "ok"
                elif st == 403:
                    result = "unknown" if lost else "refused"
                elif st == 503 or st >= 500:
                    lost = True
                    if time.time() > give_up:
                        result = "unknown"
                    else:
                        time.sleep(0.3)
                else:
                    self.error(f"ack {rec['q']}/{rec['s']}/{rec['mid']}: {st} {v}")
                    result = "unknown"
            with self.lock:
                rec["ack"] = result
                rec["ta1"] = time.time()
                self.ack_pending -= 1
                self.stats[f"acks_{result}"] += 1
                if result == "refused" and rec["ta0"] - rec["t1"] < RETRIES_DELAY - 0.5:
                    # acknowledged well within retries_delay of the 202, yet refused: fine
                    # across a restart (a clean stop can outlast the hold) or a removal
                    self.stats["acks_refused_in_time"] = self.stats.get("acks_refused_in_time", 0) + 1

    # ---- load ----
    def new_bodies(self, q, k):
        out = []
        with self.lock:
            for _ in range(k):
                self.seq += 1
                b = f"{q}|{self.seq}|{self.a.seed}|" + "x" * self.rng.randint(10, 500)
                self.posts[b] = {"q": q, "id": None, "state": "inflight", "t": time.time()}
                out.append(b)
        return out

    def w_poster(self, q, rate):
        c = Conn(self.port)
        epoch = 0
        r = random.Random(f"{self.a.seed}|poster|{q}")
        while not self.stop_load.is_set():
            epoch = self.wait_up(c, epoch)
            k = r.choice([1, 1, 1, 2, 3, 5])
            bodies = self.new_bodies(q, k)
            msgs = []
            for b in bodies:
                m = {"body": b}
                if r.random() < self.a.delay_p:
                    m["delay"] = r.randint(2, 25)
                    with self.lock:
                        self.posts[b]["delay"] = m["delay"]
                msgs.append(m)
            try:
                st, v = c.req("POST", qp(q) + "/messages", {"messages": msgs})
            except Gone:
                with self.lock:
                    for b in bodies:
                        self.posts[b]["state"] = "unknown"
                    self.stats["posted_unknown"] += len(bodies)
                continue
            if st != 201 or len(v.get("ids", [])) != len(bodies):
                if st < 500:  # a 5xx is logged at eror by the server: the log scan reports it
                    self.error(f"post to {q}: {st} {v}")
                with self.lock:
                    for b in bodies:
                        self.posts[b]["state"] = "unknown"
                continue
            with self.lock:
                for b, i in zip(bodies, v["ids"]):
                    p = self.posts[b]
                    if p["id"] is not None and p["id"] != i:
                        self.errors.append(f"post to {q}: {b[:30]!r} answered id {i}, pushed as {p['id']}")
                    p["id"] = i
                    p["state"] = "acked"
                    self.by_id[(q, i)] = b
                self.stats["posted_acked"] += len(bodies)
            time.sleep(r.expovariate(rate / 2.2))

    def w_filler(self):
        """Big posts to a pull queue, cleared now and then: segments roll, and retention
        drops them, relocating the push messages still pending."""
        c = Conn(self.port)
        epoch = 0
        r = random.Random(f"{self.a.seed}|filler")
        n = 0
        while not self.stop_load.is_set():
            epoch = self.wait_up(c, epoch)
            try:
                if n % 6 == 5:
                    c.req("DELETE", qp(FILLER) + "/messages", {})
                else:
                    pad = "f" * r.randint(600, 1000)
                    c.req("POST", qp(FILLER) + "/messages",
                          {"messages": [{"body": f"{n}|{i}|{pad}"} for i in range(100)]})
                    self.bump("filler_posts")
            except Gone:
                pass
            n += 1
            time.sleep(1.0 / self.a.filler_rate)

    def get_members(self, c):
        epoch = None
        while True:
            epoch = self.wait_up(c, epoch)
            try:
                st, v = c.req("GET", qp(MCCHG))
            except Gone:
                time.sleep(0.2)
                continue
            if st != 200:
                raise Fail(f"GET {MCCHG}: {st} {v}")
            return {s["name"] for s in v["queue"]["push"]["subscribers"]}

    def confirm_finished(self, c):
        """GETs the statuses of mcchg messages not yet seen finished; records those that
        are (every state deleted/error, or 404: no longer kept). False if the server went."""
        with self.lock:
            ids = [(i, b) for (q, i), b in self.by_id.items()
                   if q == MCCHG and i not in self.finished_at]
        ids.sort()
        for i, b in ids[-self.a.finished_check_max:]:
            try:
                st, v = c.req("GET", qp(MCCHG) + f"/messages/{i}/subscribers")
            except Gone:
                return False
            self.bump("finished_checks")
            now = time.time()
            if st == 404:
                with self.lock:
                    self.finished_at[i] = now
                    self.stats["finished_404"] += 1
            elif st == 200:
                subs = v["subscribers"]
                if subs and all(x["status"] in ("deleted", "error") for x in subs):
                    with self.lock:
                        self.finished_at[i] = now
                        self.stats["finished_seen"] += 1
            else:
                self.error(f"GET {MCCHG}/{i}/subscribers: {st} {v}")
        return True

    def w_changer(self):
        """Adds and removes c1..c3 on mcchg; before an add, notes which messages are
        finished; sometimes asks for a kill soon after an add."""
        c = Conn(self.port)
        r = random.Random(f"{self.a.seed}|changer")
        while not self.stop_load.wait(r.uniform(self.a.change_min, self.a.change_max)):
            self.wait_up(c, None)
            c.close()
            sub = r.choice(CHG_TOGGLE)
            with self.lock:
                present = sub in self.members
            action = "remove" if present else "add"
            if action == "add" and not self.confirm_finished(c):
                continue
            t_sent = time.time()
            try:
                if action == "add":
                    st, v = c.req("POST", qp(MCCHG) + "/subscribers", {"subscribers": [
                        {"name": sub, "url": f"http://127.0.0.1:{self.a.sub_port}/{MCCHG}/{sub}"}]})
                else:
                    st, v = c.req("DELETE", qp(MCCHG) + "/subscribers", {"subscribers": [{"name": sub}]})
            except Gone:
                st, v = None, None
            t_done = time.time()
            if st is not None and st != 200:
                self.error(f"{action} subscriber {sub}: {st} {v}")
            members = self.get_members(c)
            applied = (sub in members) == (action == "add")
            if st == 200 and not applied:
                self.error(f"acknowledged {action} of subscriber {sub} lost: members {sorted(members)}")
            if st is None:
                self.bump("sub_changes_unknown")
            with self.lock:
                if st is None and not applied and action == "add":
                    # lost with its answer, but it may have served until the kill
                    self.events[sub].append((t_sent, t_done, "add"))
                    self.events[sub].append((t_done, t_done, "remove"))
                if applied:
                    self.events[sub].append((t_sent, t_done, action))
                    self.stats["sub_adds" if action == "add" else "sub_removes"] += 1
                    if action == "add" and st == 200 and r.random() < self.a.kill_after_add_p:
                        self.kill_at = time.time() + r.uniform(0.2, 3.0)
                if members != self.members ^ ({sub} if applied else set()):
                    self.error(f"mcchg subscribers {sorted(members)}, expected "
                               f"{sorted(self.members ^ ({sub} if applied else set()))}")
                self.members = set(members)
            log(f"subscriber {action} {sub}: {st if st else 'lost answer'}, applied={applied}, "
                f"members {sorted(members)}")

    # ---- setup ----
    def setup(self):
        c = Conn(self.port)
        sub_url = lambda q, s: f"http://127.0.0.1:{self.a.sub_port}/{q}/{s}"
        for q, kind, subs in [(MCFIX, "multicast", FIXED_SUBS[MCFIX]), (UNI, "unicast", FIXED_SUBS[UNI]),
                              (MCCHG, "multicast", CHG_INITIAL)]:
            st, v = c.req("PUT", qp(q), {"queue": {"type": kind, "push": {
                "subscribers": [{"name": s, "url": sub_url(q, s)} for s in subs],
                "retries": RETRIES[q], "retries_delay": RETRIES_DELAY, "error_queue": f"{q}-err"}}})
            if st not in (200, 201):
                raise Fail(f"PUT {q}: {st} {v}")
        st, v = c.req("PUT", qp(FILLER), {})
        if st not in (200, 201):
            raise Fail(f"PUT {FILLER}: {st} {v}")
        c.close()

    # ---- drain and checks ----
    def drain(self):
        """Waits (bounded) until every push queue is empty, no acknowledgement is pending
        and nothing was delivered for a few seconds. Returns the last sizes."""
        c = Conn(self.port)
        deadline = time.time() + self.a.drain_seconds
        sizes = {}
        while True:
            sizes = {}
            for q in PUSH_QUEUES:
                st, v = c.req("GET", qp(q))
                sizes[q] = v["queue"]["size"] if st == 200 else (st, v)
            with self.lock:
                last = max((d["t0"] for d in self.deliveries), default=0)
                pending = self.ack_pending
            quiet = time.time() - last
            if all(s == 0 for s in sizes.values()) and pending == 0 and quiet > 4:
                break
            if time.time() > deadline:
                break
            time.sleep(2)
        c.close()
        return sizes

    def read_error_queues(self):
        """Reserves every message of the error queues: (q, source id) -> set of subscriber
        names (unicast: the names of the report)."""
        c = Conn(self.port)
        out = {}
        for q in PUSH_QUEUES:
            eq = f"{q}-err"
            while True:
                st, v = c.req("POST", qp(eq) + "/reservations", {"n": 100, "timeout": 3600})
                if st == 404:
                    break
                if st != 200:
                    self.error(f"reserve {eq}: {st} {v}")
                    break
                if not v["messages"]:
                    break
                for m in v["messages"]:
                    self.stats["error_reports"] += 1
                    try:
                        rep = json.loads(m["body"])
                        src = rep["source_msg_id"]
                        names = {x["name"] for x in rep["subscribers"]}
                    except (ValueError, KeyError, TypeError) as e:
                        self.error(f"{eq}: unreadable report {m['body'][:80]!r}: {e}")
                        continue
                    body = self.by_id.get((q, src))
                    if body is None:
                        # a post whose answer was lost and that was never delivered
                        cand = [b for b, p in self.posts.items()
                                if p["q"] == q and p["id"] is None and b == rep.get("body")]
                        if cand:
                            self.posts[cand[0]]["id"] = src
                            self.by_id[(q, src)] = cand[0]
                        else:
                            self.error(f"{eq}: report for unknown message {src}: {m['body'][:80]!r}")
                            continue
                    elif not rep.get("body_truncated") and rep.get("body") != body:
                        self.error(f"{eq}: report for {src} carries another body")
                    if q != UNI and len(names) != 1:
                        self.error(f"{eq}: multicast report for {src} names {sorted(names)}")
                    out.setdefault((q, src), set()).update(names)
        c.close()
        return out

    def kill_between(self, t_a, t_b):
        return any(t_a <= k <= t_b for k in self.kills)

    def check(self, reports, sizes):
        errs = []
        by_key = {}
        for d in self.deliveries:
            mid = self.posts[d["body"]]["id"] if d["body"] in self.posts else d["mid"]
            k = (d["q"], mid) if d["q"] == UNI else (d["q"], d["s"], mid)
            by_key.setdefault(k, []).append(d)

        def delivered(d):
            # the server may have taken it: any 2xx sent, an acknowledged (or maybe) 202
            return (d["kind"] in ("ok", "slow") and d["t1"] is not None) or \
                (d["kind"] == "hold" and d["ack"] in ("ok", "unknown"))

        def success(d):
            """(start, done) of a delivery the server surely took, else None."""
            if d["kind"] == "ok" and d["t1"] is not None and d["t1"] - d["t0"] < PROMPT_S:
                return (d["t0"], d["t1"], False)
            if d["kind"] == "hold" and d["ack"] == "ok":
                return (d["ta0"], d["ta1"], True)
            return None

        # 4: duplicates after a success only across a kill -9
        stops = self.kills + [t for t, _ in self.clean_stops]
        dup_fail = []
        for k, ds in by_key.items():
            ds.sort(key=lambda d: d["t0"])
            succ = [(success(d), d) for d in ds if success(d)]
            for d in ds:
                prior = [(s, sd) for s, sd in succ if sd is not d and s[1] < d["t0"]]
                if not prior:
                    continue
                (start, done, is_ack), sd = max(prior, key=lambda x: x[0][0])
                if is_ack:
                    # The acknowledgement was durable when answered, whichever process
                    # answered it. But one that came after the hold lapsed (a late one, or
                    # one held up by a restart) can be taken while the retry it raced is
                    # already on its way.
                    lapsed = start - sd["t1"] > RETRIES_DELAY - 0.5 or \
                        any(sd["t0"] - LAG_S <= t <= start for t in stops)
                    if lapsed and d["t0"] <= done + ACK_RACE_S:
                        self.stats["dups_ack_race"] += 1
                    elif self.kill_between(start - LAG_S, d["t0"]):
                        self.stats["dups_after_kill"] += 1
                    else:
                        dup_fail.append((k, sd, d))
                elif sd["proc"] == d["proc"]:
                    # the very process that took it delivers it again
                    dup_fail.append((k, sd, d))
                elif self.kill_between(start - LAG_S, d["t0"]):
                    self.stats["dups_after_kill"] += 1
                else:
                    dup_fail.append((k, sd, d))
        def ack_times(d):
            if d["ta0"] is None:
                return ""
            return f", ack sent {d['ta0']:.3f} answered {d['ta1']:.3f}"

        for k, sd, d in dup_fail[:20]:
            errs.append(f"duplicate without a kill: {k} first taken by {sd['s']} at "
                        f"{sd['t0']:.3f} ({sd['kind']} {sd['code']} ack={sd['ack']}, server "
                        f"{sd['proc']}{ack_times(sd)}), "
                        f"again to {d['s']} at {d['t0']:.3f} (server {d['proc']}); clean stops "
                        f"{[round(t, 3) for t, _ in self.clean_stops if sd['t0'] <= t <= d['t0']]}")
        if len(dup_fail) > 20:
            errs.append(f"... {len(dup_fail)} duplicates without a kill in all")
        self.stats["dup_violations"] = len(dup_fail)

        # 1, 2 and c0: nothing acknowledged lost
        lost = []
        for b, p in self.posts.items():
            if p["state"] != "acked" or p["q"] == FILLER:
                continue
            q, mid = p["q"], p["id"]
            if q == UNI:
                if not any(delivered(d) for d in by_key.get((q, mid), [])) and (q, mid) not in reports:
                    lost.append((q, "*", mid))
                continue
            subs = FIXED_SUBS[MCFIX] if q == MCFIX else [CHG_ALWAYS]
            for s in subs:
                if not any(delivered(d) for d in by_key.get((q, s, mid), [])) and \
                        s not in reports.get((q, mid), ()):
                    lost.append((q, s, mid))
        if lost:
            c = Conn(self.port)
            for q, s, mid in lost[:10]:
                st, v = c.req("GET", qp(q) + f"/messages/{mid}/deliveries")
                ds = [(d["s"], d["kind"], d["code"], d["ack"]) for d in
                      by_key.get((q, mid) if q == UNI else (q, s, mid), [])]
                errs.append(f"acknowledged post {q}/{mid} never delivered to {s} nor in {q}-err; "
                            f"ours {ds}; server {st} {json.dumps(v)[:400]}")
            c.close()
            if len(lost) > 10:
                errs.append(f"... {len(lost)} lost (message, subscriber) pairs in all")
        self.stats["lost"] = len(lost)

        # error reports for a subscriber that surely took the message, with no kill after
        for (q, mid), names in reports.items():
            for s in names:
                ds = by_key.get((q, mid) if q == UNI else (q, s, mid), [])
                for d in ds:
                    sc = success(d)
                    if sc and d["s"] == s and not self.kill_between(sc[0] - LAG_S, time.time()):
                        errs.append(f"{q}-err reports {mid} failed for {s}, which took it at {sc[0]:.3f}")
                        break

        # a 202 acknowledged well within retries_delay is refused only across a restart (a
        # clean stop can outlast the hold) or the subscriber's removal
        for d in self.deliveries:
            if d["ack"] != "refused" or d["ta0"] - d["t1"] >= RETRIES_DELAY - 0.5:
                continue
            if any(d["t0"] - LAG_S <= t <= d["ta1"] for t in stops):
                continue
            if d["q"] == MCCHG and any(d["t0"] <= e[0] <= d["ta1"] and e[2] == "remove"
                                       for e in self.events.get(d["s"], [])):
                continue
            errs.append(f"ack of {d['q']}/{d['s']}/{d['mid']} refused {d['ta0'] - d['t1']:.2f} s "
                        f"after its 202 (retries_delay {RETRIES_DELAY} s), no restart between")

        # delayed posts: nothing delivered before its delay (checked against the time before
        # the post was sent); by what came between the post and the early delivery
        why = {}
        for q, s, mid, tp, delay, t in self.early:
            restart = any(tp <= k <= t for k in stops)
            change = q == MCCHG and any(tp <= e[0] <= t for ev in self.events.values() for e in ev)
            c = "after a restart" if restart else ("after a subscriber change" if change else "with neither")
            why.setdefault(c, []).append((q, s, mid, t - tp, delay))
        for c, xs in sorted(why.items()):
            errs.append(f"{len(xs)} deliveries of delayed messages came early, {c} between the post and "
                        f"the delivery, e.g. " + ", ".join(f"{q}/{s}/{mid} {dt:.1f} s after the post "
                                                          f"(delay {d} s)" for q, s, mid, dt, d in xs[:3]))
        self.stats["early_deliveries"] = len(self.early)

        # 3: drained
        for q, size in sizes.items():
            if size != 0:
                errs.append(f"queue {q} did not drain: size {size} after {self.a.drain_seconds} s")

        # 5: subscribers added later, removed ones
        bad5 = []
        for d in self.deliveries:
            if d["q"] != MCCHG or d["s"] == CHG_ALWAYS:
                continue
            ev = [e for e in self.events.get(d["s"], []) if e[0] <= d["t0"]]
            if not ev:
                if d["s"] not in CHG_INITIAL:
                    errs.append(f"delivery of {d['mid']} to {d['s']}, never added, at {d['t0']:.3f}")
                continue
            t_sent, t_done, action = ev[-1]
            if action == "remove":
                if d["t0"] > t_done + REMOVE_SLACK_S:
                    errs.append(f"delivery of {d['mid']} to {d['s']} at {d['t0']:.3f}, removed at "
                                f"{t_sent:.3f}..{t_done:.3f}")
                continue
            mid = self.posts[d["body"]]["id"] if d["body"] in self.posts else d["mid"]
            fin = self.finished_at.get(mid)
            if fin is not None and fin < t_sent:
                bad5.append((d, fin, t_sent))
        for d, fin, t_sent in bad5[:20]:
            errs.append(f"finished message {d['mid']} (seen finished at {fin:.3f}) delivered to "
                        f"{d['s']} added at {t_sent:.3f}, at {d['t0']:.3f}; kills between: "
                        f"{[round(k, 3) for k in self.kills if t_sent <= k <= d['t0']]}")
        self.stats["resurrected_for_new_subscriber"] = len(bad5)
        return errs

    # ---- main ----
    def main(self):
        a = self.a
        os.makedirs(self.data, exist_ok=True)
        self.write_config()
        SubHandler.soak = self
        self.subsrv = SubServer(("127.0.0.1", a.sub_port), SubHandler)
        threading.Thread(target=self.subsrv.serve_forever, daemon=True).start()
        threading.Thread(target=self.w_acker, daemon=True).start()
        self.start()
        self.setup()
        workers = [threading.Thread(target=self.w_poster, args=(q, a.rate), daemon=True)
                   for q in PUSH_QUEUES]
        workers.append(threading.Thread(target=self.w_filler, daemon=True))
        workers.append(threading.Thread(target=self.w_changer, daemon=True))
        for w in workers:
            w.start()
        t_end = time.time() + a.minutes * 60
        rnd = 0
        failures = []
        try:
            while time.time() < t_end:
                run_until = time.time() + self.rng.uniform(a.min_run, a.max_run)
                while time.time() < min(run_until, t_end):
                    with self.lock:
                        ka = self.kill_at
                    if ka is not None and time.time() >= ka:
                        with self.lock:
                            self.kill_at = None
                        self.stats["kill_after_add"] += 1
                        break
                    time.sleep(0.05)
                if time.time() >= t_end:
                    break
                if self.rng.random() < a.clean_p:
                    self.stop_clean()
                    self.stats["clean_restarts"] += 1
                    how = "SIGTERM"
                else:
                    self.kill()
                    how = "SIGKILL"
                self.scan_log(self.logpath)
                if self.rng.random() < a.early_kill_p:
                    self.early_kill()
                self.start()
                self.stats["restarts"] += 1
                rnd += 1
                with self.lock:
                    st = dict(self.stats)
                log(f"round {rnd}: {how}, restarted; posted {st['posted_acked']} (+{st['posted_unknown']} "
                    f"unknown), deliveries {st['deliveries']}, acks ok {st['acks_ok']}, "
                    f"errors so far {len(self.errors)}")
            log("load phase over: stopping posts and subscriber changes, draining")
            self.stop_load.set()
            for w in workers:
                w.join(60)
            sizes = self.drain()
            log(f"drain: sizes {sizes}")
            reports = self.read_error_queues()
            errs = self.check(reports, sizes)
            self.stop_clean()
            self.scan_log(self.logpath)
            failures = list(self.errors) + errs
        except Fail as e:
            failures = list(self.errors) + [str(e)]
        finally:
            if self.proc and self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            self.subsrv.shutdown()
        with self.lock:
            kinds = dict(self.outcomes)
        log("answers", json.dumps(kinds))
        log("stats", json.dumps(self.stats))
        t = os.times()
        log(f"cpu: soak {t.user + t.system:.0f} s, servers {t.children_user + t.children_system:.0f} s")
        log("restarts", rnd, "failures", len(failures))
        for f in failures[:60]:
            print("FAIL", f)
        if failures:
            with open(os.path.join(self.work, "oracle.json"), "w") as f:
                json.dump({"deliveries": self.deliveries, "kills": self.kills,
                           "clean_stops": self.clean_stops, "events": self.events,
                           "finished_at": self.finished_at, "posts": self.posts}, f)
            log("work directory kept:", self.work, "(oracle.json: what the oracle saw)")
        elif not a.keep:
            shutil.rmtree(self.data, ignore_errors=True)
        return 1 if failures else 0


def tail(path, n=40):
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-n:])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bin", required=True)
    p.add_argument("--work", default=None, help="default /tmp/pushsoak/run-<seed>")
    p.add_argument("--minutes", type=float, default=8)
    p.add_argument("--seed", type=int, default=int(time.time()))
    p.add_argument("--port", type=int, default=18500)
    p.add_argument("--sub-port", type=int, default=18510)
    p.add_argument("--segment-bytes", type=int, default=1 << 20)
    p.add_argument("--rate", type=float, default=6.0, help="messages/s posted per push queue")
    p.add_argument("--filler-rate", type=float, default=2.0, help="filler requests/s")
    p.add_argument("--min-run", type=float, default=3.0)
    p.add_argument("--max-run", type=float, default=25.0)
    p.add_argument("--clean-p", type=float, default=0.2, help="share of SIGTERM restarts")
    p.add_argument("--early-kill-p", type=float, default=0.1)
    p.add_argument("--kill-after-add-p", type=float, default=0.5)
    p.add_argument("--change-min", type=float, default=4.0)
    p.add_argument("--change-max", type=float, default=12.0)
    p.add_argument("--delay-p", type=float, default=0.08, help="share of posts with a delay")
    p.add_argument("--finished-check-max", type=int, default=400)
    p.add_argument("--drain-seconds", type=float, default=180)
    p.add_argument("--keep", action="store_true", help="keep the data directory after a pass")
    a = p.parse_args()
    if a.work is None:
        a.work = f"/tmp/pushsoak/run-{a.seed}"
    if os.path.exists(os.path.join(a.work, "data")):
        sys.exit(f"{a.work}/data exists; pick another --work")
    os.makedirs(a.work, exist_ok=True)
    soak.run(Soak, a)


if __name__ == "__main__":
    main()
