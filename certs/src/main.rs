//! `cuwire-certs`: issues the pool CA, the server certificate and tenant certificates.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cuwire-certs", version, about = "Issues the certificates of a cuwire pool")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the pool CA (DIR/ca.pem, DIR/ca.key) and the server certificate
    /// (DIR/server.pem, DIR/server.key).
    Init {
        /// Directory to write into (created if absent).
        dir: PathBuf,
        /// Host name or IP address clients use to reach the server (repeatable).
        #[arg(long = "name", value_name = "HOST_OR_IP", required = true, num_args = 1..)]
        names: Vec<String>,
        /// Replace an existing CA (certificates it signed stop being accepted).
        #[arg(long)]
        force: bool,
    },
    /// Issue the client certificate of a tenant (DIR/tenants/NAME.pem, .key),
    /// signed by DIR's CA.
    Tenant {
        /// Directory holding the CA.
        dir: PathBuf,
        /// Tenant name: letters, digits, '-', '_', '.'.
        name: String,
    },
    /// Re-issue the server certificate with new names, signed by DIR's CA.
    Server {
        dir: PathBuf,
        #[arg(long = "name", value_name = "HOST_OR_IP", required = true, num_args = 1..)]
        names: Vec<String>,
    },
    /// Create whatever is missing of the development setup (CA, server
    /// certificate for localhost/127.0.0.1/::1, tenant "dev").
    Dev { dir: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Init { dir, names, force } => if *force { cuwire_certs::init_force(dir, names) } else { cuwire_certs::init(dir, names) }
            .map(|()| {
                println!("wrote {}", cuwire_certs::ca_pem(dir).display());
                println!("wrote {}", cuwire_certs::ca_key(dir).display());
                println!("wrote {}", cuwire_certs::server_pem(dir).display());
                println!("wrote {}", cuwire_certs::server_key(dir).display());
            }),
        Command::Tenant { dir, name } => cuwire_certs::tenant(dir, name).map(|()| {
            println!("wrote {}", cuwire_certs::tenant_pem(dir, name).display());
            println!("wrote {}", cuwire_certs::tenant_key(dir, name).display());
        }),
        Command::Server { dir, names } => cuwire_certs::server(dir, names).map(|()| {
            println!("wrote {}", cuwire_certs::server_pem(dir).display());
            println!("wrote {}", cuwire_certs::server_key(dir).display());
        }),
        Command::Dev { dir } => cuwire_certs::ensure_dev(dir).map(|()| println!("development certificates ready in {}", dir.display())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cuwire-certs: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
