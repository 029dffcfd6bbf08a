//! Certificates for an ha group (rcgen): a CA, and per member a certificate
//! naming it `member-<id>` for mutual TLS between members and TLS on its
//! client API. `scripts/gen-certs` wraps it.
//!
//! ```text
//! ha-certs ca --out certs/                      # certs/ca.pem, certs/ca.key
//! ha-certs member --ca certs/ --id 1 --name 10.0.0.1 --name node1.example --out certs/
//! ha-certs client --ca certs/ --name ops --out certs/
//! ```
//!
//! Keep `ca.key` off the members; give each member `ca.pem` and its own
//! `member-<id>.pem` / `member-<id>.key`. To rotate, issue new member
//! certificates and overwrite the files: members re-read them at the next
//! connection, no restart.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ha_examples::certs::{Ca, CertError, Validity, write_atomically};

#[derive(Parser)]
#[command(
    name = "ha-certs",
    about = "Certificates for an ha group (CA, members, clients)."
)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// A new CA: `<out>/ca.pem` and `<out>/ca.key` (refuses to overwrite).
    Ca {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "ha group CA")]
        name: String,
    },
    /// A member's certificate: `<out>/member-<id>.pem` and `.key`.
    Member {
        /// The directory holding `ca.pem` and `ca.key`.
        #[arg(long)]
        ca: PathBuf,
        /// The member id.
        #[arg(long)]
        id: u64,
        /// Host names and IP addresses its client API is reached by.
        #[arg(long)]
        name: Vec<String>,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// A client certificate: `<out>/client-<name>.pem` (certificate and
    /// key in one file, as `RemoteKvBuilder::tls_identity_pem` takes it).
    Client {
        /// The directory holding `ca.pem` and `ca.key`.
        #[arg(long)]
        ca: PathBuf,
        /// The client's name.
        #[arg(long)]
        name: String,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
}

fn read(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|source| CertError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn load_ca(dir: &Path) -> Result<Ca, CertError> {
    Ca::from_pem(&read(&dir.join("ca.pem"))?, &read(&dir.join("ca.key"))?)
}

fn mkdir(dir: &Path) -> Result<(), CertError> {
    std::fs::create_dir_all(dir).map_err(|source| CertError::Io {
        path: dir.to_path_buf(),
        source,
    })
}

fn run(args: Args) -> Result<(), CertError> {
    match args.command {
        Cmd::Ca { out, name } => {
            mkdir(&out)?;
            let key = out.join("ca.key");
            if key.exists() {
                return Err(CertError::Io {
                    path: key,
                    source: std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "a CA is already there; remove it to make a new one",
                    ),
                });
            }
            let ca = Ca::new(&name)?;
            write_atomically(&out.join("ca.pem"), &ca.cert_pem())?;
            write_atomically(&key, &ca.key_pem())?;
            println!("{}", out.join("ca.pem").display());
        }
        Cmd::Member { ca, id, name, out } => {
            mkdir(&out)?;
            let issued = load_ca(&ca)?.issue_member(id, &name)?;
            let cert = out.join(format!("member-{id}.pem"));
            write_atomically(&cert, &issued.cert)?;
            write_atomically(&out.join(format!("member-{id}.key")), &issued.key)?;
            println!("{}", cert.display());
        }
        Cmd::Client { ca, name, out } => {
            mkdir(&out)?;
            let issued = load_ca(&ca)?.issue(std::slice::from_ref(&name), Validity::Default)?;
            let path = out.join(format!("client-{name}.pem"));
            write_atomically(&path, &format!("{}{}", issued.cert, issued.key))?;
            println!("{}", path.display());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ha-certs: {e}");
            ExitCode::FAILURE
        }
    }
}
