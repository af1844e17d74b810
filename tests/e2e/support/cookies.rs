//! A tiny cookie jar, the one behind [`super::agent::Agent`].
//!
//! Cookies are kept as a browser keeps them for these tests (RFC 6265 §5.3, simplified):
//! per host (the port is ignored, as browsers ignore it: the provider, the proxy and nginx
//! all live on 127.0.0.1 and see each other's cookies), per path and name; `Max-Age <= 0`
//! or an `Expires` in the past deletes; a cookie is sent when its path is a prefix of the
//! request path. `Domain` and `Secure` are not needed here (plain http on 127.0.0.1).
//!
//! Two modes, both off by default:
//! - [`CookieJar::paths_ignored`]: every cookie is kept as if it said `Path=/` (one per host
//!   and name, sent on every request to its host), as the scripted login of
//!   `tests/idp/README.md` does ("sending every cookie ... back ... ignoring Path").
//! - [`CookieJar::browser_limits`]: every `Set-Cookie` must be one a browser keeps: ASCII,
//!   `name=value`, name and value at most 4096 bytes together (RFC 6265 §6.1); else panic.

use std::collections::{BTreeMap, BTreeSet};

use http::HeaderMap;

#[derive(Debug, Clone, Default)]
pub struct CookieJar {
    /// (host, path, name) -> value
    cookies: BTreeMap<(String, String, String), String>,
    /// Every cookie kept with path `/`, whatever its `Path`.
    paths_ignored: bool,
    /// Panic on a `Set-Cookie` a browser would not keep.
    browser_limits: bool,
}

/// RFC 6265 §6.1: browsers keep cookies of at least 4096 bytes (name and value), no more.
pub const BROWSER_COOKIE_LIMIT: usize = 4096;

fn host_of(url: &url::Url) -> String {
    url.host_str().unwrap_or("").to_ascii_lowercase()
}

/// RFC 6265 §5.1.4: the default path of a cookie set by `url` without a `Path`.
fn default_path(url: &url::Url) -> String {
    let p = url.path();
    match p.rfind('/') {
        Some(0) | None => "/".to_string(),
        Some(i) => p[..i].to_string(),
    }
}

fn path_matches(cookie_path: &str, request_path: &str) -> bool {
    request_path == cookie_path
        || (request_path.starts_with(cookie_path)
            && (cookie_path.ends_with('/')
                || request_path.as_bytes().get(cookie_path.len()) == Some(&b'/')))
}

impl CookieJar {
    pub fn new() -> CookieJar {
        CookieJar::default()
    }

    /// This jar, keeping every cookie as if it said `Path=/` (see the module doc).
    pub fn paths_ignored(self) -> CookieJar {
        CookieJar {
            paths_ignored: true,
            ..self
        }
    }

    /// This jar, panicking on a `Set-Cookie` a browser would not keep (see the module doc).
    pub fn browser_limits(self) -> CookieJar {
        CookieJar {
            browser_limits: true,
            ..self
        }
    }

    /// Takes in every `Set-Cookie` of a response to `url`.
    pub fn store(&mut self, url: &url::Url, headers: &HeaderMap) {
        for v in headers.get_all(http::header::SET_COOKIE) {
            let v = match v.to_str() {
                Ok(v) => v,
                Err(_) if self.browser_limits => panic!("{url}: set-cookie is not ASCII: {v:?}"),
                Err(_) => continue,
            };
            self.store_one(url, v);
        }
    }

