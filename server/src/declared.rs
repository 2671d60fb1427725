//! Queues declared in the configuration (`queues`), created or updated at start.
//!
//! A declaration is an object with `project`, `name` and any of the settings a
//! `PUT /3/projects/{pid}/queues/{name}` body takes (`type`, `message_timeout`,
//! `message_expiration`, `push`, `dead_letter`, `alerts`). The settings go through the API's
//! own parser and rules (`settings::spec_from_body` and `settings::apply_declared`), so a
//! declaration is valid exactly when the same PUT would be, but for one thing: a declaration
//! states what the queue is, so `dead_letter.queue_name: ""` there means "none" even where
//! there is none (a PUT may use it only to remove one). Settings a declaration leaves out
//! keep their current value on an existing queue, as with PUT.

use std::collections::HashMap;

use engine::{Engine, QueueKey};
use serde_json::{Map, Value};

use crate::config::ConfigError;
use crate::settings;

/// The keys a declaration may have.
const KEYS: &[&str] = &[
    "project",
    "name",
    "type",
    "message_timeout",
    "message_expiration",
    "push",
    "dead_letter",
    "alerts",
];

/// One checked declaration.
#[derive(Debug, Clone)]
pub struct Declared {
    /// Position in `queues`, for messages.
    pub index: usize,
    pub key: QueueKey,
    /// The settings, as a PUT body.
    pub body: Value,
}

fn at(index: usize, sub: Option<&str>, msg: impl Into<String>) -> ConfigError {
    let key = match sub {
        Some(s) => format!("queues[{index}].{s}"),
        None => format!("queues[{index}]"),
    };
    ConfigError::InvalidAt {
        key,
        msg: msg.into(),
    }
}

fn string_field(m: &Map<String, Value>, index: usize, field: &str) -> Result<String, ConfigError> {
    match m.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::String(_)) | None => Err(at(index, Some(field), "is required")),
        Some(_) => Err(at(index, Some(field), "must be a string")),
    }
}

/// Checks every declaration as the API would check a PUT creating the queue.
pub fn parse(queues: &[Value]) -> Result<Vec<Declared>, ConfigError> {
    let mut out: Vec<Declared> = Vec::with_capacity(queues.len());
    let mut links: Vec<Option<String>> = Vec::with_capacity(queues.len());
    for (index, v) in queues.iter().enumerate() {
        let Value::Object(m) = v else {
            return Err(at(index, None, "must be an object"));
        };
        if let Some(k) = m.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(at(
                index,
                Some(k),
                format!("unknown key; expected one of {}", KEYS.join(", ")),
            ));
        }
        let project = string_field(m, index, "project")?;
        if !crate::auth::valid_project_id(&project) {
            return Err(at(
                index,
                Some("project"),
                "must be 1 to 64 characters of A-Z a-z 0-9 _ -",
            ));
        }
        let name = string_field(m, index, "name")?;
        if name.len() > engine::limits::QUEUE_NAME_BYTES_MAX {
            return Err(at(index, Some("name"), "must be 1 to 255 bytes"));
        }
        let key = QueueKey::new(project, name);
        if let Some(prev) = out.iter().find(|d| d.key == key) {
            return Err(at(
                index,
                None,
                format!("declares the same queue as queues[{}]", prev.index),
            ));
        }
        let mut body = m.clone();
        body.remove("project");
        body.remove("name");
        let body = Value::Object(body);
        let spec = settings::spec_from_body(body.clone()).map_err(|e| at(index, None, e.msg))?;
        let link = spec
            .dead_letter
            .as_ref()
            .and_then(|d| d.queue_name.clone())
            .filter(|n| !n.is_empty());
        settings::apply_declared(None, spec).map_err(|e| at(index, None, e.msg))?;
        links.push(link);
        out.push(Declared { index, key, body });
    }
    check_cycles(&out, &links)?;
    Ok(out)
}

