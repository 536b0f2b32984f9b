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
    }
    Ok(ExitCode::SUCCESS)
}
