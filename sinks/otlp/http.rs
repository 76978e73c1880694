//! The `otlp` sink's HTTP client: plain HTTP, or HTTPS with rustls (aws-lc-rs, the one crypto
//! provider in the binary) trusting the system's CAs or the collector's own `ca_file`, with a
//! client certificate when the collector asks for one. It connects directly (no HTTP proxy).

use std::sync::Arc;
use std::time::Duration;

use axum::http::{Request, StatusCode, header};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::component::Context;
use crate::config::TlsFiles;

pub struct HttpClient {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

/// What a collector answered.
pub struct Answer {
    pub status: StatusCode,
    pub text: String,
}

impl HttpClient {
    pub fn new(tls: &TlsFiles, timeout: Duration, cx: &Context) -> anyhow::Result<HttpClient> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions()?;
        let mut roots = rustls::RootCertStore::empty();
        match tls.ca() {
            Some(f) => {
                let path = cx.resolve(f);
                let certs = CertificateDer::pem_file_iter(&path)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| anyhow::anyhow!("tls.ca_file {}: {e}", path.display()))?;
                anyhow::ensure!(!certs.is_empty(), "tls.ca_file {}: no PEM certificate in it", path.display());
                for c in certs {
                    roots.add(c).map_err(|e| anyhow::anyhow!("tls.ca_file {}: {e}", path.display()))?;
                }
            }
            None => {
                for c in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(c);
                }
            }
        }
        let builder = builder.with_root_certificates(roots);
        let config = match tls.client() {
            Some((c, k)) => {
                let (c, k) = (cx.resolve(c), cx.resolve(k));
                let certs = CertificateDer::pem_file_iter(&c)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| anyhow::anyhow!("tls.cert_file {}: {e}", c.display()))?;
                let key = PrivateKeyDer::from_pem_file(&k)
                    .map_err(|e| anyhow::anyhow!("tls.key_file {}: {e}", k.display()))?;
                builder.with_client_auth_cert(certs, key)?
            }
            None => builder.with_no_client_auth(),
        };
        let https =
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config).https_or_http().enable_http1().build();
        Ok(HttpClient { client: Client::builder(TokioExecutor::new()).build(https), timeout })
    }

    /// POSTs `body`; the answer, or why there was none.
    pub async fn post(&self, url: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Result<Answer, String> {
        let mut req = Request::post(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .header(header::CONTENT_LENGTH, body.len())
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| chain(&e))?;
            let status = resp.status();
            // Read up to 64 KiB of it: a collector's answer is small, an error's text is shown.
            let text = match http_body_util::Limited::new(resp.into_body(), 64 << 10).collect().await {
                Ok(body) => {
                    let body = body.to_bytes();
                    String::from_utf8_lossy(&body[..body.len().min(2048)]).into_owned()
                }
                Err(_) => String::new(),
            };
            Ok(Answer { status, text })
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer in {} s", self.timeout.as_secs())),
        }
    }
}

/// An error with its causes (`client error (Connect): invalid peer certificate: UnknownIssuer`).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cause = c.source();
    }
    out
}
