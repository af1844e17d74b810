//! HTML escaping and the provider's page frame (with its development-only banner).

/// Escapes text for HTML element content and quoted attribute values.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
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

/// The banner on every provider page.
pub(crate) const BANNER: &str = "Development provider \u{2014} for local testing only";

const IDP_STYLE: &str = r#"
*{box-sizing:border-box}
body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;background:#f3f4f6;color:#111827}
.banner{background:#fef3c7;color:#92400e;border-bottom:1px solid #fcd34d;padding:.6rem 1rem;text-align:center;font-weight:600}
main{max-width:26rem;margin:3rem auto;padding:0 1rem}
.card{background:#fff;border:1px solid #e5e7eb;border-radius:12px;padding:1.75rem;box-shadow:0 1px 3px rgba(0,0,0,.06)}
h1{font-size:1.35rem;margin:0 0 .25rem}
.sub{color:#6b7280;margin:0 0 1.25rem}
label{display:block;font-weight:600;margin:.75rem 0 .25rem}
input[type=text],input[type=password]{width:100%;padding:.55rem .7rem;border:1px solid #d1d5db;border-radius:8px;font:inherit}
input:focus{outline:2px solid #6366f1;outline-offset:1px}
.actions{display:flex;gap:.5rem;margin-top:1.25rem}
button{flex:1;padding:.6rem;border-radius:8px;border:1px solid #4f46e5;background:#4f46e5;color:#fff;font:inherit;font-weight:600;cursor:pointer}
button.secondary{background:#fff;color:#374151;border-color:#d1d5db}
.error{background:#fee2e2;color:#991b1b;border:1px solid #fecaca;border-radius:8px;padding:.6rem .8rem;margin-bottom:1rem}
table{width:100%;border-collapse:collapse;margin-top:.5rem;font-size:.9rem}
th,td{text-align:left;padding:.35rem .4rem;border-bottom:1px solid #f3f4f6}
th{color:#6b7280;font-weight:600}
code{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;background:#f3f4f6;padding:.05rem .3rem;border-radius:4px}
.hint{margin-top:1.5rem;color:#6b7280;font-size:.9rem}
footer{text-align:center;color:#9ca3af;font-size:.8rem;margin-top:1.5rem}
"#;

/// A complete provider page; `body` must already be safe HTML.
pub(crate) fn idp_page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"robots\" content=\"noindex\">\
         <title>{title} \u{b7} portcullis dev provider</title><style>{IDP_STYLE}</style></head>\
         <body><div class=\"banner\" role=\"note\">{BANNER}</div><main>{body}\
         <footer>portcullis built-in development OpenID provider</footer></main></body></html>\n",
        title = escape(title),
    )
}

/// A page with one message (errors, "signed out").
pub(crate) fn message_page(title: &str, message: &str) -> String {
    idp_page(
        title,
        &format!(
            "<div class=\"card\"><h1>{}</h1><p class=\"sub\">{}</p></div>",
            escape(title),
            escape(message)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            escape(r#"<script>alert("x")</script>&'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;"
        );
    }

    #[test]
    fn pages_carry_the_banner() {
        let p = message_page("Oops <b>", "bad & worse");
        assert!(p.contains(BANNER));
        assert!(p.contains("Oops &lt;b&gt;"));
        assert!(p.contains("bad &amp; worse"));
    }
}
