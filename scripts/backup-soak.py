#!/usr/bin/env python3
"""Hot backup + restore after heavy churn (stdlib only; uses soak.py's workload and oracle).

Phase A: churn (with a few kill -9 / restarts on the way), stop the load, `ferromq backup`,
`ferromq restore`, start the restored dir on another port: every queue, size and message
(by id, body) the same as the original; every deleted id 404; a full drain of the restored
server matches the oracle exactly.
Phase B: `ferromq backup` while the load runs; the restored server holds every message
acknowledged before the backup started and not deleted before it ended, and none whose
delete was acknowledged before it started.
"""
import argparse
import copy
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import importlib.util  # noqa: E402
_spec = importlib.util.spec_from_file_location("soak", os.path.join(os.path.dirname(os.path.abspath(__file__)), "oracle-soak.py"))
soak = importlib.util.module_from_spec(_spec)
sys.modules["soak"] = soak
_spec.loader.exec_module(soak)  # noqa: E402
from soak import ADMIN, Conn, Fail, PID_, TOKEN, free_port, log, qp  # noqa: E402


def backup(s, out):
    t0 = time.time()
    r = subprocess.run([s.a.bin, "backup", "--url", f"http://127.0.0.1:{s.port}",
                        "--token", ADMIN, "--output", out],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    log(f"backup rc={r.returncode} in {time.time()-t0:.1f}s size={os.path.getsize(out) if os.path.exists(out) else None}: {r.stdout.strip()[-300:]}")
    if r.returncode != 0:
        raise Fail(f"backup failed: {r.stdout}")


def restore(s, inp, dirpath):
    r = subprocess.run([s.a.bin, "restore", "--input", inp, "--data-dir", dirpath, "--json"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=600)
    log(f"restore rc={r.returncode}: {r.stdout.strip()[:1500]} {r.stderr.strip()[-500:]}")
    if r.returncode != 0:
        raise Fail(f"restore failed: {r.stdout} {r.stderr}")
    return json.loads(r.stdout)


class Restored(soak.Soak):
    """A second server on the restored data dir."""

    def __init__(self, a, work, data):
        super().__init__(a)
        self.work = work
        self.data = data
        self.logs = os.path.join(work, "logs-restored")
        os.makedirs(self.logs, exist_ok=True)


def compare(s, r, snap_msgs, snap_queues, exact, must, must_not):
    """s: original server (or None), r: restored."""
    errs = []
    co = Conn(s.port) if s else None
    cr = Conn(r.port)
    # queues
    sr, vr = cr.req("GET", f"/3/projects/{PID_}/queues?per_page=100")
    names_r = sorted(q["name"] for q in vr["queues"])
    if co:
        so, vo = co.req("GET", f"/3/projects/{PID_}/queues?per_page=100")
        names_o = sorted(q["name"] for q in vo["queues"])
        if exact and names_o != names_r:
            errs.append(f"queue lists differ: original {names_o} restored {names_r}")
        for q in names_o:
            a = co.req("GET", qp(q))[1]["queue"]
            b = cr.req("GET", qp(q))[1]
            if exact and (b is None or "queue" not in b or a["size"] != b["queue"]["size"]):
                errs.append(f"queue {q}: original {a.get('size')} restored {b}")
        log(f"queues: original {len(names_o)}, restored {len(names_r)}")
    n_ok = 0
    for i in must:
        q, body, _ = snap_msgs[i]
        st, v = cr.req("GET", qp(q) + f"/messages/{i}")
        if st != 200:
            errs.append(f"restored: {q}/{i} missing ({st} {v})")
        elif v["message"]["body"] != body:
            errs.append(f"restored: {q}/{i} body differs")
        else:
            n_ok += 1
    n_gone = 0
    for i in must_not:
        q = snap_msgs[i][0]
        if snap_queues.get(q) != "live":
            continue
        st, v = cr.req("GET", qp(q) + f"/messages/{i}")
        if st != 404:
            errs.append(f"restored: deleted {q}/{i} is there ({st})")
        else:
            n_gone += 1
    log(f"restored holds {n_ok}/{len(must)} required messages; {n_gone} deleted ids 404")
    cr.close()
    if co:
        co.close()
    return errs


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--churn-seconds", type=float, default=90)
    p.add_argument("--kills", type=int, default=5)
    p.add_argument("--seed", type=int, default=int(time.time()))
    a = p.parse_args()
    # the Soak defaults
    a.rounds, a.minutes, a.sync = 0, 0, "always"
    a.segment_bytes, a.body_max, a.sticky_cap, a.churn_cap = 1 << 20, 1024, 3000, 8000
    a.deleted_sample, a.min_run, a.max_run, a.early_kill_p, a.kill_on = 3000, 0.3, 6.0, 0.0, 'time'
    log("seed", a.seed)
    os.makedirs(a.work, exist_ok=True)
    s = soak.Soak(a)
    r = None
    failures = []
    try:
        os.makedirs(s.data, exist_ok=True)
        s.start()
        c = Conn(s.port)
        for q in ["churn", "sticky", "rdq", "clearq"]:
            st, v = c.req("PUT", qp(q), {})
            s.o.queues[q] = "live"
        c.close()
        # churn with a few crashes on the way
        for k in range(a.kills):
            errs = s.run_load(s.rng.uniform(2, 8))
            s.start()
            verrs, _, _ = s.verify(True)
            if errs or verrs:
                raise Fail(f"churn round {k}: {errs + verrs}")
        errs = s.run_load(a.churn_seconds, kill=False)
        if errs:
            raise Fail(f"churn: {errs}")
        files = sorted(os.listdir(s.data))
        log(f"after churn: {json.dumps(s.stats)}; data dir: {files}")

        # ---- Phase A: quiescent ----
        snap = copy.deepcopy(s.o.msgs)
        qsnap = dict(s.o.queues)
        bfile = os.path.join(a.work, "backup-A.fmq")
        backup(s, bfile)
        rdir = os.path.join(a.work, "restored-A")
        rep = restore(s, bfile, rdir)
        r = Restored(a, a.work, rdir)
        r.start()
        must = [i for i, rec in snap.items() if rec[2] == "present" and qsnap.get(rec[0]) == "live"]
        must_not = [i for i, rec in snap.items() if rec[2] == "deleted"]
        errs = compare(s, r, snap, qsnap, True, must, must_not)
        if errs:
            failures.append("phase A: " + "\n  ".join(errs[:20]))
        # a full drain of the restored server against the oracle
        lock = s.o.lock
        s.o.lock = None
        r.o = copy.deepcopy(s.o)
        s.o.lock = lock
        r.o.lock = soak.threading.Lock()
        failures += r.drain_and_stop("phase A restored")
        r = None

        # ---- Phase B: hot, during the load ----
        state = {}

        def during():
            with s.o.lock:
                state["t0_msgs"] = {k: list(v) for k, v in s.o.msgs.items()}
                state["t0_queues"] = dict(s.o.queues)
            backup(s, os.path.join(a.work, "backup-B.fmq"))
            with s.o.lock:
                state["t1_msgs"] = {k: list(v) for k, v in s.o.msgs.items()}
                state["t1_queues"] = dict(s.o.queues)

        errs = s.run_load(20, kill=False, during=during)
        if errs:
            raise Fail(f"phase B load: {errs}")
        if "t1_msgs" not in state:
            raise Fail("phase B: the backup did not run")
        m0, m1 = state["t0_msgs"], state["t1_msgs"]
        q0, q1 = state["t0_queues"], state["t1_queues"]
        must = [i for i, rec in m0.items()
                if rec[2] == "present" and m1[i][2] == "present" and rec[0] != "rdq"
                and q0.get(rec[0]) == "live" and q1.get(rec[0]) == "live"]
        must_not = [i for i, rec in m0.items() if rec[2] == "deleted"]
        rdir = os.path.join(a.work, "restored-B")
        restore(s, os.path.join(a.work, "backup-B.fmq"), rdir)
        r = Restored(a, a.work, rdir)
        r.start()
        errs = compare(None, r, m0, q0, False, must, must_not)
        if errs:
            failures.append("phase B: " + "\n  ".join(errs[:20]))
        # the restored server takes writes and survives a kill -9 too
        cr = Conn(r.port)
        st, v = cr.req("POST", qp("sticky") + "/messages", {"messages": [{"body": "after-restore"}]})
        cr.close()
        if st != 201:
            failures.append(f"post to the restored server: {st} {v}")
        r.kill()
        r.start()
        cr = Conn(r.port)
        st, v2 = cr.req("GET", qp("sticky") + f"/messages/{v['ids'][0]}")
        cr.close()
        if st != 200:
            failures.append(f"restored server lost a post after kill -9: {st} {v2}")
        r.stop_clean()
        bad = r.scan_log(r.logpath)
        if bad:
            failures.append("restored-B log: " + "\n".join(bad))
        r = None
        s.stop_clean()
        bad = s.scan_log(s.logpath)
        if bad:
            failures.append("original log: " + "\n".join(bad))
    except Fail as e:
        failures.append(str(e))
    finally:
        for x in (s, r):
            if x and x.proc and x.proc.poll() is None:
                x.proc.kill()
                x.proc.wait()
    log("stats", json.dumps(s.stats))
    log("failures", len(failures))
    for f in failures:
        print(f)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
