//! Helpers shared by the CA integration tests: a server process that is
//! killed on drop, the openssl CLI, the sigmux binary, and a small PKI made
//! by openssl (a CA and leaf certificates with a given subjectAltName).
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Output};

pub struct ServerProcess(pub Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn run(dir: &Path, prog: &str, args: &[&str]) -> Output {
    Command::new(prog)
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

pub fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = run(dir, "openssl", args);
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

pub fn sigmux(dir: &Path, args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_sigmux"))
        .current_dir(dir)
        .args(["--config", "sigmux.toml"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sigmux {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn ec_key(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            name,
        ],
    );
}

/// A self-signed CA `name.pem`/`name.key`.
pub fn ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-subj",
            &format!("/CN={name}"),
            "-days",
            "2",
            "-out",
            &format!("{name}.pem"),
        ],
    );
}

/// A leaf `name.pem`/`name.key` signed by `ca` with the given SAN.
pub fn leaf(dir: &Path, ca: &str, name: &str, san: &str) {
    ec_key(dir, &format!("{name}.key"));
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-key",
            &format!("{name}.key"),
            "-subj",
            &format!("/CN={name}"),
            "-out",
            &format!("{name}.csr"),
        ],
    );
    std::fs::write(
        dir.join(format!("{name}.ext")),
        format!("subjectAltName={san}\n"),
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.pem"),
        ],
    );
}
