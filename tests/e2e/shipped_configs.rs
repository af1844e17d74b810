//! Every config the project ships passes `portcullis check`: the snippet of each provider
//! guide (`docs/providers/*.md`), the Kubernetes overlays' `portcullis.toml` and the
//! example configs (`config/*.toml`). Secrets come from `${ENV}` placeholders set here;
//! files the configs name under `/etc/portcullis/`, `/var/run/secrets/` or `/run/secrets/` are stand-ins in
//! a temp dir (a certificate and key where a PEM is expected).

use std::path::{Path, PathBuf};

use crate::support::proxy::check;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The ```toml blocks of a Markdown file.
fn toml_blocks(md: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in md.lines() {
        match (&mut cur, line.trim_start()) {
            (None, "```toml") => cur = Some(String::new()),
            (Some(_), "```") => out.push(cur.take().unwrap()),
            (Some(c), _) => {
                c.push_str(line);
                c.push('\n');
            }
            _ => {}
        }
    }
    out
}

/// `text` with every quoted absolute path under the deployment prefixes moved into `dir`
/// (created there: a self-signed certificate for `.crt`/`.pem`, its key for `.key`, a
/// placeholder line otherwise).
fn with_stand_ins(text: &str, dir: &Path) -> String {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let mut out = text.to_string();
    for prefix in [
        "\"/etc/portcullis/",
        "\"/var/run/secrets/",
        "\"/run/secrets/",
    ] {
        while let Some(start) = out.find(prefix) {
            let end = start + 1 + out[start + 1..].find('"').unwrap();
            let original = out[start + 1..end].to_string();
            let local: PathBuf = dir.join(original.trim_start_matches('/'));
            std::fs::create_dir_all(local.parent().unwrap()).unwrap();
            let content = if original.ends_with(".crt") || original.ends_with(".pem") {
                ck.cert.pem()
            } else if original.ends_with(".key") {
                ck.signing_key.serialize_pem()
            } else if original.contains("cookie-secrets") {
                "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n".to_string()
            } else {
                "placeholder\n".to_string()
            };
            std::fs::write(&local, content).unwrap();
            out.replace_range(start + 1..end, local.to_str().unwrap());
        }
    }
    out
}

fn check_text(what: &str, text: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.toml");
    std::fs::write(&path, with_stand_ins(text, dir.path())).unwrap();
    let (code, out, err) = check(&path);
    if code == 0 {
        Ok(())
    } else {
        Err(format!("{what}: exit {code}\n{out}{err}"))
    }
}

#[test]
fn every_shipped_config_and_provider_snippet_passes_check() {
    // Placeholders of the snippets; the process is this test binary's child only.
    std::env::set_var("PORTCULLIS_CLIENT_SECRET", "placeholder-client-secret");
    std::env::set_var(
        "PORTCULLIS_COOKIE_SECRET",
        "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
    );
    std::env::set_var("PORTCULLIS_RS_SECRET", "placeholder-rs-secret");
    std::env::set_var("PORTCULLIS_INTROSPECTION_SECRET", "placeholder-rs-secret");
    let mut checked = Vec::new();
    let mut failures = Vec::new();
    let mut guides: Vec<PathBuf> = std::fs::read_dir(Path::new(ROOT).join("docs/providers"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md") && !p.ends_with("README.md"))
        .collect();
    guides.sort();
    assert_eq!(guides.len(), 7, "{guides:?}");
    for g in &guides {
        let blocks = toml_blocks(&std::fs::read_to_string(g).unwrap());
        assert_eq!(blocks.len(), 1, "{}: one config snippet", g.display());
        checked.push(g.display().to_string());
        if let Err(e) = check_text(&g.display().to_string(), &blocks[0]) {
            failures.push(e);
        }
    }
    let mut files: Vec<PathBuf> = [
        "deploy/kubernetes/overlays/gateway/portcullis.toml",
        "deploy/kubernetes/overlays/sidecar/portcullis.toml",
    ]
    .iter()
    .map(|p| Path::new(ROOT).join(p))
    .collect();
    for e in std::fs::read_dir(Path::new(ROOT).join("config")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|e| e == "toml") {
            files.push(p);
        }
    }
    for f in &files {
        checked.push(f.display().to_string());
        if let Err(e) = check_text(
            &f.display().to_string(),
            &std::fs::read_to_string(f).unwrap(),
        ) {
            failures.push(e);
        }
    }
    assert!(
        failures.is_empty(),
        "checked {checked:?}\n{}",
        failures.join("\n")
    );
}
