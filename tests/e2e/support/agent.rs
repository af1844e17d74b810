//! [`Agent`]: the one scripted browser of the end-to-end tests, a [`CookieJar`] in front of
//! [`Http`]. It never follows a redirect by itself: every answer, redirects included, is
//! returned as it came, and [`Agent::follow`] follows them only when asked.
//!
//! What it is made of, and who needs what:
//! - the jar (see [`super::cookies`]): per host like a browser's (ports do not separate
//!   cookies), `Path` honoured, deletions (`Max-Age <= 0`, a past `Expires`) applied;
//!   [`Agent::paths_ignored`] for the provider's scripted login (`Idp::login`), which sends
//!   every cookie back on every request as `tests/idp/README.md` describes it;
//! - headers sent with every request ([`Agent::with_headers`]); a request's own headers
//!   replace those of the same name;
//! - [`Agent::browser`]: a browser as `portcullis demo`'s newcomer has one: every request
//!   says it wants HTML ([`BROWSER`]) and every `Set-Cookie` must be one a browser keeps
//!   (at most 4096 bytes, [`CookieJar::browser_limits`]).

use http::Request;

use super::client::{empty, full, Http, Resp};
use super::cookies::CookieJar;

/// Headers of a top-level browser navigation.
pub const NAVIGATE: &[(&str, &str)] = &[
    ("accept", "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8"),
    ("sec-fetch-mode", "navigate"),
];

/// Headers of an API call (fetch/XHR).
pub const API_CALL: &[(&str, &str)] = &[("accept", "application/json")];

/// What [`Agent::browser`] sends on every request: it wants HTML, and says who it is.
pub const BROWSER: &[(&str, &str)] = &[
    ("accept", "text/html,application/xhtml+xml,*/*;q=0.8"),
    ("user-agent", "portcullis-e2e-browser"),
];

/// `location` resolved against the URL it came from, as a browser resolves it.
pub fn resolve(base: &str, location: &str) -> String {
    url::Url::parse(base)
        .unwrap()
        .join(location)
        .unwrap_or_else(|e| panic!("bad Location {location:?} from {base}: {e}"))
        .to_string()
}

/// The `Location` of `r`, as sent (panics without one).
pub fn location_of(r: &Resp) -> &str {
    r.header("location")
        .unwrap_or_else(|| panic!("{} without Location: {}", r.status, r.text()))
}

/// Where the redirect `r`, the answer to `base`, sends a browser: its `Location` resolved
/// against `base` (panics without one).
pub fn redirect_target(r: &Resp, base: &str) -> String {
    let loc = r
        .header("location")
        .unwrap_or_else(|| panic!("no Location on {} from {base}: {}", r.status, r.text()));
    resolve(base, loc)
}

/// A scripted browser: a cookie jar in front of [`Http`]; redirects are the caller's to
/// follow ([`Agent::follow`]).
#[derive(Clone)]
pub struct Agent {
    pub http: Http,
    pub jar: CookieJar,
    /// Sent with every request, unless the request has its own header of that name.
    headers: Vec<(String, String)>,
}

impl Default for Agent {
    fn default() -> Self {
        Agent::new()
    }
}

impl Agent {
    /// No header of its own, `Path` honoured, any `Set-Cookie` taken as it comes.
    pub fn new() -> Agent {
        Agent {
            http: Http::new(),
            jar: CookieJar::new(),
            headers: Vec::new(),
        }
    }

    /// A browser: [`BROWSER`] headers on every request, and cookies held to a browser's
    /// limits (4096 bytes).
    pub fn browser() -> Agent {
        let mut a = Agent::new().with_headers(BROWSER);
        a.jar = a.jar.browser_limits();
        a
    }

    /// This agent, sending `headers` with every request.
    pub fn with_headers(mut self, headers: &[(&str, &str)]) -> Agent {
        self.headers
            .extend(headers.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self
    }

    /// This agent, keeping every cookie as if it said `Path=/` (the provider's scripted
    /// login of `tests/idp/README.md`).
    pub fn paths_ignored(mut self) -> Agent {
        self.jar = self.jar.paths_ignored();
        self
    }

    /// One request with the jar's cookies (plus the agent's headers and `headers`), storing
    /// what comes back. `form_body`: an `application/x-www-form-urlencoded` body.
    pub async fn request(
        &mut self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        form_body: Option<String>,
    ) -> Resp {
        let u = url::Url::parse(url).unwrap_or_else(|e| panic!("bad URL {url}: {e}"));
        let mut b = Request::builder().method(method).uri(url);
        if let Some(c) = self.jar.header_for(&u) {
            b = b.header("cookie", c);
        }
        let own = |k: &str| headers.iter().any(|(h, _)| h.eq_ignore_ascii_case(k));
        for (k, v) in self.headers.iter().filter(|(k, _)| !own(k)) {
            b = b.header(k.as_str(), v.as_str());
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let body = match form_body {
            Some(f) => {
                b = b.header("content-type", "application/x-www-form-urlencoded");
                full(f)
            }
            None => empty(),
        };
        let r = self
            .http
            .send(b.body(body).unwrap())
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        self.jar.store(&u, &r.headers);
        r
    }

    pub async fn get(&mut self, url: &str, headers: &[(&str, &str)]) -> Resp {
        self.request("GET", url, headers, None).await
    }

    /// A top-level navigation to `url`.
    pub async fn navigate(&mut self, url: &str) -> Resp {
        self.get(url, NAVIGATE).await
    }

    /// A form submitted by a top-level navigation.
    pub async fn post_form(&mut self, url: &str, body: String) -> Resp {
        self.request("POST", url, NAVIGATE, Some(body)).await
    }

    /// Navigates to `url` and follows redirects (GET) until a non-redirect answer, at most
    /// `max` hops. Returns the final URL, the answer, and every URL visited.
    pub async fn follow(&mut self, url: &str, max: usize) -> (String, Resp, Vec<String>) {
        let mut url = url.to_string();
        let mut visited = vec![url.clone()];
        for _ in 0..=max {
            let r = self.navigate(&url).await;
            if !r.status.is_redirection() {
                return (url, r, visited);
            }
            url = redirect_target(&r, &url);
            visited.push(url.clone());
        }
        panic!("more than {max} redirects: {visited:#?}");
    }
}
