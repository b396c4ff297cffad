use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use stride::cli::{Cli, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // Before any thread starts: it sets environment variables.
    stride::engine::postgres::tls::isolate_trust_store();
    let cli = Cli::parse();
    init_logging(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::from(stride::error::exit::FAILED);
        }
    };
    match runtime.block_on(stride::commands::execute(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {}", stride::error::chain(&e));
            ExitCode::from(stride::error::exit_code(&e))
        }
    }
}

/// Log lines go to stderr. On a terminal the progress bar tells the story, so only
/// warnings show by default; elsewhere (cron, CI) each partition logs a line.
/// `RUST_LOG` overrides `-v` / `-q`.
fn init_logging(cli: &Cli) {
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (false, 0) if std::io::stderr().is_terminal() => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("warn,stride={level}")));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}
