//! The one place where refusals and failures become status codes and safe bodies.
//!
//! Bodies are short and generic, with the request id; they never carry upstream addresses,
//! token contents or error chains (those go to the log).

use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Response, StatusCode};

use crate::body::RespBody;

/// Why the proxy answers a request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Malformed or ambiguous request (path, headers): client fault.
    BadRequest(&'static str),
    NotFound,
    /// The identity is known but not allowed here.
    Forbidden,
    UriTooLong,
    HeadersTooLarge,
    /// The client was too slow sending its body.
    RequestTimeout,
    /// The upstream refused, reset or could not be reached.
    BadGateway,
    /// The upstream did not answer in time.
    GatewayTimeout,
    /// A dependency the request needs (provider, JWKS, introspection) is unavailable.
    Unavailable(&'static str),
    /// A bug or an impossible state: fail closed.
    Internal,
}

impl Reject {
    pub fn status(self) -> StatusCode {
        match self {
            Reject::BadRequest(_) => StatusCode::BAD_REQUEST,
            Reject::NotFound => StatusCode::NOT_FOUND,
            Reject::Forbidden => StatusCode::FORBIDDEN,
            Reject::UriTooLong => StatusCode::URI_TOO_LONG,
            Reject::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Reject::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Reject::BadGateway => StatusCode::BAD_GATEWAY,
            Reject::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            Reject::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Reject::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// (`error` code, human description): safe to show to anyone.
    fn text(self) -> (&'static str, &'static str) {
        match self {
            Reject::BadRequest(why) => ("invalid_request", why),
            Reject::NotFound => ("not_found", "no route for this path"),
            Reject::Forbidden => (
                "access_denied",
                "you are not allowed to access this resource",
            ),
            Reject::UriTooLong => ("uri_too_long", "the request target is too long"),
            Reject::HeadersTooLarge => ("headers_too_large", "the request headers are too large"),
            Reject::RequestTimeout => (
                "request_timeout",
                "the request body was not received in time",
            ),
            Reject::BadGateway => ("bad_gateway", "the upstream service is unavailable"),
            Reject::GatewayTimeout => (
                "gateway_timeout",
                "the upstream service did not answer in time",
            ),
            Reject::Unavailable(why) => ("temporarily_unavailable", why),
            Reject::Internal => ("server_error", "internal error"),
        }
    }
}

/// Does the client prefer an HTML page (a browser navigation)?
pub fn wants_html(headers: &http::HeaderMap) -> bool {
    let accept = headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    accept.contains("text/html")
}

pub fn respond(reject: Reject, request_id: &str, html: bool) -> Response<RespBody> {
    let (code, description) = reject.text();
    let status = reject.status();
    if !html {
        return json_error(status, code, description, request_id);
    }
    let mut resp = Response::new(RespBody::full(html_page(status, description, request_id)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// A JSON answer of the proxy's own, never cached.
pub fn json_response(status: StatusCode, body: String) -> Response<RespBody> {
    let mut resp = Response::new(RespBody::full(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// The JSON error body of DESIGN §2: `{"error", "error_description", "request_id"}`.
pub fn json_error(
    status: StatusCode,
    error: &str,
    description: &str,
    request_id: &str,
) -> Response<RespBody> {
    let body = serde_json::json!({
        "error": error,
        "error_description": description,
        "request_id": request_id,
    });
    json_response(status, body.to_string())
}

/// HTML-escapes text for element content and attribute values.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A small, styled error page.
pub fn html_page(status: StatusCode, message: &str, request_id: &str) -> String {
    let title = format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error")
    );
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{t}</title>\
<style>body{{font-family:system-ui,sans-serif;background:#f6f7f9;color:#1d2330;display:flex;\
min-height:100vh;align-items:center;justify-content:center;margin:0}}main{{background:#fff;\
border-radius:10px;box-shadow:0 2px 12px rgba(0,0,0,.08);padding:2rem 2.5rem;max-width:32rem}}\
h1{{font-size:1.4rem;margin:0 0 .75rem}}p{{margin:.5rem 0}}.id{{color:#6b7385;font-size:.85rem}}\
</style></head><body><main><h1>{t}</h1><p>{m}</p><p class=\"id\">Request id: <code>{r}</code></p>\
</main></body></html>",
        t = escape_html(&title),
        m = escape_html(message),
        r = escape_html(request_id),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(
            escape_html("<a href='x'>&\""),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;"
        );
    }

    #[test]
    fn json_body_has_request_id_and_no_internals() {
        let r = respond(Reject::BadGateway, "abc", false);
        assert_eq!(r.status(), 502);
    }
}
