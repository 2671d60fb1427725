#!/usr/bin/env node
// Compatibility test: the official IronMQ v3 Node client (npm `iron_mq` 0.9.3,
// with iron_core 0.2.7 and request 2.x), used unchanged, against ferromq.
//
// Environment (set by tests/run-clients.sh):
//   FERROMQ_HOST, FERROMQ_PORT, FERROMQ_PROJECT_ID, FERROMQ_TOKEN
//
// Every public method of iron_mq.Client is called and its result checked against
// /work/shared/ironmq-v3-contract.md (section numbers in check names).
//
// Known client bugs worked around here (client code NOT modified):
//  * Every method whose callback is "optional" (create_queue, update_queue, update,
//    clear, add_subscribers, rm_subscribers, rpl_subscribers, del_queue, del,
//    del_multiple, msg_release) was compiled from CoffeeScript `cb? cb(error, body)`
//    into `cb(cb(error, body))`, so the callback is invoked TWICE: once with
//    (error, body), then again with the first call's return value as `error`.
//    All callbacks go through once() below, which keeps the first invocation.
//  * GET-based methods that JSON.parse the body themselves (queues, info, msg_get)
//    lose the server's error message on non-2xx: they report `Unknown error`.
//    peek/msg_push_statuses report the raw body string as the Error message.
//    So for those we only check that an error is reported.
//  * The client never exposes HTTP status codes; status checks live in the Python test.

'use strict';

const crypto = require('crypto');
const ironMq = require('iron_mq');

const HOST = process.env.FERROMQ_HOST || '127.0.0.1';
const PORT = parseInt(process.env.FERROMQ_PORT || '8080', 10);
const PROJECT_ID = process.env.FERROMQ_PROJECT_ID || '0123456789abcdef01234567';
const TOKEN = process.env.FERROMQ_TOKEN || 'test-token';
const RUN = crypto.randomBytes(4).toString('hex');

let passed = 0;
let failed = 0;
const failures = [];
const optionalResults = [];
let doubleCallbacks = 0;

const qn = (s) => `js-${RUN}-${s}`;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const j = (x) => { try { return JSON.stringify(x); } catch (e) { return String(x); } };

function check(name, cond, detail) {
  if (cond) { passed++; console.log(`PASS ${name}`); } else {
    failed++; failures.push(name);
    console.log(`FAIL ${name}${detail !== undefined ? ': ' + detail : ''}`);
  }
  return !!cond;
}
function deepEq(a, b) { return j(a) === j(b); }
function eq(name, got, want) { return check(name, deepEq(got, want), `got ${j(got)}, want ${j(want)}`); }
function optional(name, cond, detail) {
  optionalResults.push([name, !!cond]);
  console.log(`${cond ? 'OPTIONAL-PASS' : 'OPTIONAL-FAIL'} ${name}${detail !== undefined ? ': ' + detail : ''}`);
}

function mkClient(extra) {
  return new ironMq.Client(Object.assign({
    host: HOST, port: PORT, scheme: 'http', project_id: PROJECT_ID, token: TOKEN,
    api_version: 3,
  }, extra || {}));
}

// Call a callback-style client method; resolves {err, body}.  Guards against the
// client's double callback invocation (see header).
function c(fn) {
  return new Promise((resolve) => {
    let done = false;
    try {
      fn((err, body) => {
        if (done) { doubleCallbacks++; return undefined; }
        done = true;
        resolve({ err: err || null, body });
        return undefined;
      });
    } catch (e) {
      if (!done) { done = true; resolve({ err: e, body: undefined, threw: true }); }
    }
  });
}

// Expect success; on error record a failure.  Returns body or undefined.
async function ok(name, fn) {
  const r = await c(fn);
  if (r.err) {
    check(`${name} (call succeeded)`, false, `${r.threw ? 'threw ' : ''}${r.err && r.err.message}`);
    return undefined;
  }
  return r.body;
}

// Expect an error; optionally check its message.
async function fails(name, fn, msg, contains) {
  const r = await c(fn);
  if (!r.err) return check(`${name} -> error`, false, `succeeded with ${j(r.body)}`);
  check(`${name} -> error`, true);
  const m = r.err.message;
  if (msg !== undefined) eq(`${name} error msg`, m, msg);
  if (contains !== undefined) check(`${name} error msg contains ${j(contains)}`, typeof m === 'string' && m.includes(contains), `got ${j(m)}`);
  return true;
}

