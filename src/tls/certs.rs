//! Reading and checking a listener's certificates and keys: what `-t` and every reload check.
//! A file that cannot be read or parsed, or a key that does not belong to its certificate, is
//! an error at the `cert`/`key` value; a certificate outside its validity period is only a
//! warning (nginx starts with one too; clients will refuse it).

use std::cmp::Ordering;

use openssl::asn1::Asn1Time;
use pingora::tls::nid::Nid;
use pingora::tls::pkey::PKey;
use pingora::tls::x509::X509;

use super::Cert;
use crate::config::{Loaded, Problem, Problems};

/// Where a pair sits in the file (dotted paths of its `cert` and `key` values).
pub struct PairAt<'a> {
    pub cert_path: &'a str,
    pub cert_at: String,
    pub key_path: &'a str,
    pub key_at: String,
}

/// Loads one pair; errors go to `probs`, validity warnings to `warnings`.
pub fn load(
    l: &Loaded,
    p: &PairAt,
    probs: &mut Problems,
    warnings: &mut Vec<Problem>,
) -> Option<Cert> {
    let cert = load_chain(l, p, probs);
    let key = load_key(l, p, probs);
    let (mut chain, key) = (cert?, key?);
    let leaf = chain.remove(0);
    match leaf.public_key() {
        Ok(public) if public.public_eq(&key) => {}
        _ => {
            probs.push(l.problem_at(
                &p.key_at,
                format!(
                    "key \"{}\" does not match certificate \"{}\"",
                    p.key_path, p.cert_path
                ),
            ));
            return None;
        }
    }
    if let Some(w) = validity(&leaf) {
        warnings.push(l.problem_at(&p.cert_at, format!("certificate \"{}\" {w}", p.cert_path)));
    }
    let names = names(&leaf);
    Some(Cert {
        leaf,
        chain,
        key,
        names,
    })
}

fn load_chain(l: &Loaded, p: &PairAt, probs: &mut Problems) -> Option<Vec<X509>> {
    let bytes = match std::fs::read(p.cert_path) {
        Ok(b) => b,
        Err(e) => {
            probs.push(l.problem_at(
                &p.cert_at,
                format!("cannot read certificate \"{}\": {e}", p.cert_path),
            ));
            return None;
        }
    };
    match X509::stack_from_pem(&bytes) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            probs.push(l.problem_at(
                &p.cert_at,
                format!("\"{}\" holds no PEM certificate", p.cert_path),
            ));
            None
        }
    }
}

fn load_key(
    l: &Loaded,
    p: &PairAt,
    probs: &mut Problems,
) -> Option<PKey<pingora::tls::pkey::Private>> {
    let bytes = match std::fs::read(p.key_path) {
        Ok(b) => b,
        Err(e) => {
            probs.push(l.problem_at(
                &p.key_at,
                format!("cannot read key \"{}\": {e}", p.key_path),
            ));
            return None;
        }
    };
    match PKey::private_key_from_pem(&bytes) {
        Ok(k) => Some(k),
        Err(_) => {
            probs.push(l.problem_at(
                &p.key_at,
                format!(
                    "\"{}\" holds no PEM private key (or it is encrypted)",
                    p.key_path
                ),
            ));
            None
        }
    }
}

/// "expired on DATE" / "is not valid before DATE", or nothing while it is valid.
fn validity(c: &X509) -> Option<String> {
    let now = Asn1Time::days_from_now(0).ok()?;
    if c.not_after().compare(&now).ok()? == Ordering::Less {
        return Some(format!("expired on {}", c.not_after()));
    }
    if c.not_before().compare(&now).ok()? == Ordering::Greater {
        return Some(format!("is not valid before {}", c.not_before()));
    }
    None
}

/// DNS names of the subject alternative names, else the common name, lower case.
fn names(c: &X509) -> Vec<String> {
    let mut v: Vec<String> = c
        .subject_alt_names()
        .map(|sans| {
            sans.iter()
                .filter_map(|n| n.dnsname().map(str::to_ascii_lowercase))
                .collect()
        })
        .unwrap_or_default();
    if v.is_empty() {
        v.extend(
            c.subject_name()
                .entries_by_nid(Nid::COMMONNAME)
                .filter_map(|e| std::str::from_utf8(e.data().as_slice()).ok())
                .map(str::to_ascii_lowercase),
        );
    }
    v
}
