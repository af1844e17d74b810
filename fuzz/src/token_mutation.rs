//! Mutations of signed tokens shared by the JWT-shaped fuzz targets (`jwt`,
//! `logout_token`), and the oracle of which tokens were signed by the target itself.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use crate::{b64url, hmac, jwks, rsa_public_bytes, Input, Signer};

/// Whether `token` is one of `signed` (its signing input byte for byte, its signature in
/// canonical base64url, and for deterministic algorithms the very signature): what a
/// validator may accept, since every other token is a forgery.
pub fn signed_among(signed: &[(Signer, String)], token: &[u8]) -> bool {
    let Ok(t) = std::str::from_utf8(token) else {
        return false;
    };
    let Some((input, sig)) = t.rsplit_once('.') else {
        return false;
    };
    signed.iter().any(|(s, known)| {
        let (k_input, k_sig) = known.rsplit_once('.').unwrap();
        input == k_input
            && URL_SAFE_NO_PAD.decode(sig).is_ok_and(|b| b64url(&b) == sig)
            && (!s.deterministic() || sig == k_sig)
    })
}

/// One mutation of a token's text: a byte flipped, inserted or removed, the text cut, a
/// part of one of `signed` (or of the same part index or another) put in place of one of
/// its own, its header replaced by one of `headers`, re-signed with HS256 under secrets an
/// attacker knows (the public key, the JWKS, nothing), or its signature dropped.
pub fn mutate_token(
    inp: &mut Input<'_>,
    signed: &[(Signer, String)],
    headers: &[serde_json::Value],
    t: &mut Vec<u8>,
) {
    let at = usize::from(inp.u16()) % (t.len() + 1);
    match inp.below(8) {
        0 if at < t.len() => t[at] ^= inp.u8().max(1),
        1 => t.insert(at, inp.u8()),
        2 if at < t.len() => {
            t.remove(at);
        }
        3 => t.truncate(at),
        // A part of another token (or of the same one) in place of one of this one's.
        4 => {
            let other = &signed[inp.below(signed.len())].1;
            let (k, from) = (inp.below(3), inp.below(3));
            let mut parts: Vec<Vec<u8>> = t.split(|b| *b == b'.').map(<[u8]>::to_vec).collect();
            if let (Some(p), Some(o)) = (parts.get_mut(k), other.split('.').nth(from)) {
                *p = o.as_bytes().to_vec();
            }
            *t = parts.join(&b'.');
        }
        // The header replaced.
        5 => {
            let h = headers[inp.below(headers.len())].to_string();
            let rest = t
                .iter()
                .position(|b| *b == b'.')
                .map_or(&t[..0], |i| &t[i..]);
            let mut out = b64url(h.as_bytes()).into_bytes();
            out.extend_from_slice(rest);
            *t = out;
        }
        // Re-signed with HS256 under secrets an attacker knows: the public key, the JWKS.
        6 => {
            let input = match t.iter().rposition(|b| *b == b'.') {
                Some(i) => t[..i].to_vec(),
                None => t.clone(),
            };
            let secret = match inp.below(3) {
                0 => rsa_public_bytes(),
                1 => jwks().into_bytes(),
                _ => Vec::new(),
            };
            let sig = hmac(&secret, &input);
            let mut out = input;
            out.push(b'.');
            out.extend_from_slice(b64url(&sig).as_bytes());
            *t = out;
        }
        // The signature dropped (the dot kept or not).
        _ => {
            if let Some(i) = t.iter().rposition(|b| *b == b'.') {
                t.truncate(i + usize::from(inp.bool()));
            }
        }
    }
}