const isMsgId = (x) => typeof x === 'string' && /^[0-9]+$/.test(x);
const isResv = (x) => typeof x === 'string' && x.length > 0;

// ---------------------------------------------------------------------------

async function testAuth() {
  const bad = mkClient({ token: 'definitely-not-the-token', queue_name: qn('auth') });
  await fails('§1.4 wrong token: info', (cb) => bad.info(cb));
  await fails('§1.4 wrong token: post', (cb) => bad.post('x', cb));
}

async function testQueueLifecycle(mq) {
  const name = qn('life');
  const q = mq.queue(name);
  await fails('§4.2 info(missing queue)', (cb) => q.info(cb)); // client reports 'Unknown error' (see header)

  const created = await ok('create_queue(name, {})', (cb) => mq.create_queue(name, {}, cb));
  if (created) {
    const cq = created.queue || {};
    eq('§4.3 create response wrapped in {queue}', typeof created.queue, 'object');
    eq('§4.3 create echoes name', cq.name, name);
    eq('§4.3 default message_timeout', cq.message_timeout, 60);
    eq('§4.3 default message_expiration', cq.message_expiration, 604800);
    eq('§3.1 type pull', cq.type, 'pull');
    eq('§3.1 project_id string', cq.project_id, PROJECT_ID);
    check('§3.1 create omits size/total_messages', !('size' in cq) && !('total_messages' in cq), j(cq));
  }
  const info = await ok('info()', (cb) => q.info(cb));
  if (info) {
    eq('§4.2 info name/size/total/timeout/expiration/type',
      [info.name, info.size, info.total_messages, info.message_timeout, info.message_expiration, info.type],
      [name, 0, 0, 60, 604800, 'pull']);
    check('§3.1 pull queue has no push', !('push' in info), j(info));
  }
  // create_queue with options undefined -> body {} ; on an existing queue = upsert
  const up = await ok('create_queue(existing, {message_timeout})', (cb) => mq.create_queue(name, { message_timeout: 90 }, cb));
  if (up) eq('§4.3 PUT existing updates', (up.queue || {}).message_timeout, 90);

  const u = await ok('update_queue()', (cb) => mq.update_queue(name, { message_timeout: 45 }, cb));
  if (u) eq('§4.4 update_queue response', [(u.queue || {}).name, (u.queue || {}).message_timeout], [name, 45]);
  const u2 = await ok('Client.update()', (cb) => q.update({ message_expiration: 7200 }, cb));
  if (u2) eq('§4.4 update() response keeps timeout', [(u2.queue || {}).message_timeout, (u2.queue || {}).message_expiration], [45, 7200]);
  const i2 = await ok('info after update', (cb) => q.info(cb));
  if (i2) eq('§4.4 info after update', [i2.message_timeout, i2.message_expiration], [45, 7200]);
  await fails('§4.4 update_queue(missing)', (cb) => mq.update_queue(qn('nope'), { message_timeout: 40 }, cb), 'Queue not found');
  await fails('§4.4 update_queue(type change)', (cb) => mq.update_queue(name,
    { type: 'unicast', push: { subscribers: [{ name: 's', url: 'http://127.0.0.1:9/x' }] } }, cb));

  const d = await ok('del_queue()', (cb) => q.del_queue(cb));
  eq('§4.5 del_queue msg', d, { msg: 'Deleted' });
  await fails('§4.5 info after delete', (cb) => q.info(cb));
  await fails('§4.5 del_queue(missing)', (cb) => q.del_queue(cb), 'Queue not found');
}