    pub fn store_one(&mut self, url: &url::Url, set_cookie: &str) {
        let mut parts = set_cookie.split(';');
        let Some((name, value)) = parts.next().and_then(|p| p.split_once('=')) else {
            assert!(!self.browser_limits, "{url}: bad set-cookie {set_cookie:?}");
            return;
        };
        let (name, value) = (name.trim().to_string(), value.trim().to_string());
        if self.browser_limits {
            let size = name.len() + value.len();
            assert!(
                size <= BROWSER_COOKIE_LIMIT,
                "{url}: cookie {name} is {size} bytes, browsers drop cookies over {BROWSER_COOKIE_LIMIT}"
            );
        }
        let mut path = None;
        let mut delete = false;
        for attr in parts {
            let (k, v) = attr.split_once('=').unwrap_or((attr, ""));
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            match k.as_str() {
                "path" if v.starts_with('/') => path = Some(v.to_string()),
                "max-age" => delete |= v.parse::<i64>().map(|n| n <= 0).unwrap_or(false),
                "expires" => delete |= expires_in_past(v),
                _ => {}
            }
        }
        let path = if self.paths_ignored {
            "/".to_string()
        } else {
            path.unwrap_or_else(|| default_path(url))
        };
        let key = (host_of(url), path, name);
        if delete {
            self.cookies.remove(&key);
        } else {
            self.cookies.insert(key, value);
        }
    }

    /// The `Cookie` header a browser would send to `url` (None: no cookie).
    pub fn header_for(&self, url: &url::Url) -> Option<String> {
        let host = host_of(url);
        let mut pairs: Vec<(&str, &str, &str)> = self
            .cookies
            .iter()
            .filter(|((h, p, _), _)| *h == host && path_matches(p, url.path()))
            .map(|((_, p, n), v)| (p.as_str(), n.as_str(), v.as_str()))
            .collect();
        // Longer paths first (RFC 6265 §5.4 step 2).
        pairs.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        let s: Vec<String> = pairs.iter().map(|(_, n, v)| format!("{n}={v}")).collect();
        (!s.is_empty()).then(|| s.join("; "))
    }

    /// The value of cookie `name` on 127.0.0.1 with path `/`.
    pub fn get(&self, name: &str) -> Option<String> {
        self.cookies
            .get(&("127.0.0.1".into(), "/".into(), name.into()))
            .cloned()
    }

    /// Sets (or replaces) cookie `name` on 127.0.0.1 with path `/`.
    pub fn set(&mut self, name: &str, value: &str) {
        self.cookies
            .insert(("127.0.0.1".into(), "/".into(), name.into()), value.into());
    }

    pub fn remove(&mut self, name: &str) {
        self.cookies
            .retain(|(h, _, n), _| !(h == "127.0.0.1" && n == name));
    }

    /// Names of the cookies on 127.0.0.1 with path `/`, sorted.
    pub fn names(&self) -> Vec<String> {
        self.cookies
            .keys()
            .filter(|(h, p, _)| h == "127.0.0.1" && p == "/")
            .map(|(_, _, n)| n.clone())
            .collect()
    }

    /// Names of the cookies on `host`, whatever their path.
    pub fn names_on(&self, host: &str) -> BTreeSet<String> {
        self.cookies
            .keys()
            .filter(|(h, _, _)| h == host)
            .map(|(_, _, n)| n.clone())
            .collect()
    }

