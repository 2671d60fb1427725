//! Logging: a small logfmt formatter (`t=... lvl=... msg="..." key=value`) for `tracing`.
//!
//! Levels print as `dbug|info|warn|eror|crit`; an event with the field `crit = true` is
//! printed as `crit`.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The logfmt event formatter.
pub struct Logfmt;

#[derive(Default)]
struct Fields {
    msg: String,
    crit: bool,
    rest: Vec<(&'static str, String)>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let s = format!("{value:?}");
        self.push(field, s);
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field, value.to_string());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        if field.name() == "crit" {
            self.crit = value;
        } else {
            self.push(field, value.to_string());
        }
    }
}

impl Fields {
    fn push(&mut self, field: &Field, s: String) {
        if field.name() == "message" {
            self.msg = s;
        } else {
            self.rest.push((field.name(), s));
        }
    }
}

/// Whether a logfmt value must be quoted: empty, or holding a space or any other
/// whitespace, `=`, `"`, a backslash, a control character, or U+FFFD (what a decoder made of bad
/// bytes). Unquoted values are read verbatim by logfmt parsers up to the next space.
fn needs_quotes(v: &str) -> bool {
    v.is_empty()
        || v.chars().any(|c| {
            c <= ' '
                || c == '='
                || c == '"'
                || c == '\\'
                || c == '\u{fffd}'
                || c.is_whitespace()
                || c.is_control()
        })
}

/// Appends a logfmt value, quoted and escaped when needed. Escapes are those of a JSON
/// string (`\"`, `\\`, `\n`, `\r`, `\t`, `\u00XX`), which Go's logfmt decoder and most
/// others read.
pub fn write_value(out: &mut String, v: &str) {
    if !needs_quotes(v) {
        out.push_str(v);
        return;
    }
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {
                // Control characters are all in the BMP: one \uXXXX escape each.
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

impl<S, N> FormatEvent<S, N> for Logfmt
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut f = Fields::default();
        event.record(&mut f);
        let lvl = if f.crit {
            "crit"
        } else {
            match *event.metadata().level() {
                Level::TRACE | Level::DEBUG => "dbug",
                Level::INFO => "info",
                Level::WARN => "warn",
                Level::ERROR => "eror",
            }
        };
        let fields = f.rest.iter().map(|(k, v)| (*k, v.as_str()));
        writeln!(writer, "{}", line(lvl, &f.msg, fields))
    }
}

/// One logfmt line without its newline: `t=… lvl=… msg=…` and then `fields`, values quoted
/// and escaped by [`write_value`]. What the subscriber prints, and what a start prints
/// before the subscriber exists.
pub fn line<'a>(
    lvl: &str,
    msg: &str,
    fields: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> String {
    let mut line = String::with_capacity(128);
    line.push_str("t=");
    line.push_str(&crate::time::now_rfc3339());
    line.push_str(" lvl=");
    line.push_str(lvl);
    line.push_str(" msg=");
    write_value(&mut line, msg);
    for (k, v) in fields {
        line.push(' ');
        line.push_str(k);
        line.push('=');
        write_value(&mut line, v);
    }
    line
}

/// The filter directive for a configured level: the logfmt spellings (`dbug`, `eror`,
/// `crit`) are levels too, not target names (which would silence everything).
pub fn directive(level: &str) -> &str {
    match level.trim() {
        "dbug" => "debug",
        "eror" | "crit" => "error",
        other => other,
    }
}

/// The crates whose log lines a directive for the target `ferromq` (the binary's name)
/// covers: the server's lines come from its library crate and the engine.
const FERROMQ_TARGETS: [&str; 3] = ["ferromq", "server", "engine"];

/// A filter directive with each `ferromq[=LEVEL]` part given for every crate of the server
/// ([`FERROMQ_TARGETS`]): as written, it would match `main.rs` only and hide the rest.
fn expand_ferromq_target(d: &str) -> String {
    d.split(',')
        .map(|part| {
            let (target, rest) = part.split_at(part.find('=').unwrap_or(part.len()));
            if target.trim() == "ferromq" {
                FERROMQ_TARGETS.map(|t| format!("{t}{rest}")).join(",")
            } else {
                part.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Installs the global subscriber writing logfmt to stderr at `level`
/// (`debug|info|warn|error`, the logfmt spellings, or a tracing filter directive).
pub fn init(level: &str) -> Result<(), String> {
    // A bare word that is not a level would parse as a filter on a target of that name,
    // which matches nothing: a typo such as `warning` would silence every line.
    let d = &expand_ferromq_target(directive(level));
    let plain = !d.contains(['=', ',', '[']);
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    if plain && !LEVELS.contains(&d.to_ascii_lowercase().as_str()) {
        return Err(format!(
            "log_level {level:?} is not one of debug, info, warn, error (or dbug, eror, crit), \
             nor a tracing filter directive"
        ));
    }
    let filter = tracing_subscriber::EnvFilter::try_new(d)
        .map_err(|e| format!("log_level {level:?}: {e}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .event_format(Logfmt)
        .try_init()
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::{directive, expand_ferromq_target, line, write_value};

    #[test]
    fn the_binarys_name_as_a_target_covers_the_whole_server() {
        assert_eq!(
            expand_ferromq_target("info,ferromq=debug"),
            "info,ferromq=debug,server=debug,engine=debug"
        );
        assert_eq!(expand_ferromq_target("ferromq"), "ferromq,server,engine");
        assert_eq!(expand_ferromq_target("warn,hyper=info"), "warn,hyper=info");
    }

    #[test]
    fn a_line_made_by_hand_is_formatted_like_the_subscribers() {
        let l = line(
            "crit",
            "ferromq stopped",
            [("error", "key `x`: bad\nvalue")],
        );
        let (t, rest) = l
            .strip_prefix("t=")
            .and_then(|l| l.split_once(' '))
            .expect("t first");
        assert!(
            t.ends_with('Z') && t.len() == "2024-01-01T00:00:00.000Z".len(),
            "{t}"
        );
        assert_eq!(
            rest,
            "lvl=crit msg=\"ferromq stopped\" error=\"key `x`: bad\\nvalue\""
        );
    }

    #[test]
    fn logfmt_level_names_are_levels() {
        assert_eq!(directive("dbug"), "debug");
        assert_eq!(directive(" eror"), "error");
        assert_eq!(directive("crit"), "error");
        assert_eq!(directive("server=debug,info"), "server=debug,info");
    }

    #[test]
    fn quotes_when_needed() {
        let mut s = String::new();
        write_value(&mut s, "plain");
        s.push(' ');
        write_value(&mut s, "a b=\"c\"\n");
        s.push(' ');
        write_value(&mut s, "");
        assert_eq!(s, "plain \"a b=\\\"c\\\"\\n\" \"\"");
    }

    #[test]
    fn escapes_backslashes_controls_and_unicode_spaces() {
        let v = |x: &str| {
            let mut s = String::new();
            write_value(&mut s, x);
            s
        };
        assert_eq!(v("C:\\dir"), "\"C:\\\\dir\"");
        assert_eq!(v("a\u{1b}[0m"), "\"a\\u001b[0m\"");
        assert_eq!(v("a\u{7f}"), "\"a\\u007f\"");
        assert_eq!(v("non\u{a0}breaking"), "\"non\u{a0}breaking\"");
        assert_eq!(v("bad\u{fffd}"), "\"bad\u{fffd}\"");
        assert_eq!(v("line\u{2028}sep"), "\"line\\u2028sep\"");
        assert_eq!(
            v("/3/projects/p/queues/caf\u{e9}"),
            "/3/projects/p/queues/caf\u{e9}"
        );
    }
}