async function testListQueues(mq) {
  const names = ['a', 'b', 'c', 'd'].map((x) => qn(`list-${x}`));
  for (const n of names.slice().reverse()) await ok(`create ${n}`, (cb) => mq.create_queue(n, {}, cb));
  const prefix = qn('list-');
  const pick = (l) => (Array.isArray(l) ? l.map((x) => x.name) : l);

  let l = await ok('queues({prefix})', (cb) => mq.queues({ prefix }, cb));
  eq('§4.1 queues(prefix) sorted', pick(l), names);
  if (Array.isArray(l)) check('§4.1 list entries only carry name', l.every((e) => deepEq(Object.keys(e), ['name'])), j(l));
  l = await ok('queues({prefix, per_page:2})', (cb) => mq.queues({ prefix, per_page: 2 }, cb));
  eq('§4.1 per_page=2', pick(l), names.slice(0, 2));
  l = await ok('queues({previous})', (cb) => mq.queues({ prefix, previous: names[1] }, cb));
  eq('§4.1 previous=b', pick(l), names.slice(2));
  l = await ok('queues({previous: nonexistent})', (cb) => mq.queues({ prefix, previous: qn('list-bb') }, cb));
  eq('§4.1 previous=<nonexistent>', pick(l), names.slice(2));
  l = await ok('queues({prefix: none})', (cb) => mq.queues({ prefix: qn('zzz') }, cb));
  eq('§4.1 no match -> []', pick(l), []);
  l = await ok('queues({page:0, per_page:100})', (cb) => mq.queues({ page: 0, per_page: 100 }, cb));
  if (Array.isArray(l)) {
    const all = pick(l);
    check('§4.1/§15.6 page ignored, contains created queues', names.every((n) => all.includes(n)), j(all));
    eq('§4.1 sorted', all, all.slice().sort());
  }
  l = await ok('queues({})', (cb) => mq.queues({}, cb));
  check('§4.1 queues({}) returns at most 30 (default per_page)', Array.isArray(l) && l.length <= 30, j(l));
  for (const n of names) await ok(`del_queue ${n}`, (cb) => mq.queue(n).del_queue(cb));
}