/// Refuses declarations whose dead-letter links close a cycle among themselves, before
/// anything is applied. (A cycle through a queue that is not declared, or whose link the
/// declaration leaves as it is, is refused by the engine when the link is set.)
fn check_cycles(out: &[Declared], links: &[Option<String>]) -> Result<(), ConfigError> {
    let by_key: HashMap<&QueueKey, &str> = out
        .iter()
        .zip(links)
        .filter_map(|(d, link)| Some((&d.key, link.as_deref()?)))
        .collect();
    for (d, link) in out.iter().zip(links) {
        let Some(first) = link else { continue };
        let mut path = vec![d.key.name.clone()];
        let mut next = first.clone();
        // A walk longer than the declarations repeats one: a cycle this one is not on,
        // reported from its own members.
        for _ in 0..=out.len() {
            path.push(next.clone());
            if next == d.key.name {
                let cycle = engine::Error::DeadLetterCycle(path).to_string();
                return Err(at(d.index, Some("dead_letter"), cycle));
            }
            let Some(n) = by_key.get(&QueueKey::new(d.key.project.clone(), next)) else {
                break;
            };
            next = n.to_string();
        }
    }
    Ok(())
}

/// Creates or updates every declared queue. The project must exist.
///
/// Nothing is written unless every declaration can be applied: the projects are checked
/// first, then the dead-letter links and the forwarding links (fan-out, error queues,
/// alerts) the queues will have at the end (the declared ones laid over the links in the
/// store) must not close a cycle. The declarations are then applied so that no step closes
/// a cycle on the way: each after the declared queues it links to (so the chains from it
/// are already the final ones, and those have no cycle; see [`application_order`]).
pub async fn apply(engine: &Engine, queues: &[Value]) -> Result<(), ConfigError> {
    let planned = plan(engine, queues, None)?;
    for i in application_order(&planned) {
        let p = &planned[i];
        let spec =
            settings::spec_from_body(p.body.clone()).map_err(|e| at(p.index, None, e.msg))?;
        let info = engine
            .upsert_queue_linked(
                &p.key,
                true,
                |cur| settings::apply_declared(cur, spec),
                &settings::forward_links,
            )
            .await
            .map_err(|e| at(p.index, None, e.to_string()))?
            .map_err(|e| at(p.index, None, e.msg))?;
        crate::queues::create_dead_letter_queue(engine, &info)
            .await
            .map_err(|e| at(p.index, None, e.to_string()))?;
        tracing::info!(
            project = %p.key.project,
            queue = %p.key.name,
            action = if p.existed { "updated" } else { "created" },
            "declared queue"
        );
    }
    Ok(())
}

/// Checks the declarations against the store (see [`apply`]) without writing anything;
/// `bootstrapping` is a project the start is about to create. Run before a first start
/// creates (and prints, once) its credentials, so that a declaration that cannot be applied
/// stops the start before anything is made.
pub fn check(
    engine: &Engine,
    queues: &[Value],
    bootstrapping: Option<&str>,
) -> Result<(), ConfigError> {
    plan(engine, queues, bootstrapping).map(drop)
}

