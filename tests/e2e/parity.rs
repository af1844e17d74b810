//! The same proxy config, run against both providers: the real `oidc-provider` harness
//! and the built-in development provider (`portcullis::dev_idp`). The proxy must behave
//! the same in front of either: bearer tokens (JWT from the client credentials grant,
//! scope enforcement), browser login (identity reaches the app, group policy), sign-out.

use portcullis::dev_idp::{
    DevIdp, DevIdpConfig, DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, INTROSPECTION_CLIENT_ID,
    INTROSPECTION_CLIENT_SECRET, MACHINE_CLIENT_ID, MACHINE_CLIENT_SECRET,
};

use crate::support::agent::{location_of, Agent};
use crate::support::client::{echo_header, Http};
use crate::support::echo::EchoUpstream;
use crate::support::idp::{Idp, Profile};
use crate::support::login::{new_secret, through_provider};
use crate::support::proxy::{server_section, wait_ready, TestProxy};

/// What differs between the two providers; everything else in the config is the same.
struct ProviderSide {
    issuer: String,
    client: (&'static str, &'static str),
    introspection: (&'static str, &'static str),
    audience: String,
    user_sub: &'static str,
}

fn config(p: &ProviderSide, echo: &EchoUpstream) -> String {
    format!(
        r#"{server}
public_url = "http://@LISTEN@"

[provider]
issuer = "{issuer}"
client_id = "{cid}"
client_secret = "{csec}"
scopes = ["openid", "email", "profile", "offline_access", "groups"]

[bearer]
audiences = ["{aud}"]
introspection = "opaque"
introspection_client_id = "{iid}"
introspection_client_secret = "{isec}"

[session]
secrets = ["{secret}"]

[[upstream]]
name = "app"
url = "{up}"

[[route]]
path = "/api"
upstream = "app"
auth = "bearer"
scopes = ["read:items"]
method_scopes = {{ POST = ["write:items"] }}

[[route]]
path = "/admin"
upstream = "app"
auth = "login"
allow = {{ groups = ["admins"] }}

[[route]]
path = "/"
upstream = "app"
auth = "login"
"#,
        server = server_section(""),
        issuer = p.issuer,
        cid = p.client.0,
        csec = p.client.1,
        aud = p.audience,
        iid = p.introspection.0,
        isec = p.introspection.1,
        secret = new_secret(),
        up = echo.url(""),
    )
}