async function testMessages(mq) {
  const name = qn('msgs');
  const q = mq.queue(name);

  const id1 = await ok('post(single string)', (cb) => q.post('m1', cb));
  check('§5.1/§13 post returns decimal string id', isMsgId(id1), j(id1));
  const ids = await ok('post(array)', (cb) => q.post(['m2', { body: 'm3' }], cb));
  check('§5.1 batch post returns 2 ids', Array.isArray(ids) && ids.length === 2 && ids.every(isMsgId), j(ids));
  if (!isMsgId(id1) || !Array.isArray(ids) || ids.length !== 2) return;
  const [id2, id3] = ids;
  check('§5.1 ids unique', new Set([id1, id2, id3]).size === 3, j([id1, id2, id3]));

  let info = await ok('info after posts', (cb) => q.info(cb));
  if (info) eq('§3.1 size/total_messages/type after auto-create', [info.size, info.total_messages, info.type], [3, 3, 'pull']);

  // peek
  const p1 = await ok('peek({})', (cb) => q.peek({}, cb));
  eq('§5.5 peek() = head, reserved_count 0', p1 && [p1.id, p1.body, p1.reserved_count], [id1, 'm1', 0]);
  if (p1) check('§3.4 peek has no reservation_id', !p1.reservation_id, j(p1));
  const pn = await ok('peek({n:10})', (cb) => q.peek({ n: 10 }, cb));
  eq('§5.5 peek(n=10) FIFO', Array.isArray(pn) && pn.map((m) => m.body), ['m1', 'm2', 'm3']);
  const pn2 = await ok('peek_n({n:2})', (cb) => q.peek_n({ n: 2 }, cb));
  eq('§5.5 peek_n(n=2)', Array.isArray(pn2) && pn2.map((m) => m.id), [id1, id2]);

  // msg_get
  const g = await ok('msg_get()', (cb) => q.msg_get(id2, cb));
  eq('§5.4 msg_get', g && [g.id, g.body, g.reserved_count], [id2, 'm2', 0]);

  // A string cut between the halves of a UTF-16 pair: JSON.stringify writes a lone `\ud83d`,
  // which the server stores as U+FFFD (as Go's decoder did) instead of refusing the post.
  const cut = mq.queue(qn('cut'));
  const cid = await ok('post(half an emoji)', (cb) => cut.post('emoji cut: ' + '\u{1F600}'.slice(0, 1), cb));
  if (isMsgId(cid)) {
    const cm = await ok('msg_get(half an emoji)', (cb) => cut.msg_get(cid, cb));
    eq('§5.1 a lone surrogate is stored as U+FFFD', cm && cm.body, 'emoji cut: \ufffd');
  }

  // reserve
  const r1 = await ok('reserve({})', (cb) => q.reserve({}, cb));
  if (!r1) return;
  eq('§5.3 reserve head', [r1.id, r1.body, r1.reserved_count], [id1, 'm1', 1]);
  check('§5.3 reservation_id', isResv(r1.reservation_id), j(r1));
  info = await ok('info after reserve', (cb) => q.info(cb));
  if (info) eq('§3.1 size counts reserved', info.size, 3);
  const pr = await ok('peek_n after reserve', (cb) => q.peek_n({ n: 10 }, cb));
  eq('§5.5 peek excludes reserved', Array.isArray(pr) && pr.map((m) => m.id), [id2, id3]);

  // delete
  await fails('§5.6 del(reserved) without reservation_id', (cb) => q.del(id1, {}, cb));
  await fails('§5.6 del(reserved) wrong reservation_id', (cb) => q.del(id1, { reservation_id: '0123456789abcdef0123456789abcdef' }, cb));
  const d = await ok('del(id, {reservation_id})', (cb) => q.del(id1, { reservation_id: r1.reservation_id }, cb));
  eq('§5.6 del msg', d, { msg: 'Deleted' });
  await fails('§5.4 msg_get(deleted)', (cb) => q.msg_get(id1, cb));
  info = await ok('info after delete', (cb) => q.info(cb));
  if (info) eq('§3.1 size after delete', info.size, 2);

  // reserve n=2, timeout=1 -> expires
  const rs = await ok('reserve({n:2, timeout:1})', (cb) => q.reserve({ n: 2, timeout: 1 }, cb));
  eq('§5.3 reserve(n=2) FIFO + reserved_count', Array.isArray(rs) && rs.map((m) => [m.id, m.reserved_count]), [[id2, 1], [id3, 1]]);
  const none = await ok('reserve({}) with nothing visible', (cb) => q.reserve({}, cb));
  eq('§5.3 client returns undefined for empty messages list', none, undefined);
  const noneN = await ok('get_n({n:3}) with nothing visible', (cb) => q.get_n({ n: 3 }, cb));
  eq('§5.3/§15.12 empty reserve -> []', noneN, []);
  await sleep(1600);
  const rs2 = await ok('get_n({n:5, timeout:30}) after expiry', (cb) => q.get_n({ n: 5, timeout: 30 }, cb));
  eq('§12 expired reservations come back, reserved_count 2', Array.isArray(rs2) && rs2.map((m) => [m.id, m.reserved_count]), [[id2, 2], [id3, 2]]);
  if (!Array.isArray(rs2) || rs2.length !== 2) return;
  const old2 = (rs || [])[0] && rs[0].reservation_id;
  if (old2) await fails('§5.6 del with expired reservation', (cb) => q.del(id2, { reservation_id: old2 }, cb));
  const [m2, m3] = rs2;

  // touch
  const t = await ok('msg_touch({timeout:30})', (cb) => q.msg_touch(id2, m2.reservation_id, { timeout: 30 }, cb));
  let cur2 = m2.reservation_id;
  if (t) {
    eq('§5.9 touch msg', t.msg, 'Touched');
    check('§5.9 new reservation id', isResv(t.reservation_id) && t.reservation_id !== m2.reservation_id, j(t));
    cur2 = t.reservation_id;
    await fails('§5.9 del with pre-touch reservation', (cb) => q.del(id2, { reservation_id: m2.reservation_id }, cb));
  }
  const t2 = await ok('msg_touch({})', (cb) => q.msg_touch(id2, cur2, {}, cb));
  if (t2) {
    eq('§5.9 touch (default timeout) msg', t2.msg, 'Touched');
    check('§5.9 consecutive touches differ', isResv(t2.reservation_id) && t2.reservation_id !== cur2, j(t2));
    cur2 = t2.reservation_id;
  }

  // release
  const rl = await ok('msg_release({})', (cb) => q.msg_release(id2, cur2, {}, cb));
  eq('§5.10 release msg', rl, { msg: 'Released' });
  await fails('§5.10 del with released reservation', (cb) => q.del(id2, { reservation_id: cur2 }, cb));
  const ph = await ok('peek after release', (cb) => q.peek({}, cb));
  eq('§5.10 released message at head', ph && ph.id, id2);
  const rl2 = await ok('msg_release({delay:1})', (cb) => q.msg_release(id3, m3.reservation_id, { delay: 1 }, cb));
  eq('§5.10 release(delay) msg', rl2, { msg: 'Released' });
  const id5 = await ok('post({body, delay:1})', (cb) => q.post({ body: 'm5', delay: 1 }, cb));
  let vis = await ok('peek_n right after delays', (cb) => q.peek_n({ n: 10 }, cb));
  eq('§5.1/§5.10 delayed messages hidden', Array.isArray(vis) && vis.map((m) => m.id), [id2]);
  await sleep(1600);
  vis = await ok('peek_n after delays', (cb) => q.peek_n({ n: 10 }, cb));
  const visIds = Array.isArray(vis) ? vis.map((m) => m.id) : [];
  check('§5.10 delayed release visible after delay', visIds.includes(id3), j(visIds));
  check('§5.1 delayed post visible after delay', visIds.includes(id5), j(visIds));

  // del_multiple({reservation_ids})
  const all = await ok('get({n:10, timeout:30})', (cb) => q.get({ n: 10, timeout: 30 }, cb));
  eq('§5.3 get(n=10) returns the 3 remaining', Array.isArray(all) && all.map((m) => m.id).sort(), [id2, id3, id5].sort());
  if (Array.isArray(all)) {
    const dm = await ok('del_multiple({reservation_ids})', (cb) => q.del_multiple({ reservation_ids: all }, cb));
    eq('§5.7 del_multiple(reservation_ids) msg', dm, { msg: 'Deleted' });
  }
  info = await ok('info after batch delete', (cb) => q.info(cb));
  if (info) eq('§5.7 size 0', info.size, 0);

  // del_multiple({ids})
  const xs = await ok('post 3', (cb) => q.post(['x1', 'x2', 'x3'], cb));
  if (Array.isArray(xs)) {
    const dm = await ok('del_multiple({ids})', (cb) => q.del_multiple({ ids: xs.slice(0, 2) }, cb));
    eq('§5.7 del_multiple(ids) msg', dm, { msg: 'Deleted' });
    const left = await ok('peek_n after ids delete', (cb) => q.peek_n({ n: 10 }, cb));
    eq('§5.7 remaining', Array.isArray(left) && left.map((m) => m.id), xs.slice(2));
  }
  // get() (deprecated alias of reserve) with n=1 returns single object
  const g1 = await ok('get({})', (cb) => q.get({}, cb));
  eq('get({}) returns x3 reserved', g1 && [g1.body, g1.reserved_count], ['x3', 1]);
  if (Array.isArray(xs)) await fails('§5.7 del_multiple(ids) of reserved msg w/o reservation', (cb) => q.del_multiple({ ids: xs.slice(2) }, cb));

  // clear
  await ok('post before clear', (cb) => q.post(['c1', 'c2'], cb));
  const cl = await ok('clear()', (cb) => q.clear(cb));
  eq('§5.8 clear msg', cl, { msg: 'Cleared' });
  info = await ok('info after clear', (cb) => q.info(cb));
  if (info) eq('§5.8 size 0 / total_messages 9', [info.size, info.total_messages], [0, 9]);
  const emp = await ok('peek_n after clear', (cb) => q.peek_n({ n: 5 }, cb));
  eq('§5.8/§15.12 peek after clear -> []', emp, []);
  await ok('del_queue msgs', (cb) => q.del_queue(cb));
}

