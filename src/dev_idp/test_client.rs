//! A scripted browser-like client for the tests: hyper-util's client, no redirects
//! followed, a cookie jar (name -> value; one host in these tests).

use std::collections::HashMap;
use std::sync::Mutex;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub(crate) struct TestResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl TestResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn location(&self) -> url::Url {
        let loc = self
            .header("location")
            .unwrap_or_else(|| panic!("no Location; status {}: {}", self.status, self.body));
        url::Url::parse(loc).expect("absolute Location")
    }
}

/// Query parameters of a URL as a map.
pub(crate) fn query(url: &url::Url) -> HashMap<String, String> {
    url.query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Form-urlencodes one value (for Basic credentials per RFC 6749 §2.3.1).
pub(crate) fn form_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

pub(crate) fn basic(id: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        STANDARD.encode(format!("{}:{}", form_encode(id), form_encode(secret)))
    )
}

pub(crate) struct TestClient {
    client: Client<HttpConnector, Full<Bytes>>,
    jar: Mutex<HashMap<String, String>>,
}

impl TestClient {
    pub fn new() -> Self {
        TestClient {
            client: Client::builder(TokioExecutor::new()).build_http(),
            jar: Mutex::new(HashMap::new()),
        }
    }

    pub fn cookie(&self, name: &str) -> Option<String> {
        self.jar.lock().unwrap().get(name).cloned()
    }

    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> TestResponse {
        let mut b = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let cookies: Vec<String> = self
            .jar
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if !cookies.is_empty() {
            b = b.header(header::COOKIE, cookies.join("; "));
        }
        let req = b.body(Full::new(body)).expect("request");
        let resp = self.client.request(req).await.expect("HTTP request failed");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        {
            let mut jar = self.jar.lock().unwrap();
            for sc in parts.headers.get_all(header::SET_COOKIE) {
                let sc = sc.to_str().unwrap();
                let (pair, attrs) = sc.split_once(';').unwrap_or((sc, ""));
                let (name, value) = pair.split_once('=').unwrap();
                if attrs.contains("Max-Age=0") || value.is_empty() {
                    jar.remove(name.trim());
                } else {
                    jar.insert(name.trim().to_string(), value.to_string());
                }
            }
        }
        TestResponse {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    pub async fn get(&self, url: &str) -> TestResponse {
        self.send(Method::GET, url, &[], Bytes::new()).await
    }

    pub async fn get_with(&self, url: &str, headers: &[(&str, &str)]) -> TestResponse {
        self.send(Method::GET, url, headers, Bytes::new()).await
    }

    pub async fn post_form(
        &self,
        url: &str,
        form: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> TestResponse {
        let body: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let mut h = vec![("content-type", "application/x-www-form-urlencoded")];
        h.extend_from_slice(headers);
        self.send(Method::POST, url, &h, Bytes::from(body)).await
    }
}
