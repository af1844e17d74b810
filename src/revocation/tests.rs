//! The revocation set, in memory (with and without its file) and in a real `redis-server`:
//! the same behaviour from both.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;
use crate::config::Secret;
use crate::testutil::RedisServer;

const T0: u64 = 1_700_000_000;

fn at(s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(s)
}

fn facts(id: u8, sub: &str, sid: Option<&str>, issued_at: u64) -> Facts {
    Facts {
        keys: Keys {
            session: [id; 16],
            subject: subject_key("https://idp", sub),
            provider_sid: sid.map(|s| provider_session_key("https://idp", s)),
        },
        issued_at,
    }
}

async fn verdict(r: &Revocations, f: &Facts, now: u64) -> Verdict {
    r.check(f, at(now)).await.unwrap()
}

async fn expect(r: &Revocations, f: &Facts, now: u64, want: Verdict) {
    assert_eq!(verdict(r, f, now).await, want, "{f:?} at {now}");
}

/// The behaviour every backend must have, at times around `now` (`clock`: the backend
/// expires entries by the `now` it is given, not by the real clock).
async fn behaves(r: &Revocations, now: u64, clock: bool) {
    let alice = facts(1, "alice", Some("sid-a"), now - 100);
    let alice2 = facts(2, "alice", Some("sid-b"), now - 50);
    let bob = facts(3, "bob", None, now - 10);
    for f in [&alice, &alice2, &bob] {
        expect(r, f, now, Verdict::Live).await;
    }
    // Sign-out: that session only, until its expiry.
    let rec = r
        .revoke(Target::Session(&alice.keys.session), at(now + 60), at(now))
        .await
        .unwrap();
    assert_eq!(rec, Recorded::Stored);
    expect(r, &alice, now, Verdict::Revoked(Reason::SignedOut)).await;
    expect(r, &alice2, now, Verdict::Live).await;
    // Back-channel logout by sid: the sessions of that provider session.
    r.revoke(
        Target::ProviderSession {
            iss: "https://idp",
            sid: "sid-b",
        },
        at(now + 60),
        at(now),
    )
    .await
    .unwrap();
    expect(r, &alice2, now, Verdict::Revoked(Reason::ProviderLogout)).await;
    expect(r, &bob, now, Verdict::Live).await;
    // By subject: sessions issued until now; a later login is live; another issuer's
    // `bob` is someone else.
    r.revoke(
        Target::Subject {
            iss: "https://idp",
            sub: "bob",
        },
        at(now + 60),
        at(now),
    )
    .await
    .unwrap();
    expect(r, &bob, now, Verdict::Revoked(Reason::Subject)).await;
    let same_second = facts(4, "bob", None, now);
    assert_eq!(
        verdict(r, &same_second, now).await,
        Verdict::Revoked(Reason::Subject),
        "issued in the same second: refused (fail closed)"
    );
    let later = facts(5, "bob", None, now + 1);
    expect(r, &later, now + 1, Verdict::Live).await;
    let mut other_issuer = bob;
    other_issuer.keys.subject = subject_key("https://other", "bob");
    other_issuer.keys.session = [6; 16];
    expect(r, &other_issuer, now, Verdict::Live).await;
    // An earlier time never moves the not-before back.
    r.revoke(
        Target::Subject {
            iss: "https://idp",
            sub: "bob",
        },
        at(now + 30),
        at(now - 5),
    )
    .await
    .unwrap();
    expect(r, &bob, now, Verdict::Revoked(Reason::Subject)).await;
    // Replay set: once; a token of another set or issuer is another token.
    let once = |jti: &'static str, iss: &'static str, set| async move {
        r.first_use(set, iss, jti, now - 1, at(now + 300), at(now))
            .await
            .unwrap()
    };
    assert_eq!(
        once("j1", "https://idp", ReplaySet::LogoutToken).await,
        FirstUse::Fresh
    );
    assert_eq!(
        once("j1", "https://idp", ReplaySet::LogoutToken).await,
        FirstUse::Replayed
    );
    assert_eq!(
        once("j1", "https://idp", ReplaySet::DpopProof).await,
        FirstUse::Fresh
    );
    assert_eq!(
        once("j1", "https://other", ReplaySet::LogoutToken).await,
        FirstUse::Fresh
    );
    // Past their time, entries no longer refuse (and nothing they refused could open).
    if clock {
        expect(r, &alice, now + 61, Verdict::Live).await;
    }
}