async function testReserveOptions(mq) {
  const name = qn('resv');
  const q = mq.queue(name);
  await ok('create resv', (cb) => mq.create_queue(name, {}, cb));
  let t0 = Date.now();
  const e = await ok('get_n({wait:1})', (cb) => q.get_n({ wait: 1 }, cb));
  let el = (Date.now() - t0) / 1000;
  eq('§5.3 wait=1 empty -> []', e, []);
  check('§5.3 wait=1 waited ~1 s', el >= 0.8 && el < 4, `elapsed ${el}`);

  setTimeout(() => { mkClient({ queue_name: name }).post('late', () => {}); }, 500);
  t0 = Date.now();
  const lp = await ok('reserve({wait:5}) + concurrent post', (cb) => q.reserve({ wait: 5, timeout: 30 }, cb));
  el = (Date.now() - t0) / 1000;
  eq('§12 long poll gets the message', lp && lp.body, 'late');
  check('§12 long poll returns early', el < 4, `elapsed ${el}`);
  if (lp) await ok('del long-polled', (cb) => q.del(lp.id, { reservation_id: lp.reservation_id }, cb));

  await ok('post p1 p2', (cb) => q.post(['p1', 'p2'], cb));
  const pop = await ok('reserve({delete:true})', (cb) => q.reserve({ delete: true }, cb));
  eq('§5.3 pop returns head', pop && pop.body, 'p1');
  if (pop) await fails('§5.3 popped message gone', (cb) => q.msg_get(pop.id, cb));
  const info = await ok('info after pop', (cb) => q.info(cb));
  if (info) eq('§5.3 size after pop', info.size, 1);

  await fails('§5.3 reserve(missing queue)', (cb) => mq.queue(qn('missing')).reserve({}, cb), 'Queue not found');
  await fails('§5.5 peek(missing queue)', (cb) => mq.queue(qn('missing')).peek({}, cb));
  await ok('del_queue resv', (cb) => q.del_queue(cb));
}