    /// `name=value; ...` of the cookies on 127.0.0.1 with path `/`, as a request would
    /// carry them (to replay a browser's cookies later by hand).
    pub fn root_cookie_header(&self) -> String {
        self.cookies
            .iter()
            .filter(|((h, p, _), _)| h == "127.0.0.1" && p == "/")
            .map(|((_, _, n), v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

fn expires_in_past(v: &str) -> bool {
    // IMF-fixdate, as Set-Cookie sends it; an unparsable date keeps the cookie.
    httpdate_to_unix(v).is_some_and(|t| {
        t < std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    })
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` -> seconds since the epoch.
fn httpdate_to_unix(s: &str) -> Option<u64> {
    let p: Vec<&str> = s.split_whitespace().collect();
    if p.len() != 6 || p[5] != "GMT" {
        return None;
    }
    let day: u64 = p[1].parse().ok()?;
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = months.iter().position(|m| m.eq_ignore_ascii_case(p[2]))? as u64 + 1;
    let year: u64 = p[3].parse().ok()?;
    let hms: Vec<u64> = p[4].split(':').filter_map(|x| x.parse().ok()).collect();
    if hms.len() != 3 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some(days * 86400 + hms[0] * 3600 + hms[1] * 60 + hms[2])
}

/// The jar on its own (no server): the behaviours the login tests rely on.
#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> url::Url {
        url::Url::parse(s).unwrap()
    }

    #[test]
    fn jar_is_per_host_not_per_port_honours_path_and_applies_deletions() {
        let mut j = CookieJar::new();
        j.store_one(&u("http://127.0.0.1:1000/a/b"), "s=1; Path=/a");
        j.store_one(&u("http://127.0.0.1:1000/x/y"), "d=3");
        j.store_one(&u("http://127.0.0.1:1000/"), "r=2; Path=/; HttpOnly");
        // Another port on the same host sees them; longer paths first.
        let h = |j: &CookieJar, url: &str| j.header_for(&u(url));
        assert_eq!(
            h(&j, "http://127.0.0.1:2000/a/x").as_deref(),
            Some("s=1; r=2")
        );
        assert_eq!(h(&j, "http://127.0.0.1:2000/ab").as_deref(), Some("r=2"));
        // No `Path`: the directory of the URL that set it.
        assert_eq!(
            h(&j, "http://127.0.0.1:2000/x/z").as_deref(),
            Some("d=3; r=2")
        );
        assert_eq!(h(&j, "http://localhost:1000/a").as_deref(), None);
        assert_eq!(j.names(), vec!["r".to_string()]);
        assert_eq!(
            j.names_on("127.0.0.1").into_iter().collect::<Vec<_>>(),
            ["d", "r", "s"]
        );
        // Deleted from another port: `Max-Age=0`, then a past `Expires`.
        j.store_one(&u("http://127.0.0.1:3000/"), "r=; Max-Age=0; Path=/");
        assert_eq!(h(&j, "http://127.0.0.1:1000/a/x").as_deref(), Some("s=1"));
        j.store_one(
            &u("http://127.0.0.1:3000/"),
            "s=; Path=/a; Expires=Thu, 01 Jan 1970 00:00:00 GMT",
        );
        assert_eq!(h(&j, "http://127.0.0.1:1000/a/x"), None);
        // A future `Expires` keeps it.
        j.store_one(
            &u("http://127.0.0.1:3000/"),
            "f=1; Path=/; Expires=Fri, 01 Jan 2100 00:00:00 GMT",
        );
        assert_eq!(h(&j, "http://127.0.0.1:1000/a/x").as_deref(), Some("f=1"));
    }

    #[test]
    fn jar_with_paths_ignored_sends_every_cookie_of_the_host_everywhere() {
        let mut j = CookieJar::new().paths_ignored();
        let idp = u("http://127.0.0.1:1000/auth");
        j.store_one(&idp, "_interaction=i; Path=/interaction/u1; HttpOnly");
        j.store_one(&idp, "_interaction_resume=r; Path=/auth/u1; HttpOnly");
        assert_eq!(
            j.header_for(&u("http://127.0.0.1:1000/interaction/u1"))
                .as_deref(),
            Some("_interaction=i; _interaction_resume=r")
        );
        assert_eq!(j.header_for(&u("http://localhost:1000/")), None);
    }

    #[test]
    fn jar_with_browser_limits_keeps_4096_bytes() {
        let mut j = CookieJar::new().browser_limits();
        let at_limit = format!("c={}", "v".repeat(BROWSER_COOKIE_LIMIT - 1));
        j.store_one(&u("http://127.0.0.1:1000/"), &at_limit);
        assert_eq!(j.get("c").map(|v| v.len()), Some(BROWSER_COOKIE_LIMIT - 1));
    }

    #[test]
    #[should_panic(expected = "browsers drop cookies over 4096")]
    fn jar_with_browser_limits_refuses_a_cookie_over_4096_bytes() {
        let over = format!("c={}", "v".repeat(BROWSER_COOKIE_LIMIT));
        CookieJar::new()
            .browser_limits()
            .store_one(&u("http://127.0.0.1:1000/"), &over);
    }
}
