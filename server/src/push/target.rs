//! Where a subscriber URL delivers: an HTTP(S) endpoint, or an `ironmq://` queue (of this
//! project, another project on this server, or another server, over the API).

use percent_encoding::percent_decode_str;

/// A parsed `ironmq://[{project}:{token}@[{host}[:{port}]]]/{queue}` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IronMqUrl {
    /// `(project, token)` when given; `None` means this queue's own project.
    pub credentials: Option<(String, String)>,
    /// `host[:port]` of another server; `None` means this server.
    pub host: Option<String>,
    pub queue: String,
}

/// Whether `url` has the `ironmq://` scheme (any case; safe on any string).
pub fn is_ironmq(url: &str) -> bool {
    url.as_bytes()
        .get(..9)
        .is_some_and(|s| s.eq_ignore_ascii_case(b"ironmq://"))
}

impl IronMqUrl {
    pub fn parse(url: &str) -> Result<IronMqUrl, String> {
        let bad = |why: &str| format!("subscriber url {url:?}: {why}");
        let rest = is_ironmq(url)
            .then(|| &url[9..])
            .ok_or_else(|| bad("not an ironmq:// URL"))?;
        let (authority, path) = rest
            .split_once('/')
            .ok_or_else(|| bad("the queue name is missing"))?;
        let queue = percent_decode_str(path)
            .decode_utf8()
            .map_err(|_| bad("the queue name is not UTF-8"))?
            .into_owned();
        // Everything after the authority's '/' is the name, decoded: `a%2Fb` (or `a/b`) is
        // the queue `a/b`, which `PUT …/queues/a%2Fb` makes.
        if queue.is_empty() || queue.len() > 255 {
            return Err(bad("the queue name must be 1 to 255 bytes"));
        }
        if authority.is_empty() {
            return Ok(IronMqUrl {
                credentials: None,
                host: None,
                queue,
            });
        }
        let (userinfo, host) = match authority.rsplit_once('@') {
            Some((u, h)) => (u, h),
            None => return Err(bad("expected project:token@host")),
        };
        let (project, token) = userinfo
            .split_once(':')
            .filter(|(p, t)| !p.is_empty() && !t.is_empty())
            .ok_or_else(|| bad("expected project:token before '@'"))?;
        let decode = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
        Ok(IronMqUrl {
            credentials: Some((decode(project), decode(token))),
            host: (!host.is_empty()).then(|| host.to_string()),
            queue,
        })
    }

    /// The API URL that posts messages to the queue on another server: HTTPS without a
    /// port or on port 443 (the form of IronMQ's hosted clusters, which carries a token that
    /// must not cross the network in clear), HTTP on any other port.
    pub fn post_url(&self, project: &str) -> Option<String> {
        let host = self.host.as_ref()?;
        // `[v6]:port` or `name:port`; a bare IPv6 address is always bracketed in a URL.
        let port = match host.rsplit_once(']') {
            Some((_, rest)) => rest.strip_prefix(':'),
            None => host.rsplit_once(':').map(|(_, p)| p),
        };
        let scheme = match port {
            None | Some("443") => "https",
            Some(_) => "http",
        };
        let enc = |s: &str| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        Some(format!(
            "{scheme}://{host}/3/projects/{}/queues/{}/messages",
            enc(project),
            enc(&self.queue)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme_check_is_safe_on_any_string() {
        assert!(is_ironmq("IronMQ:///q"));
        for url in ["http://aé.example/", "ironmq:/é", "ironmq", "", "éééééé"] {
            assert!(!is_ironmq(url), "{url}");
            assert!(IronMqUrl::parse(url).is_err(), "{url}");
        }
    }

    #[test]
    fn parses_the_three_forms_and_refuses_the_rest() {
        let same = IronMqUrl::parse("ironmq:///fan%20out").unwrap();
        assert_eq!(
            (same.credentials, same.host, same.queue.as_str()),
            (None, None, "fan out")
        );
        // A name with a '/' (a queue `PUT …/queues/a%2Fb` made), encoded or not.
        for url in ["ironmq:///a%2Fb", "ironmq:///a/b"] {
            assert_eq!(IronMqUrl::parse(url).unwrap().queue, "a/b", "{url}");
        }
        let local = IronMqUrl::parse("ironmq://p1:t1@/q").unwrap();
        assert_eq!(local.credentials, Some(("p1".into(), "t1".into())));
        assert_eq!(local.host, None);
        let remote = IronMqUrl::parse("IRONMQ://p:t@mq.example:8080/q").unwrap();
        assert_eq!(remote.host.as_deref(), Some("mq.example:8080"));
        assert_eq!(
            remote.post_url("p").unwrap(),
            "http://mq.example:8080/3/projects/p/queues/q/messages"
        );
        for (host, url) in [
            ("mq.example", "https://mq.example/3"),
            ("mq.example:443", "https://mq.example:443/3"),
            ("[::1]", "https://[::1]/3"),
            ("[::1]:8080", "http://[::1]:8080/3"),
        ] {
            let u = IronMqUrl::parse(&format!("ironmq://p:t@{host}/q")).unwrap();
            assert!(u.post_url("p").unwrap().starts_with(url), "{host}");
        }
        for bad in [
            "ironmq://",
            "ironmq://host/q",
            "ironmq:///",
            "ironmq://p@h/q",
            "http://x/q",
        ] {
            assert!(IronMqUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