/// The declarations, checked, in the order they are written in.
fn plan(
    engine: &Engine,
    queues: &[Value],
    bootstrapping: Option<&str>,
) -> Result<Vec<Planned>, ConfigError> {
    let declared = parse(queues)?;
    let mut planned = Vec::with_capacity(declared.len());
    for d in declared {
        let Declared { index, key, body } = d;
        if engine.meta(&format!("project/{}", key.project)).is_none()
            && bootstrapping != Some(key.project.as_str())
        {
            return Err(at(
                index,
                Some("project"),
                format!("project {} does not exist", key.project),
            ));
        }
        let current = engine.queue_info_now(&key).ok().map(|i| i.config);
        let spec = settings::spec_from_body(body.clone()).map_err(|e| at(index, None, e.msg))?;
        let config =
            settings::apply_declared(current.as_ref(), spec).map_err(|e| at(index, None, e.msg))?;
        let forwards = settings::forward_links(&key, &config);
        let link = config.dead_letter.map(|dl| dl.queue);
        planned.push(Planned {
            index,
            key,
            body,
            existed: current.is_some(),
            link,
            forwards,
        });
    }
    let mut links: HashMap<QueueKey, String> = engine
        .all_queues()
        .into_iter()
        .filter_map(|q| {
            let dl = q.config.dead_letter?;
            Some((QueueKey::new(q.project, q.name), dl.queue))
        })
        .collect();
    for p in &planned {
        match &p.link {
            Some(l) => links.insert(p.key.clone(), l.clone()),
            None => links.remove(&p.key),
        };
    }
    for p in &planned {
        if let Some(cycle) = cycle_from(&links, &p.key) {
            let cycle = engine::Error::DeadLetterCycle(cycle).to_string();
            return Err(at(p.index, Some("dead_letter"), cycle));
        }
    }
    // The same for the links queues forward messages along on their own (fan-out, error
    // queues, alerts), so that the engine's check cannot refuse one declaration after
    // others were written.
    let mut forwards: HashMap<QueueKey, Vec<QueueKey>> = engine
        .all_queues()
        .into_iter()
        .map(|q| {
            let key = QueueKey::new(q.project, q.name);
            let to = settings::forward_links(&key, &q.config);
            (key, to)
        })
        .collect();
    for p in &planned {
        forwards.insert(p.key.clone(), p.forwards.clone());
    }
    for p in &planned {
        if let Some(cycle) = forward_cycle(&forwards, &p.key) {
            let cycle = engine::Error::PushCycle(cycle).to_string();
            return Err(at(p.index, None, cycle));
        }
    }
    Ok(planned)
}

/// A declaration about to be applied, with the dead-letter queue it will leave its queue
/// linked to and the queues it will forward messages to (`settings::forward_links`).
struct Planned {
    index: usize,
    key: QueueKey,
    body: Value,
    existed: bool,
    link: Option<String>,
    forwards: Vec<QueueKey>,
}

/// The names along forwarding links from `start` back to it, if any path leads back.
fn forward_cycle(
    links: &HashMap<QueueKey, Vec<QueueKey>>,
    start: &QueueKey,
) -> Option<Vec<String>> {
    // Depth first, each queue once, with the path to the one at hand.
    let mut seen = std::collections::HashSet::new();
    let mut stack: Vec<(&QueueKey, Vec<String>)> = vec![(start, vec![start.name.clone()])];
    while let Some((at, path)) = stack.pop() {
        for next in links.get(at).into_iter().flatten() {
            let mut p = path.clone();
            p.push(next.name.clone());
            if next == start {
                return Some(p);
            }
            if seen.insert(next) {
                stack.push((next, p));
            }
        }
    }
    None
}

/// The names along the dead-letter links from `start` back to it, if they lead back.
fn cycle_from(links: &HashMap<QueueKey, String>, start: &QueueKey) -> Option<Vec<String>> {
    let mut path = vec![start.name.clone()];
    let mut at = start.clone();
    // Every step reaches a queue with a link; more steps than links repeat one.
    for _ in 0..=links.len() {
        let next = links.get(&at)?;
        path.push(next.clone());
        if *next == start.name {
            return Some(path);
        }
        at = QueueKey::new(start.project.clone(), next.clone());
    }
    None
}

/// Indexes of `planned` in the order to apply them: each after the declared queues it will
/// link to, by dead letter or by forwarding, where the two kinds together allow it (each
/// kind alone has no cycle at the end, checked before), so that no step closes a cycle of
/// either kind through links not yet in their final state. A depth-first post-order over
/// both kinds, started in [`dead_letter_order`].
fn application_order(planned: &[Planned]) -> Vec<usize> {
    let by_key: HashMap<&QueueKey, usize> = planned
        .iter()
        .enumerate()
        .map(|(i, p)| (&p.key, i))
        .collect();
    let next = |i: usize| -> Vec<usize> {
        let p = &planned[i];
        let dl = p
            .link
            .as_ref()
            .map(|l| QueueKey::new(p.key.project.clone(), l.clone()));
        dl.iter()
            .chain(p.forwards.iter())
            .filter_map(|k| by_key.get(k).copied())
            .collect()
    };
    let mut order = Vec::with_capacity(planned.len());
    let mut seen = vec![false; planned.len()];
    for seed in dead_letter_order(planned) {
        if seen[seed] {
            continue;
        }
        seen[seed] = true;
        // (queue, its successors not yet looked at)
        let mut stack = vec![(seed, next(seed))];
        while let Some((at, rest)) = stack.last_mut() {
            match rest.pop() {
                Some(n) if !seen[n] => {
                    seen[n] = true;
                    let succ = next(n);
                    stack.push((n, succ));
                }
                Some(_) => {}
                None => {
                    order.push(*at);
                    stack.pop();
                }
            }
        }
    }
    order
}