async function testSpecialNames(mq) {
  for (const s of ['with space', 'plus+sign', 'colon:dash-dot.x']) {
    const name = qn(s);
    const q = mq.queue(name);
    const id = await ok(`post to ${j(name)}`, (cb) => q.post('body', cb));
    if (!id) continue;
    const info = await ok(`info ${j(name)}`, (cb) => q.info(cb));
    eq(`§1.2 name round-trips ${j(s)}`, info && [info.name, info.size], [name, 1]);
    await ok(`del_queue ${j(name)}`, (cb) => q.del_queue(cb));
  }
}

async function testPushQueue(mq) {
  const name = qn('push');
  const q = mq.queue(name);
  const sub = (n, p) => ({ name: n, url: `http://127.0.0.1:9/${p}` });
  const subs = async () => { const i = await ok('info(push)', (cb) => q.info(cb)); return i && i.push && i.push.subscribers; };

  await fails('§4.3 push queue without subscribers', (cb) => mq.create_queue(qn('push-empty'), { type: 'multicast', push: { subscribers: [] } }, cb));

  const cr = await ok('create_queue(push)', (cb) => mq.create_queue(name, {
    type: 'multicast', push: { subscribers: [sub('s1', 'x')], retries: 2, retries_delay: 5, error_queue: qn('push-err') },
  }, cb));
  if (!cr) return;
  const cq = cr.queue || {};
  eq('§4.3 type multicast', cq.type, 'multicast');
  const p = cq.push || {};
  eq('§3.2 push echoed', [p.subscribers, p.retries, p.retries_delay, p.error_queue], [[sub('s1', 'x')], 2, 5, qn('push-err')]);

  const a = await ok('add_subscribers(single object)', (cb) => q.add_subscribers(sub('s2', 'y'), cb));
  eq('§4.6 add msg', a, { msg: 'Updated' });
  eq('§4.6 add appends', await subs(), [sub('s1', 'x'), sub('s2', 'y')]);
  const a2 = await ok('add_subscribers(array, existing name)', (cb) => q.add_subscribers([sub('s1', 'x2'), sub('s3', 'z')], cb));
  eq('§4.6 add (update existing) msg', a2, { msg: 'Updated' });
  eq('§4.6 existing updated in place, new appended', await subs(), [sub('s1', 'x2'), sub('s2', 'y'), sub('s3', 'z')]);

  const rm = await ok('rm_subscribers({name})', (cb) => q.rm_subscribers({ name: 's2' }, cb));
  eq('§4.6 rm msg', rm, { msg: 'Updated' });
  eq('§4.6 removed by name', await subs(), [sub('s1', 'x2'), sub('s3', 'z')]);
  // clients may send full subscriber objects in the removal body -> match by name only
  const rm2 = await ok('rm_subscribers(full object)', (cb) => q.rm_subscribers([sub('s1', 'something-else')], cb));
  eq('§4.6 rm by full object msg', rm2, { msg: 'Updated' });
  eq('§4.6 removal matches by name only', await subs(), [sub('s3', 'z')]);

  const rp = await ok('rpl_subscribers()', (cb) => q.rpl_subscribers([sub('s4', 'w'), sub('s5', 'v')], cb));
  eq('§4.6 rpl msg', rp, { msg: 'Updated' });
  eq('§4.6 replaced', await subs(), [sub('s4', 'w'), sub('s5', 'v')]);
  await ok('rm s5', (cb) => q.rm_subscribers({ name: 's5' }, cb));
  await fails('§4.6 rm last subscriber', (cb) => q.rm_subscribers({ name: 's4' }, cb), undefined, 'Push queues must have at least one subscriber');
  eq('§4.6 last subscriber kept', await subs(), [sub('s4', 'w')]);

  const u = await ok('update push settings', (cb) => q.update({ type: 'multicast', push: { retries: 4, retries_delay: 10 } }, cb));
  if (u) {
    const up = (u.queue || {}).push || {};
    eq('§4.4 push update', [up.retries, up.retries_delay, up.error_queue, up.subscribers], [4, 10, qn('push-err'), [sub('s4', 'w')]]);
  }

  const mid = await ok('post to push queue', (cb) => q.post('pushed', cb));
  if (isMsgId(mid)) {
    const st = await ok('msg_push_statuses()', (cb) => q.msg_push_statuses(mid, cb));
    console.log(`INFO push statuses answer: ${j(st)}`);
    check('§5.11 push statuses {subscribers: [...]}', st && Array.isArray(st.subscribers), j(st));
    if (st && Array.isArray(st.subscribers)) {
      for (const s of st.subscribers) check('§3.6/§15.10 push status has name + subscriber_name', 'name' in s && 'subscriber_name' in s, j(s));
    }
    const ack = await c((cb) => q.del_msg_push_status(mid, '0123456789abcdef0123456789abcdef', 's4', cb));
    console.log(`INFO del_msg_push_status(bogus reservation) -> ${ack.err ? 'error ' + j(ack.err.message) : j(ack.body)}`);
    check('§5.6 push ack with bogus reservation is rejected', !!ack.err, j(ack.body));
  }
  const d = await ok('del_queue(push)', (cb) => q.del_queue(cb));
  eq('§4.5 del push queue', d, { msg: 'Deleted' });
}

