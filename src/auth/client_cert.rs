//! The client certificate of a request, for mTLS-bound tokens (RFC 8705 §3): a token
//! whose `cnf.x5t#S256` is base64url(SHA-256(DER of the client certificate)) is accepted
//! only from a client that holds that certificate.
//!
//! Where the certificate is known:
//! - the TLS handshake of the connection (`server.tls.client_ca_file`): its thumbprint
//!   is made once per connection (`server::tls::client_thumbprint`);
//! - or, when `bearer.client_cert_header = "x-forwarded-client-cert"` is set and the peer
//!   is one of `server.trusted_proxies`, Envoy's `X-Forwarded-Client-Cert` header: the
//!   front proxy terminated TLS, the connection's certificate (if any) is the proxy's.
//!   Exactly one element is accepted, its `Hash=` (hex SHA-256 of the DER certificate).
//!
//! Nothing is parsed unless the token is certificate-bound: a plain bearer token costs a
//! copy of two references.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::HeaderMap;

/// The header `bearer.client_cert_header` names (Envoy's format).
pub const XFCC: &str = "x-forwarded-client-cert";

/// Where this request's client certificate is known from.
#[derive(Debug, Clone, Copy)]
pub enum ClientCert<'a> {
    /// Nowhere: a certificate-bound token is refused.
    None,
    /// The TLS handshake: the certificate's thumbprint (base64url SHA-256).
    Tls(&'a str),
    /// `X-Forwarded-Client-Cert` of a trusted proxy (read only when needed).
    Forwarded(&'a HeaderMap),
}

impl<'a> ClientCert<'a> {
    /// The source for a request: the forwarded header when `forwarded` (the header is
    /// configured and a trusted proxy sent the request), else the connection's
    /// certificate (`tls`).
    pub fn of(forwarded: bool, tls: Option<&'a str>, headers: &'a HeaderMap) -> ClientCert<'a> {
        match (forwarded, tls) {
            (true, _) => ClientCert::Forwarded(headers),
            (false, Some(t)) => ClientCert::Tls(t),
            (false, None) => ClientCert::None,
        }
    }

    /// Whether a certificate may be there at all (a route that requires sender-constrained
    /// tokens refuses plain ones early when not).
    pub fn possible(&self) -> bool {
        !matches!(self, ClientCert::None)
    }

    /// RFC 8705 §3.1: the certificate's thumbprint is `x5t` (a token's `cnf.x5t#S256`).
    pub fn matches(&self, x5t: &str) -> bool {
        match self {
            ClientCert::None => false,
            ClientCert::Tls(t) => *t == x5t,
            ClientCert::Forwarded(h) => {
                let mut all = h.get_all(XFCC).iter();
                let (Some(v), None) = (all.next(), all.next()) else {
                    // None, or a repeated header (several certificates): refused.
                    tracing::debug!("certificate binding: not exactly one {XFCC} header");
                    return false;
                };
                match xfcc_hash(v.as_bytes()) {
                    Ok(hash) => {
                        let mut b64 = [0u8; 43];
                        URL_SAFE_NO_PAD
                            .encode_slice(hash, &mut b64)
                            .is_ok_and(|n| &b64[..n] == x5t.as_bytes())
                    }
                    Err(e) => {
                        tracing::debug!(reason = %e, "certificate binding: {XFCC} refused");
                        false
                    }
                }
            }
        }
    }
}

/// Why an `X-Forwarded-Client-Cert` value was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum XfccError {
    #[error("more than one element (certificate)")]
    Several,
    #[error("malformed")]
    Malformed,
    #[error("no Hash")]
    NoHash,
    #[error("Hash is not a hex SHA-256")]
    BadHash,
}