/// The proxy's behaviour, as seen from outside, for one provider.
async fn exercise(
    p: &ProviderSide,
    read_token: String,
    read_write_token: String,
    login: impl AsyncLogin,
) {
    let echo = EchoUpstream::start().await;
    let proxy = TestProxy::start(&config(p, &echo)).await;
    wait_ready(&proxy).await;
    let http = Http::new();
    let bearer = |t: &str| format!("Bearer {t}");

    // Bearer: no token → 401; read token → 200 with the machine's identity; POST needs
    // write:items → 403 insufficient_scope; a read+write token may POST.
    let r = http.get(&proxy.url("/api/items")).await;
    assert_eq!(r.status, 401, "{}", r.text());
    let r = http
        .send(
            http::Request::get(proxy.url("/api/items"))
                .header("authorization", bearer(&read_token))
                .body(crate::support::client::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(echo_header(&r.json(), "x-auth-request-user").is_some());
    assert!(echo_header(&r.json(), "authorization").is_none());
    let r = http
        .send(
            http::Request::post(proxy.url("/api/items"))
                .header("authorization", bearer(&read_token))
                .body(crate::support::client::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r
        .header("www-authenticate")
        .unwrap_or("")
        .contains("insufficient_scope"));
    let r = http
        .send(
            http::Request::post(proxy.url("/api/items"))
                .header("authorization", bearer(&read_write_token))
                .body(crate::support::client::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());

    // Browser login as alice: the app sees her; /admin lets her in (group admins).
    let mut agent = Agent::new();
    let r = agent.navigate(&proxy.url("/hello")).await;
    assert_eq!(r.status, 302, "{}", r.text());
    let start = proxy.url(location_of(&r));
    let callback = login.login(&mut agent, &start).await;
    let (_, r, _) = agent.follow(&callback, 5).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        echo_header(&r.json(), "x-auth-request-user").as_deref(),
        Some(p.user_sub)
    );
    let r = agent.navigate(&proxy.url("/admin/panel")).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Sign-out: the session is gone.
    let r = agent.navigate(&proxy.url("/oauth2/sign_out")).await;
    assert_eq!(r.status, 302, "{}", r.text());
    let r = agent.navigate(&proxy.url("/hello")).await;
    assert_eq!(
        r.status,
        302,
        "still signed in after sign-out: {}",
        r.text()
    );
    assert!(location_of(&r).starts_with("/oauth2/start"));
}

/// How to get through each provider's login form, from `/oauth2/start` to the callback.
trait AsyncLogin {
    async fn login(&self, agent: &mut Agent, start: &str) -> String;
}

struct NodeLogin;

impl AsyncLogin for NodeLogin {
    async fn login(&self, agent: &mut Agent, start: &str) -> String {
        through_provider(agent, start, "alice").await
    }
}

struct DevLogin;

impl AsyncLogin for DevLogin {
    async fn login(&self, agent: &mut Agent, start: &str) -> String {
        let r = agent.navigate(start).await;
        assert_eq!(r.status, 302, "{}", r.text());
        let authorize = location_of(&r).to_string();
        let r = agent.navigate(&authorize).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let page = r.text();
        let tx = page
            .split("name=\"tx\"")
            .nth(1)
            .and_then(|rest| rest.split("value=\"").nth(1))
            .and_then(|v| v.split('"').next())
            .unwrap_or_else(|| panic!("no tx field on the dev provider's form: {page}"))
            .to_string();
        let base = url::Url::parse(&authorize).unwrap();
        let action = base.join("/authorize/login").unwrap().to_string();
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("tx", &tx)
            .append_pair("username", "alice")
            .append_pair("password", "alice")
            .finish();
        let r = agent.post_form(&action, body).await;
        assert!(r.status.is_redirection(), "{}", r.text());
        base.join(location_of(&r)).unwrap().to_string()
    }
}

#[tokio::test]
async fn same_config_behaves_the_same_against_oidc_provider() {
    let idp = Idp::start(Profile::Standard).await;
    let api = "https://api.example.test";
    let read = idp
        .client_credentials("machine", "machine-secret", Some("read:items"), Some(api))
        .await;
    let read_write = idp.machine_jwt().await;
    let side = ProviderSide {
        issuer: idp.issuer.clone(),
        client: ("portcullis", "portcullis-secret"),
        introspection: ("rs", "rs-secret"),
        audience: api.to_string(),
        user_sub: "user-alice",
    };
    exercise(&side, read, read_write, NodeLogin).await;
}

#[tokio::test]
async fn same_config_behaves_the_same_against_the_dev_provider() {
    let idp = DevIdp::start(DevIdpConfig::default()).await.unwrap();
    let token = |scope: &'static str| {
        let url = format!("{}/token", idp.issuer());
        async move {
            let http = Http::new();
            let body = format!(
                "grant_type=client_credentials&scope={}",
                scope.replace(' ', "+")
            );
            let auth = base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                format!("{MACHINE_CLIENT_ID}:{MACHINE_CLIENT_SECRET}"),
            );
            let r = http
                .send(
                    http::Request::post(url)
                        .header("authorization", format!("Basic {auth}"))
                        .header("content-type", "application/x-www-form-urlencoded")
                        .body(crate::support::client::full(body))
                        .unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
            r.json()["access_token"].as_str().unwrap().to_string()
        }
    };
    let read = token("read:items").await;
    let read_write = token("read:items write:items").await;
    let side = ProviderSide {
        issuer: idp.issuer(),
        client: (DEMO_CLIENT_ID, DEMO_CLIENT_SECRET),
        introspection: (INTROSPECTION_CLIENT_ID, INTROSPECTION_CLIENT_SECRET),
        audience: idp.audience(),
        user_sub: "user-alice",
    };
    exercise(&side, read, read_write, DevLogin).await;
}