#[tokio::test]
async fn memory_set_revokes_by_session_sid_and_subject() {
    let r = Revocations::memory(1000);
    behaves(&r, T0, true).await;
    r.sweep(at(T0 + 10_000));
    assert_eq!(
        r.render_metrics().lines().nth(2),
        Some("portcullis_revocation_entries 0")
    );
}

#[tokio::test]
async fn redis_set_revokes_by_session_sid_and_subject() {
    let redis = RedisServer::start();
    let r = Revocations::new(&settings_redis(&redis.url(), 1000)).unwrap();
    // Redis expires keys by the real clock: test around now.
    let now = unix(SystemTime::now());
    let alice = facts(9, "alice", None, now - 5);
    r.revoke(Target::Session(&alice.keys.session), at(now + 2), at(now))
        .await
        .unwrap();
    expect(&r, &alice, now, Verdict::Revoked(Reason::SignedOut)).await;
    // Another process, the same Redis: the same answer.
    let other = Revocations::new(&settings_redis(&redis.url(), 1000)).unwrap();
    expect(&other, &alice, now, Verdict::Revoked(Reason::SignedOut)).await;
    behaves(&r, now, false).await;
    // The entry expires in Redis at its `until`.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    expect(&other, &alice, now, Verdict::Live).await;
}

fn settings_redis(url: &Secret<String>, capacity: usize) -> RevocationSettings {
    RevocationSettings {
        kind: RevocationKind::Redis,
        redis_url: Some(url.clone()),
        file: None,
        capacity,
    }
}

/// A full set fails closed: the global not-before time ends every session issued until
/// then, and the entries it makes redundant are dropped.
async fn fails_closed_when_full(r: &Revocations, now: u64) {
    let s = |id: u8, issued: u64| facts(id, &format!("u{id}"), None, issued);
    for id in 1..=3 {
        let rec = r
            .revoke(Target::Session(&[id; 16]), at(now + 600), at(now))
            .await
            .unwrap();
        assert_eq!(rec, Recorded::Stored);
    }
    let live = s(10, now - 1);
    expect(r, &live, now, Verdict::Live).await;
    // A fourth entry: full (capacity 3), nothing expired: raised.
    let rec = r
        .revoke(Target::Session(&[4; 16]), at(now + 600), at(now))
        .await
        .unwrap();
    assert_eq!(rec, Recorded::Raised);
    for f in [s(1, now - 1), s(4, now - 1), live, s(11, now)] {
        assert_eq!(
            verdict(r, &f, now).await,
            Verdict::Revoked(Reason::Global),
            "{f:?}"
        );
    }
    // Logins after it are live, and there is room again.
    expect(r, &s(12, now + 1), now + 1, Verdict::Live).await;
    let rec = r
        .revoke(Target::Session(&[12; 16]), at(now + 600), at(now + 1))
        .await
        .unwrap();
    assert_eq!(rec, Recorded::Stored);
    expect(
        r,
        &s(12, now + 1),
        now + 1,
        Verdict::Revoked(Reason::SignedOut),
    )
    .await;
    // Tokens issued before the reset cannot be told from replays: refused.
    assert_eq!(
        r.first_use(
            ReplaySet::LogoutToken,
            "i",
            "old",
            now,
            at(now + 300),
            at(now + 1)
        )
        .await
        .unwrap(),
        FirstUse::IssuedBeforeReset
    );
    assert_eq!(
        r.first_use(
            ReplaySet::LogoutToken,
            "i",
            "new",
            now + 1,
            at(now + 300),
            at(now + 1)
        )
        .await
        .unwrap(),
        FirstUse::Fresh
    );
}

#[tokio::test]
async fn memory_set_fails_closed_when_full() {
    let r = Revocations::memory(3);
    fails_closed_when_full(&r, T0).await;
    // Expired entries make room without raising.
    let r = Revocations::memory(2);
    for id in 1..=2 {
        r.revoke(Target::Session(&[id; 16]), at(T0 + 10), at(T0))
            .await
            .unwrap();
    }
    let rec = r
        .revoke(Target::Session(&[3; 16]), at(T0 + 100), at(T0 + 20))
        .await
        .unwrap();
    assert_eq!(rec, Recorded::Stored);
    expect(&r, &facts(1, "x", None, T0 - 1), T0 + 20, Verdict::Live).await;
}