/// The SHA-256 of the DER certificate that a single-element `X-Forwarded-Client-Cert`
/// value states (Envoy: `key=value` pairs separated by `;`, elements by `,`; a value with
/// `,`, `;` or `=` is double-quoted, `"` inside escaped as `\"`).
pub fn xfcc_hash(v: &[u8]) -> Result<[u8; 32], XfccError> {
    let mut hash: Option<&[u8]> = None;
    let mut i = 0;
    loop {
        // key
        let start = i;
        while i < v.len() && !matches!(v[i], b'=' | b';' | b',' | b'"') {
            i += 1;
        }
        if v.get(i) != Some(&b'=') || i == start {
            return Err(XfccError::Malformed);
        }
        let key = &v[start..i];
        i += 1;
        // value, quoted or not
        let value = if v.get(i) == Some(&b'"') {
            i += 1;
            let from = i;
            loop {
                match v.get(i) {
                    None => return Err(XfccError::Malformed),
                    Some(b'\\') => i += 2,
                    Some(b'"') => break,
                    Some(_) => i += 1,
                }
            }
            let value = v.get(from..i).ok_or(XfccError::Malformed)?;
            i += 1;
            value
        } else {
            let from = i;
            while i < v.len() && !matches!(v[i], b';' | b',') {
                if v[i] == b'"' {
                    return Err(XfccError::Malformed);
                }
                i += 1;
            }
            &v[from..i]
        };
        if key == b"Hash" {
            if hash.is_some() {
                return Err(XfccError::Malformed);
            }
            hash = Some(value);
        }
        match v.get(i) {
            None => break,
            Some(b';') => i += 1,
            Some(b',') => return Err(XfccError::Several),
            Some(_) => return Err(XfccError::Malformed),
        }
    }
    let hex = hash.ok_or(XfccError::NoHash)?;
    if hex.len() != 64 {
        return Err(XfccError::BadHash);
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let d = |c: u8| (c as char).to_digit(16).ok_or(XfccError::BadHash);
        *o = (d(pair[0])? * 16 + d(pair[1])?) as u8;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const HEX: &str = "a0b1c2d3e4f5061728394a5b6c7d8e9fa0b1c2d3e4f5061728394a5b6c7d8e9f";

    fn bytes() -> [u8; 32] {
        let mut b = [0u8; 32];
        for (i, o) in b.iter_mut().enumerate() {
            *o = u8::from_str_radix(&HEX[2 * i..2 * i + 2], 16).unwrap();
        }
        b
    }

    #[test]
    fn the_hash_of_one_element() {
        let ok = |s: &str| xfcc_hash(s.as_bytes());
        assert_eq!(ok(&format!("Hash={HEX}")), Ok(bytes()));
        assert_eq!(ok(&format!("Hash={}", HEX.to_uppercase())), Ok(bytes()));
        // Envoy's usual shape: By, Hash, then quoted Cert / Subject and URI.
        let full = format!(
            "By=spiffe://cluster.local/ns/default/sa/portcullis;Hash={HEX};\
             Subject=\"CN=client,O=Acme\\, Inc.\";URI=spiffe://client;\
             Cert=\"-----BEGIN%20CERTIFICATE-----%0AMIIB\";DNS=a.example;DNS=b.example"
        );
        assert_eq!(ok(&full), Ok(bytes()));
        // A quoted Hash, and quoted values with ; , = and escaped quotes before it.
        assert_eq!(ok(&format!("Hash=\"{HEX}\"")), Ok(bytes()));
        assert_eq!(
            ok(&format!("Subject=\"a=b;c,d \\\"e\\\"\";Hash={HEX}")),
            Ok(bytes())
        );
    }

    #[test]
    fn anything_else_is_refused() {
        let err = |s: &str| xfcc_hash(s.as_bytes()).unwrap_err();
        // Several elements: a proxy chain or a client's own value appended to.
        assert_eq!(err(&format!("Hash={HEX},Hash={HEX}")), XfccError::Several);
        assert_eq!(
            err(&format!("By=x;Hash={HEX},By=y;Hash={HEX}")),
            XfccError::Several
        );
        assert_eq!(err("By=spiffe://x;URI=spiffe://y"), XfccError::NoHash);
        assert_eq!(err(&format!("hash={HEX}")), XfccError::NoHash);
        assert_eq!(err(&format!("Hash={}", &HEX[..62])), XfccError::BadHash);
        assert_eq!(err(&format!("Hash={HEX}00")), XfccError::BadHash);
        assert_eq!(err(&format!("Hash={}zz", &HEX[..62])), XfccError::BadHash);
        assert_eq!(err(&format!("Hash=+{}", &HEX[..63])), XfccError::BadHash);
        assert_eq!(err("Hash="), XfccError::BadHash);
        for bad in [
            "",
            "Hash",
            "=abc",
            &format!("Hash={HEX};"),
            &format!("Hash={HEX};Hash={HEX}"),
            &format!("Subject=\"unterminated;Hash={HEX}"),
            &format!("Subject=\"x\"y;Hash={HEX}"),
            &format!("Subject=a\"b;Hash={HEX}"),
            "Subject=\"ends in a backslash\\",
            &format!("Hash={HEX};Subject=\"\\"),
        ] {
            assert_eq!(err(bad), XfccError::Malformed, "{bad:?}");
        }
        // Bytes outside ASCII never panic.
        assert!(xfcc_hash(&[0xff, b'=', 0xfe]).is_err());
        assert!(xfcc_hash("Hash=é".as_bytes()).is_err());
    }

    #[test]
    fn a_forwarded_certificate_matches_its_thumbprint_only() {
        let x5t = URL_SAFE_NO_PAD.encode(bytes());
        let mut h = HeaderMap::new();
        let cert = ClientCert::Forwarded(&h);
        assert!(!cert.matches(&x5t), "no header");
        h.insert(XFCC, HeaderValue::from_str(&format!("Hash={HEX}")).unwrap());
        assert!(ClientCert::Forwarded(&h).matches(&x5t));
        assert!(!ClientCert::Forwarded(&h).matches(&x5t[1..]));
        assert!(!ClientCert::Forwarded(&h).matches(&format!("{}A", &x5t[..42])));
        // A repeated header is several certificates.
        h.append(XFCC, HeaderValue::from_str(&format!("Hash={HEX}")).unwrap());
        assert!(!ClientCert::Forwarded(&h).matches(&x5t));
        // The source: the header only when forwarded from a trusted proxy.
        let h = HeaderMap::new();
        assert!(matches!(
            ClientCert::of(true, Some("t"), &h),
            ClientCert::Forwarded(_)
        ));
        assert!(matches!(
            ClientCert::of(false, Some("t"), &h),
            ClientCert::Tls("t")
        ));
        assert!(!ClientCert::of(false, None, &h).possible());
        assert!(ClientCert::Tls(&x5t).matches(&x5t));
        assert!(!ClientCert::None.matches(&x5t));
    }
}
