//! A throw-away PKI: one CA, a client certificate (the "admin" user) and a
//! server certificate per apiserver listener, with the listener IP in its SANs.

use std::net::IpAddr;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::Error;

/// The CA plus the client identity every test client presents.
pub struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
    client_cert_pem: String,
    client_key_pem: String,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").finish_non_exhaustive()
    }
}

impl Pki {
    /// Generates a fresh CA and an admin client certificate (`O=system:masters`).
    pub fn generate() -> Result<Self, Error> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        ca_params.distinguished_name = name("cplb-testapi-ca", None);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

        let mut client_params = CertificateParams::new(Vec::<String>::new())?;
        client_params.distinguished_name = name("kubernetes-admin", Some("system:masters"));
        client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        client_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let client_key = KeyPair::generate()?;
        let client_cert = client_params.signed_by(&client_key, &ca)?;

        Ok(Self {
            ca,
            client_cert_pem: client_cert.pem(),
            client_key_pem: client_key.serialize_pem(),
        })
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// The admin client certificate, PEM.
    pub fn client_cert_pem(&self) -> &str {
        &self.client_cert_pem
    }

    /// The admin client private key, PEM (PKCS#8).
    pub fn client_key_pem(&self) -> &str {
        &self.client_key_pem
    }

    /// A client certificate signed by a *different* CA: a server must refuse it.
    pub fn foreign_client_identity() -> Result<(String, String), Error> {
        let other = Self::generate()?;
        Ok((other.client_cert_pem, other.client_key_pem))
    }

    /// A rustls server config for one listener: its certificate carries `ip`
    /// (and `localhost`, `kubernetes`) as SANs, like k0s's apiserver cert; a
    /// client certificate is verified against the CA when presented. Requests
    /// without one are answered 401 by the HTTP layer, as a real apiserver does.
    /// A wildcard listener (`0.0.0.0`, `::`) gets no SAN of its own, only
    /// `extra_sans`. Every call issues a new key pair, so each listener's
    /// certificate (and its fingerprint) is its own.
    pub(crate) fn server_config(
        &self,
        ip: IpAddr,
        extra_sans: &[IpAddr],
    ) -> Result<Arc<rustls::ServerConfig>, Error> {
        let mut sans: Vec<String> = Vec::new();
        for ip in std::iter::once(ip).chain(extra_sans.iter().copied()) {
            let ip_text = ip.to_string();
            if !ip.is_unspecified() && !sans.contains(&ip_text) {
                sans.push(ip_text);
            }
        }
        sans.extend(
            ["localhost", "kubernetes", "kubernetes.default.svc"]
                .into_iter()
                .map(str::to_owned),
        );
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name = name("kube-apiserver", None);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.ca)?;

        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone())?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .allow_unauthenticated()
                .build()
                .map_err(|e| Error::Tls(e.to_string()))?;
        let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone(), self.ca.der().clone()];
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key_der)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

fn name(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    if let Some(org) = organization {
        dn.push(DnType::OrganizationName, org);
    }
    dn
}
