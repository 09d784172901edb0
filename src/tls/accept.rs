//! Pingora's side of a TLS listener: its settings (versions, ALPN) and the certificate
//! callback that picks a certificate from the live snapshot for each handshake.

use std::net::SocketAddr;

use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{TlsAccept, ALPN};
use pingora::protocols::tls::TlsRef;
use pingora::tls::ext;
use pingora::tls::ssl::NameType;

use super::{Cert, TlsPlan};
use crate::snapshot::Live;

/// Picks the certificate of one listener (server block `server`, address `addr`) from the
/// current snapshot: a reload's new certificates serve the next handshake.
struct Sni {
    live: Live,
    server: usize,
    addr: SocketAddr,
}

#[async_trait]
impl TlsAccept for Sni {
    async fn certificate_callback(&self, ssl: &mut TlsRef) {
        let snap = self.live.load();
        let Some(store) = snap
            .plan
            .servers
            .get(self.server)
            .and_then(|s| s.tls.iter().find(|t| t.addr == self.addr))
            .map(|t| &t.certs)
        else {
            return; // no certificate: the handshake fails, the client sees an alert
        };
        let name = ssl
            .servername(NameType::HOST_NAME)
            .map(str::to_ascii_lowercase);
        let Some(cert) = store.pick(name.as_deref()) else {
            return;
        };
        if let Err(e) = use_cert(ssl, cert) {
            log::error!("TLS certificate for {:?} on {}: {e}", name, self.addr);
        }
    }
}

fn use_cert(ssl: &mut TlsRef, c: &Cert) -> Result<(), pingora::tls::error::ErrorStack> {
    ext::ssl_use_certificate(ssl, &c.leaf)?;
    ext::ssl_use_private_key(ssl, &c.key)?;
    for link in &c.chain {
        ext::ssl_add_chain_cert(ssl, link)?;
    }
    Ok(())
}

/// The settings of listener `t` of server block `server`: Mozilla's intermediate profile
/// (Pingora's base) narrowed to the configured versions, `h2` offered unless turned off.
pub fn settings(t: &TlsPlan, live: Live, server: usize) -> Result<TlsSettings, String> {
    let cb = Box::new(Sni {
        live,
        server,
        addr: t.addr,
    });
    let mut s = TlsSettings::with_callbacks(cb).map_err(|e| format!("TLS on {}: {e}", t.addr))?;
    s.set_min_proto_version(Some(t.listener.min.ssl()))
        .and_then(|()| s.set_max_proto_version(Some(t.listener.max.ssl())))
        .map_err(|e| format!("TLS versions on {}: {e}", t.addr))?;
    if t.listener.http2 {
        s.enable_h2();
    } else {
        s.set_alpn(ALPN::H1);
    }
    Ok(s)
}