/// A replay set that must reset to record a token says so (DPoP refuses that proof).
async fn replay_set_reports_a_reset(r: &Revocations) {
    let now = T0;
    let mut seen = Vec::new();
    for jti in ["a", "b", "c"] {
        seen.push(
            r.first_use(ReplaySet::DpopProof, "k", jti, now, at(now + 300), at(now))
                .await
                .unwrap(),
        );
    }
    assert_eq!(
        seen,
        [FirstUse::Fresh, FirstUse::Fresh, FirstUse::FreshAfterReset]
    );
    // The reset refuses what was issued until then: a replay of "a" is still refused.
    assert_ne!(
        r.first_use(ReplaySet::DpopProof, "k", "a", now, at(now + 300), at(now))
            .await
            .unwrap(),
        FirstUse::Fresh
    );
}

#[tokio::test]
async fn memory_replay_set_reports_a_reset() {
    replay_set_reports_a_reset(&Revocations::memory(2)).await;
}

#[tokio::test]
async fn redis_set_fails_closed_when_full() {
    let redis = RedisServer::start();
    let r = Revocations::new(&settings_redis(&redis.url(), 3)).unwrap();
    fails_closed_when_full(&r, unix(SystemTime::now())).await;
}

#[tokio::test]
async fn the_file_keeps_revocations_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("revoked");
    let settings = RevocationSettings {
        kind: RevocationKind::Memory,
        redis_url: None,
        file: Some(file.clone()),
        capacity: 100,
    };
    let now = unix(SystemTime::now());
    let alice = facts(1, "alice", Some("sid-a"), now - 10);
    let bob = facts(2, "bob", None, now - 10);
    let carol = facts(3, "carol", Some("sid-c"), now - 10);
    {
        let r = Revocations::new(&settings).unwrap();
        r.revoke(Target::Session(&alice.keys.session), at(now + 600), at(now))
            .await
            .unwrap();
        r.revoke(
            Target::Subject {
                iss: "https://idp",
                sub: "bob",
            },
            at(now + 600),
            at(now),
        )
        .await
        .unwrap();
        r.revoke(
            Target::ProviderSession {
                iss: "https://idp",
                sid: "sid-c",
            },
            at(now + 600),
            at(now),
        )
        .await
        .unwrap();
        // Already past: never written.
        r.revoke(Target::Session(&[7; 16]), at(now - 1), at(now))
            .await
            .unwrap();
        r.first_use(
            ReplaySet::LogoutToken,
            "https://idp",
            "j1",
            now,
            at(now + 300),
            at(now),
        )
        .await
        .unwrap();
    }
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with("portcullis revocations v1\n"), "{text}");
    assert_eq!(text.lines().count(), 5, "{text}");
    assert!(
        !text.contains("alice") && !text.contains("sid-c"),
        "digests only: {text}"
    );
    // A restart: the same verdicts.
    let r = Revocations::new(&settings).unwrap();
    expect(&r, &alice, now, Verdict::Revoked(Reason::SignedOut)).await;
    expect(&r, &bob, now, Verdict::Revoked(Reason::Subject)).await;
    expect(&r, &carol, now, Verdict::Revoked(Reason::ProviderLogout)).await;
    assert_eq!(
        r.first_use(
            ReplaySet::LogoutToken,
            "https://idp",
            "j1",
            now,
            at(now + 300),
            at(now)
        )
        .await
        .unwrap(),
        FirstUse::Replayed
    );
    // Reading it back drops what has expired by then.
    drop(r);
    let later = MemorySet::open(Some(&file), 100, at(now + 400));
    assert_eq!(later.stats().0, 3, "the jti's window is over");
}

#[tokio::test]
async fn a_damaged_file_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("revoked");
    std::fs::write(
        &file,
        "portcullis revocations v1\ns0101010101010101 garbage\n",
    )
    .unwrap();
    let start = unix(SystemTime::now());
    let m = MemorySet::open(Some(&file), 100, at(start));
    assert_eq!(m.stats().1, start, "global not-before = the start");
    let f = facts(1, "alice", None, start - 1);
    assert_eq!(m.check(&f, start), Verdict::Revoked(Reason::Global));
    assert_eq!(
        m.check(&facts(1, "a", None, start + 1), start + 1),
        Verdict::Live
    );
    // Rewritten whole: the next start reads the not-before time back.
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text, format!("portcullis revocations v1\nG {start}\n"));
    let again = MemorySet::open(Some(&file), 100, at(start + 50));
    assert_eq!(again.stats().1, start);
    // Not ours at all: the same.
    std::fs::write(&file, "hello\n").unwrap();
    let m = MemorySet::open(Some(&file), 100, at(start + 60));
    assert_eq!(m.stats().1, start + 60);
}