/// Indexes of `planned` ordered by their dead-letter links alone: those without a link
/// first, then each linked one after the declared queue it links to. The final links have
/// no cycle (checked before), so the walk ends.
fn dead_letter_order(planned: &[Planned]) -> Vec<usize> {
    let by_key: HashMap<&QueueKey, usize> = planned
        .iter()
        .enumerate()
        .map(|(i, p)| (&p.key, i))
        .collect();
    let mut order: Vec<usize> = (0..planned.len())
        .filter(|&i| planned[i].link.is_none())
        .collect();
    let mut done = vec![false; planned.len()];
    for &i in &order {
        done[i] = true;
    }
    for i in 0..planned.len() {
        // The chain of not yet ordered declared queues from `i`, then in reverse.
        let mut chain = Vec::new();
        let mut at = i;
        while !done[at] {
            done[at] = true;
            chain.push(at);
            let p = &planned[at];
            let Some(next) = p
                .link
                .as_ref()
                .and_then(|l| by_key.get(&QueueKey::new(p.key.project.clone(), l.clone())))
            else {
                break;
            };
            at = *next;
        }
        order.extend(chain.into_iter().rev());
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(v: Value) -> String {
        match parse(&[json!({"project": "p1", "name": "ok"}), v]) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn declarations_are_checked_like_a_put_and_errors_name_the_key() {
        let ok = parse(&[json!({"project": "p1", "name": "orders", "type": "pull",
            "message_timeout": 30, "dead_letter": {"queue_name": "dlq", "max_reservations": 3}})])
        .expect("valid");
        assert_eq!(ok[0].key, QueueKey::new("p1", "orders"));
        assert_eq!(
            err(json!({"project": "p1", "name": "x", "colour": "red"})),
            "configuration key `queues[1].colour`: unknown key; expected one of project, name, type, message_timeout, message_expiration, push, dead_letter, alerts"
        );
        assert_eq!(
            err(json!({"project": "p1", "name": "x", "message_timeout": 90000})),
            "configuration key `queues[1]`: message_timeout must be between 0 and 86400"
        );
        assert_eq!(
            err(json!({"project": "p1", "name": "x", "type": "multicast"})),
            "configuration key `queues[1]`: Push queues must have at least one subscriber"
        );
        assert_eq!(
            err(json!({"name": "x"})),
            "configuration key `queues[1].project`: is required"
        );
        assert_eq!(
            err(json!({"project": "p1", "name": "ok"})),
            "configuration key `queues[1]`: declares the same queue as queues[0]"
        );
        assert_eq!(
            err(json!("orders")),
            "configuration key `queues[1]`: must be an object"
        );
    }

    #[test]
    fn declarations_whose_dead_letter_links_close_a_cycle_are_refused() {
        let dl = |name: &str, to: &str| json!({"project": "p1", "name": name, "dead_letter": {"queue_name": to}});
        let refused = |qs: &[Value]| match parse(qs) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted"),
        };
        assert_eq!(
            refused(&[dl("a", "b"), dl("b", "a")]),
            "configuration key `queues[0].dead_letter`: dead_letter queue_name \"b\" would make a dead-letter cycle: a -> b -> a"
        );
        assert_eq!(
            refused(&[dl("a", "b"), dl("b", "c"), dl("c", "a")]),
            "configuration key `queues[0].dead_letter`: dead_letter queue_name \"b\" would make a dead-letter cycle: a -> b -> c -> a"
        );
        assert_eq!(
            refused(&[dl("x", "y"), dl("self", "self")]),
            "configuration key `queues[1].dead_letter`: dead_letter queue_name \"self\" would make a dead-letter cycle: self -> self"
        );
        // A chain is fine, and so are links between projects' same-named queues.
        parse(&[dl("a", "b"), dl("b", "c"), dl("c", "d")]).expect("a chain");
        let other = json!({"project": "p2", "name": "b", "dead_letter": {"queue_name": "a"}});
        parse(&[dl("a", "b"), other]).expect("another project's b");
        // Removing a link (an empty name) makes none.
        let removed = json!({"project": "p1", "name": "b", "dead_letter": {"queue_name": ""}});
        parse(&[dl("a", "b"), removed]).expect("removed link");
    }

    /// The links in the store count: a declaration that would close a cycle through a
    /// queue it does not declare is refused before anything is written, and declarations
    /// whose final links have no cycle apply whatever their order in the file.
    #[tokio::test]
    async fn declared_links_are_checked_against_the_store_before_anything_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Engine::open(engine::EngineConfig::new(dir.path())).expect("open");
        engine
            .put_meta("project/p1", Some(b"{}"))
            .await
            .expect("project");
        let dl = |name: &str, to: &str| json!({"project": "p1", "name": name, "dead_letter": {"queue_name": to}});
        let link = |name: &str| {
            engine
                .queue_info_now(&QueueKey::new("p1", name))
                .ok()
                .map(|i| i.config.dead_letter.map(|d| d.queue))
        };
        // The store: b -> a.
        apply(&engine, &[dl("b", "a")]).await.expect("b -> a");
        // a -> b first would meet b -> a, which the next declaration replaces with b -> c.
        apply(&engine, &[dl("a", "b"), dl("b", "c")])
            .await
            .expect("no cycle at the end");
        assert_eq!(
            (link("a"), link("b")),
            (Some(Some("b".into())), Some(Some("c".into())))
        );
        // The store: a -> b -> c. Declaring c -> x and x -> a closes a -> b -> c -> x -> a:
        // refused, and neither c nor x changes.
        let e = apply(&engine, &[dl("c", "x"), dl("x", "a")])
            .await
            .expect_err("a cycle through the store");
        assert!(e.to_string().contains("dead-letter cycle"), "{e}");
        // (c exists, as b's dead-letter queue, without a link of its own.)
        assert_eq!(
            (link("c"), link("x")),
            (Some(None), None),
            "nothing written"
        );
        // Removing b's link in the same file breaks it.
        let unlink_b = json!({"project": "p1", "name": "b", "dead_letter": {"queue_name": ""}});
        apply(&engine, &[dl("c", "x"), dl("x", "a"), unlink_b])
            .await
            .expect("b's link removed first");
        assert_eq!(
            (link("b"), link("c"), link("x")),
            (Some(None), Some(Some("x".into())), Some(Some("a".into())))
        );
        engine.close();
    }

    /// Forwarding links (fan-out here) are checked as a whole too: a file whose final links
    /// have no cycle applies in any order, and one that would close a cycle writes nothing.
    #[tokio::test]
    async fn declared_forwarding_links_are_checked_before_anything_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Engine::open(engine::EngineConfig::new(dir.path())).expect("open");
        engine
            .put_meta("project/p1", Some(b"{}"))
            .await
            .expect("project");
        let fan = |name: &str, to: &str| {
            json!({"project": "p1", "name": name, "type": "multicast",
                "push": {"subscribers": [{"name": "s", "url": format!("ironmq:///{to}")}]}})
        };
        apply(&engine, &[fan("a", "b"), fan("b", "c")])
            .await
            .expect("a chain");
        // c -> a first would meet a -> b -> c, which the next declaration changes to a -> x.
        apply(&engine, &[fan("c", "a"), fan("a", "x")])
            .await
            .expect("no cycle at the end");
        let e = apply(&engine, &[fan("d", "e"), fan("e", "d")])
            .await
            .expect_err("a cycle");
        assert!(e.to_string().contains("d -> e -> d"), "{e}");
        assert!(
            engine.queue_info_now(&QueueKey::new("p1", "d")).is_err(),
            "nothing written"
        );
    }
}
