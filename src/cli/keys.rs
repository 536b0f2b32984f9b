//! `qpack keys …`.

use crate::keys::PublisherKey;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Subcommand, Debug)]
pub enum KeysCommand {
    /// Make a release-signing key: writes the secret key (mode 0600) and prints the public key.
    Publisher {
        /// Secret key file to create.
        #[arg(long, default_value = "publisher.key")]
        out: PathBuf,
    },
    /// Make the cluster's certificate authority: DIR/ca.pem (give it to every node) and DIR/ca.key (0600).
    Ca {
        /// Directory to write into.
        #[arg(long, default_value = "ca")]
        out: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue a certificate of the cluster CA for a node or an operator: OUT/NAME.pem and OUT/NAME.key (0600).
    Issue {
        /// The node or operator name (a node's must match its name in the cluster file).
        name: String,
        /// What the certificate may do: a node exchanges data; an operator may also order stage/switch/rollback.
        #[arg(long, value_enum)]
        role: crate::net::Role,
        /// The CA directory (made by `qpack keys ca`).
        #[arg(long, default_value = "ca")]
        ca: PathBuf,
        /// Directory to write into.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
}

pub fn run(c: KeysCommand) -> anyhow::Result<ExitCode> {
    match c {
        KeysCommand::Publisher { out } => {
            let key = PublisherKey::generate()?;
            key.write_new(&out)?;
            println!("{}", key.public_line());
            eprintln!(
                "secret key written to {} (keep it private; publish with --key {})",
                out.display(),
                out.display()
            );
        }
        KeysCommand::Ca { out, days } => {
            crate::net::tls::make_ca(&out, days)?;
            println!("{}", out.join("ca.pem").display());
            eprintln!("cluster CA written to {} (ca.key stays private: it issues certificates)", out.display());
        }
        KeysCommand::Issue { name, role, ca, out, days } => {
            let (cert, key) = crate::net::tls::issue(&ca, &name, role, &out, days)?;
            println!("{}\n{}", cert.display(), key.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