#[tokio::test]
async fn a_reload_may_add_a_file_and_keeps_what_is_held() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("revoked");
    let now = unix(SystemTime::now());
    let r = Revocations::memory(10);
    r.revoke(Target::Session(&[1; 16]), at(now + 600), at(now))
        .await
        .unwrap();
    let settings = RevocationSettings {
        kind: RevocationKind::Memory,
        redis_url: None,
        file: Some(file.clone()),
        capacity: 10,
    };
    assert!(r.serves(&settings));
    r.reconfigure(&settings);
    let reopened = MemorySet::open(Some(&file), 10, at(now));
    assert_eq!(
        reopened.check(&facts(1, "a", None, now - 1), now),
        Verdict::Revoked(Reason::SignedOut)
    );
    // A Redis store serves only its own URL; memory never serves Redis settings.
    assert!(!r.serves(&settings_redis(
        &Secret::new("redis://127.0.0.1:1/".into()),
        10
    )));
}

#[test]
fn keys_round_trip_through_bytes() {
    let f = facts(1, "alice", Some("s"), 0);
    assert_eq!(Keys::from_bytes(&f.keys.to_bytes()), Some(f.keys));
    let g = facts(2, "bob", None, 0);
    assert_eq!(g.keys.to_bytes().len(), 33);
    assert_eq!(Keys::from_bytes(&g.keys.to_bytes()), Some(g.keys));
    let mut bad = f.keys.to_bytes();
    bad[32] = 0;
    assert_eq!(
        Keys::from_bytes(&bad),
        None,
        "flag says no sid, 16 bytes follow"
    );
    assert_eq!(Keys::from_bytes(&bad[..40]), None);
    assert_eq!(Keys::from_bytes(b""), None);
}

#[test]
fn digests_separate_kinds_issuers_and_values() {
    let all = [
        subject_key("i", "x"),
        subject_key("i", "y"),
        subject_key("j", "x"),
        provider_session_key("i", "x"),
        jti_key(ReplaySet::LogoutToken, "i", "x"),
        jti_key(ReplaySet::DpopProof, "i", "x"),
        // Length prefixes: no ambiguity between ("ab", "c") and ("a", "bc").
        subject_key("ab", "c"),
        subject_key("a", "bc"),
    ];
    for (i, a) in all.iter().enumerate() {
        for b in &all[i + 1..] {
            assert_ne!(a, b);
        }
    }
}

#[test]
fn redis_answers_are_judged_like_the_memory_set() {
    let f = facts(1, "alice", Some("s"), 100);
    let v = |vals: &[Option<&str>]| {
        let vals: Vec<Option<String>> = vals.iter().map(|v| v.map(String::from)).collect();
        redis::judge(&vals, &f)
    };
    assert_eq!(v(&[None, None, None, None]).unwrap(), Verdict::Live);
    assert_eq!(
        v(&[Some("100"), None, None, None]).unwrap(),
        Verdict::Revoked(Reason::Global)
    );
    assert_eq!(v(&[Some("99"), None, None, None]).unwrap(), Verdict::Live);
    assert_eq!(
        v(&[None, Some("0"), None, None]).unwrap(),
        Verdict::Revoked(Reason::SignedOut)
    );
    assert_eq!(
        v(&[None, None, Some("100"), None]).unwrap(),
        Verdict::Revoked(Reason::Subject)
    );
    assert_eq!(v(&[None, None, Some("99"), None]).unwrap(), Verdict::Live);
    assert_eq!(
        v(&[None, None, None, Some("0")]).unwrap(),
        Verdict::Revoked(Reason::ProviderLogout)
    );
    // Not what we write, or the wrong number of answers: an error, never "live".
    assert!(v(&[Some("x"), None, None, None]).is_err());
    assert!(v(&[None, None, None]).is_err());
    assert_eq!(redis::probe_keys(&f.keys).len(), 4);
}