async function main() {
  console.log(`iron_mq node ${require('iron_mq/package.json').version} against http://${HOST}:${PORT} project ${PROJECT_ID}`);
  const mq = mkClient({ queue_name: qn('default') });
  const tests = [
    ['auth', () => testAuth()],
    ['queue_lifecycle', () => testQueueLifecycle(mq)],
    ['list_queues', () => testListQueues(mq)],
    ['messages', () => testMessages(mq)],
    ['reserve_options', () => testReserveOptions(mq)],
    ['special_names', () => testSpecialNames(mq)],
    ['push_queue', () => testPushQueue(mq)],
  ];
  for (const [n, t] of tests) {
    console.log(`== ${n}`);
    try { await t(); } catch (e) { console.log(e && e.stack); check(`${n}: unexpected exception`, false, String(e)); }
  }
  if (doubleCallbacks) console.log(`NOTE client bug: ${doubleCallbacks} duplicate callback invocations swallowed (cb(cb(err, body)))`);
  if (failures.length) { console.log('-- failed checks:'); for (const f of failures) console.log(`   ${f}`); }
  const optFail = optionalResults.filter(([, okk]) => !okk).map(([n]) => n);
  if (optFail.length) console.log(`-- optional (not counted) failures: ${optFail.join(', ')}`);
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
}

process.on('unhandledRejection', (e) => { console.log('unhandledRejection', e && e.stack); });
main();
