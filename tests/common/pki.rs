//! A throw-away certificate authority for TLS tests: a CA, a server
//! certificate for 127.0.0.1/localhost, a client certificate, written as
//! the PEM files ZooKeeper (`ssl.*.type=PEM`) and zkbridge read.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};

pub struct Pki {
    _dir: tempfile::TempDir,
    /// The CA's certificate.
    pub ca: PathBuf,
    /// The server's key followed by its certificate (ZooKeeper's keystore).
    pub server_keystore: PathBuf,
    pub client_cert: PathBuf,
    /// Mode 0600, as zkbridge requires of a key.
    pub client_key: PathBuf,
}

fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let dir = tempfile::Builder::new().prefix("zkbridge-test-pki").tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf = |cn: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
            params
                .subject_alt_names
                .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
            params.distinguished_name.push(DnType::CommonName, cn);
            let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
            (key.serialize_pem(), cert.pem())
        };
        let (server_key, server_cert) = leaf("zookeeper");
        let (client_key, client_cert) = leaf("zkbridge");
        let d = dir.path();
        let pki = Pki {
            ca: write(&d.join("ca.pem"), &ca.pem()),
            server_keystore: write(&d.join("server.pem"), &format!("{server_key}{server_cert}")),
            client_cert: write(&d.join("client.pem"), &client_cert),
            client_key: write(&d.join("client.key"), &client_key),
            _dir: dir,
        };
        std::fs::set_permissions(&pki.client_key, std::fs::Permissions::from_mode(0o600)).unwrap();
        pki
    }

    /// Server settings with this CA: mutual TLS when `mutual`.
    pub fn server(&self, mutual: bool) -> super::ServerTls {
        super::ServerTls {
            keystore: self.server_keystore.clone(),
            truststore: self.ca.clone(),
            client_auth: if mutual { "need" } else { "none" },
        }
    }
}
