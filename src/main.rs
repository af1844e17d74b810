//! The `portcullis` command: run, check, demo (with the `demo` feature).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

// The system's malloc by default: at 256 connections it keeps the resident set under
// 30 MiB, where mimalloc needs ~12 MiB more for ~7% more requests per second
// (benches/RESULTS.md); `--features mimalloc` chooses the other side of that trade.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
#[cfg(feature = "demo")]
mod demo;

use portcullis::config::Config;
use portcullis::telemetry::{self, LogFormat};

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "An authenticating reverse proxy (OAuth 2.0 / OpenID Connect)"
)]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, global = true, default_value = "pretty")]
    log_format: LogFormat,
    /// Config file (for `run`, the default command).
    #[arg(long, short, global = true, default_value = "portcullis.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default).
    Run,
    /// Validate a config file and exit: 0 when valid, 1 with the problems otherwise.
    Check,
    /// Try it: a development OpenID provider, a sample app and the proxy, on 127.0.0.1.
    #[cfg(feature = "demo")]
    Demo {
        /// The proxy's port.
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Address to bind (the demo's logins are public: keep it on loopback).
        #[arg(long, default_value = "127.0.0.1")]
        bind: std::net::IpAddr,
        /// Print the generated config and exit.
        #[arg(long)]
        print_config: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One crypto library for everything TLS and JWT: aws-lc-rs.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // jsonwebtoken on aws-lc-rs, with parsed keys kept between verifications.
    portcullis::token::install_jwt_crypto_provider();
    match cli.command.unwrap_or(Command::Run) {
        Command::Check => match Config::load(&cli.config) {
            Ok(c) => {
                println!(
                    "{}: OK ({} route(s), {} upstream(s))",
                    cli.config.display(),
                    c.routes.len(),
                    c.upstreams.len()
                );
                for w in c.warnings() {
                    println!("  warning: {w}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: invalid configuration:", cli.config.display());
                for err in &e.0 {
                    eprintln!("  {err}");
                }
                ExitCode::FAILURE
            }
        },
        #[cfg(feature = "demo")]
        Command::Demo {
            port,
            bind,
            print_config,
        } => {
            if !print_config {
                telemetry::init(cli.log_format);
            }
            let ran = demo::run(demo::DemoOptions {
                port,
                bind,
                print_config,
            });
            telemetry::writer::flush();
            match ran {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("portcullis demo: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run => {
            telemetry::init(cli.log_format);
            let config = match Config::load(&cli.config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{}: invalid configuration:", cli.config.display());
                    for err in &e.0 {
                        eprintln!("  {err}");
                    }
                    return ExitCode::FAILURE;
                }
            };
            let ran = portcullis::app::run(config, Some(cli.config.clone()));
            telemetry::writer::flush();
            match ran {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("portcullis: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
