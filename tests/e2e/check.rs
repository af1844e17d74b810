//! `portcullis check --config FILE`: exit 0 on a good file; exit 1 and the exact error
//! lines (each naming its key) on broken ones.
//!
//! Each broken file under `tests/data/check/` states what it expects in its header:
//! `# expect: LINE` (an exact error line; together they are the whole list),
//! `# expect-prefix: TEXT` or `# expect-contains: TEXT` (for parser messages).
//! `{dir}` in an expectation is the file's directory.

use std::path::{Path, PathBuf};

use crate::support::proxy::check;

fn data(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(p)
}

/// Checks one file against its `# expect*` header; returns the problems found.
fn check_file(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let dir = path.parent().unwrap().display().to_string();
    let mut exact = Vec::new();
    let mut prefixes = Vec::new();
    let mut contains = Vec::new();
    for line in text.lines() {
        let l = line.replace("{dir}", &dir);
        if let Some(e) = l.strip_prefix("# expect: ") {
            exact.push(e.to_string());
        } else if let Some(e) = l.strip_prefix("# expect-prefix: ") {
            prefixes.push(e.to_string());
        } else if let Some(e) = l.strip_prefix("# expect-contains: ") {
            contains.push(e.to_string());
        }
    }
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        !(exact.is_empty() && prefixes.is_empty()),
        "{name}: no expectations in its header"
    );
    let (code, stdout, stderr) = check(path);
    let mut problems = Vec::new();
    if code != 1 {
        problems.push(format!(
            "{name}: exit code {code}, want 1 (stdout: {stdout})"
        ));
    }
    let mut lines = stderr.lines();
    let head = lines.next().unwrap_or("");
    if head != format!("{}: invalid configuration:", path.display()) {
        problems.push(format!("{name}: first line {head:?}"));
    }
    let errors: Vec<String> = lines
        .map(|l| l.strip_prefix("  ").unwrap_or(l).to_string())
        .collect();
    if !exact.is_empty() {
        let mut want = exact.clone();
        let mut got = errors.clone();
        want.sort();
        got.sort();
        if want != got {
            problems.push(format!(
                "{name}:\n  want errors: {exact:#?}\n  got errors:  {errors:#?}"
            ));
        }
    }
    for p in &prefixes {
        if !errors.iter().any(|e| e.starts_with(p.as_str())) {
            problems.push(format!("{name}: no error starts with {p:?}: {errors:#?}"));
        }
    }
    for c in &contains {
        if !errors.iter().any(|e| e.contains(c.as_str())) {
            problems.push(format!("{name}: no error contains {c:?}: {errors:#?}"));
        }
    }
    problems
}

fn check_dir(dir: &str) -> (usize, Vec<String>) {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    let n = files.len();
    (n, files.iter().flat_map(|f| check_file(f)).collect())
}

#[tokio::test]
async fn check_rejects_each_broken_config_with_the_exact_error_naming_the_key() {
    let (n, problems) = check_dir("check");
    assert!(n >= 15, "only {n} broken configs under tests/data/check");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[tokio::test]
async fn check_reports_no_false_follow_on_errors_and_locates_syntax_errors() {
    // An upstream with a bad or missing url is still declared: routes that name it must
    // not be told "no upstream named ..." (with an empty list of known ones); and a TOML
    // syntax error says on which line it is.
    let (_, problems) = check_dir("check-precise");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[tokio::test]
async fn check_accepts_a_good_config() {
    let path = data("good.toml");
    let (code, stdout, stderr) = check(&path);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout.trim(),
        format!("{}: OK (2 route(s), 1 upstream(s))", path.display())
    );
}

#[tokio::test]
async fn check_accepts_the_shipped_quickstart_config() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/quickstart.toml");
    let (code, stdout, stderr) = check(&path);
    assert_eq!(code, 0, "{stdout}{stderr}");
}

#[tokio::test]
async fn check_on_a_missing_file_exits_1_naming_the_file() {
    let path = data("does-not-exist.toml");
    let (code, _, stderr) = check(&path);
    assert_eq!(code, 1);
    assert!(
        stderr.contains(&format!("cannot read config file {}", path.display())),
        "{stderr}"
    );
}
