//! TLS for broker connections (rustls): the CAs of `ssl.ca.location` or the system's, an
//! optional client certificate, and librdkafka's two switches for turning checks off.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::Error;
use crate::config::TlsConfig;

fn invalid(key: &str, reason: impl std::fmt::Display) -> Error {
    Error::Config {
        key: key.to_owned(),
        reason: reason.to_string(),
    }
}

/// The rustls configuration for `config`; errors name the property whose file is wrong.
pub(crate) fn client_config(config: &TlsConfig) -> Result<Arc<rustls::ClientConfig>, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    match &config.ca_location {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| invalid("ssl.ca.location", format!("{}: {e}", path.display())))?;
            for cert in certs {
                let cert = cert
                    .map_err(|e| invalid("ssl.ca.location", format!("{}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| invalid("ssl.ca.location", format!("{}: {e}", path.display())))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("security.protocol", e))?;
    let builder = if !config.verify_certificate {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
    } else if !config.verify_hostname {
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| invalid("ssl.ca.location", e))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyName(inner)))
    } else {
        if roots.is_empty() {
            return Err(invalid(
                "ssl.ca.location",
                "is not set and the system has no trusted certificates",
            ));
        }
        builder.with_root_certificates(roots)
    };
    let tls = match &config.client_cert {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    invalid(
                        "ssl.certificate.location",
                        format!("{}: {e}", cert.display()),
                    )
                })?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| invalid("ssl.key.location", format!("{}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| invalid("ssl.certificate.location", e))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(tls))
}

/// Runs the TLS handshake with `broker` (`host:port`) over `tcp`.
pub(crate) async fn connect(
    broker: &str,
    config: Arc<rustls::ClientConfig>,
    tcp: TcpStream,
) -> Result<TlsStream<TcpStream>, Error> {
    let host = broker
        .rsplit_once(':')
        .map_or(broker, |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let name = ServerName::try_from(host.to_owned()).map_err(|e| Error::Auth {
        broker: broker.to_owned(),
        message: format!("`{host}` is not a TLS server name: {e}"),
    })?;
    TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| Error::Auth {
            broker: broker.to_owned(),
            message: format!("TLS handshake failed: {e}"),
        })
}

/// `enable.ssl.certificate.verification=false`: every certificate is accepted (signatures
/// are still checked, so the session key belongs to whoever sent the certificate).
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `ssl.endpoint.identification.algorithm=none`: the chain must lead to a trusted CA, but
/// the certificate need not name the host.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
