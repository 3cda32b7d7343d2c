//! `weir`: run WebAssembly stream-processing pipelines on an embedded durable queue.

mod api;
mod bench;
mod build;
mod console;
mod consume;
mod dlq;
mod live;
mod metrics;
mod new;
mod pipeline_test;
mod produce;
mod run;
mod sampler;
mod topics;
mod watch;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Messages are allocated on one thread (a source, a stage's outputs) and
/// freed on another (the next stage, the sink); glibc's allocator handles
/// that pattern poorly (a fifth of a pipeline's time went to malloc/free).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// No transparent huge pages for weir's heap. mimalloc asks for them on
/// its arenas, and on a kernel in `madvise` mode each page it takes
/// back from the OS after a purge was then a 2 MiB page zeroed in one
/// fault: 5–8 % of a pipeline's CPU went to the kernel's `clear_page`
/// (mimalloc's own remedy, `MIMALLOC_ALLOW_THP=0`, does the same).
fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl with PR_SET_THP_DISABLE takes no pointers; it only
    // sets a flag on this process.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// Run WebAssembly stream-processing pipelines on an embedded durable queue.
#[derive(Parser)]
#[command(name = "weir", version, about, propagate_version = true)]
struct Cli {
    /// Data directory of the embedded queue [default: the pipeline's
    /// `data_dir`, else ./.weir]
    #[arg(long, global = true, env = "WEIR_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline.
    Run(run::RunArgs),
    /// Run a pipeline over given input in a scratch data directory and
    /// compare its outputs and dead letters with the expected ones.
    Test(pipeline_test::TestArgs),
    /// Check a pipeline file and every component it names.
    Validate(run::ValidateArgs),
    /// Publish lines from standard input to a topic, one message per line.
    Produce(produce::ProduceArgs),
    /// Print messages of a topic.
    Consume(consume::ConsumeArgs),
    /// Serve the data directory's queue over HTTP for other processes and
    /// languages (see docs/openapi.json).
    Serve(api::ListenArgs),
    /// Dead letters: list them, show one, redrive them once their cause is fixed.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// Make tokens for `weir serve --auth` / `weir run --auth`.
    #[command(subcommand)]
    Token(api::auth::TokenCommand),
    /// List, create and describe topics.
    #[command(subcommand)]
    Topics(topics::TopicsCommand),
    /// Benchmarks: a pipeline fed by a generator (`weir bench PIPELINE.toml`),
    /// or figures and ratios against a baseline measured in the same run.
    Bench(bench::BenchArgs),
    /// Build a stage project (Rust, Python or JavaScript) into a component, installing
    /// its toolchain into weir's cache folder the first time.
    Build(build::BuildArgs),
    /// Start a stage project (Rust, Python or JavaScript) from a template: the stage, a
    /// unit test, a pipeline that uses it and a README.
    New(new::NewArgs),
}

/// The data directory: `--data-dir`/`WEIR_DATA_DIR`, else the pipeline's, else `./.weir`.
pub(crate) fn data_dir(flag: Option<PathBuf>, pipeline: Option<&PathBuf>) -> PathBuf {
    flag.or_else(|| pipeline.cloned()).unwrap_or_else(|| PathBuf::from(".weir"))
}

/// An error that has already been printed in full; exit with this code.
#[derive(Debug)]
pub(crate) struct Reported(pub u8);

impl std::fmt::Display for Reported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}", self.0)
    }
}

impl std::error::Error for Reported {}

fn main() -> ExitCode {
    no_huge_pages();
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,weir=info,weir_engine=info,weir_queue=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(live::LogWriter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();

    let result = match cli.command {
        Command::Run(args) => run::run(args, cli.data_dir),
        Command::Test(args) => pipeline_test::test(args),
        Command::Validate(args) => run::validate(args),
        Command::Produce(args) => produce::produce(args, data_dir(cli.data_dir, None)),
        Command::Consume(args) => consume::consume(args, data_dir(cli.data_dir, None)),
        Command::Serve(args) => api::serve(args, data_dir(cli.data_dir, None)),
        Command::Dlq(cmd) => dlq::dlq(cmd, data_dir(cli.data_dir, None)),
        Command::Token(cmd) => api::auth::token_command(cmd),
        Command::Topics(cmd) => topics::topics(cmd, data_dir(cli.data_dir, None)),
        Command::Bench(cmd) => bench::bench(cmd),
        Command::Build(args) => build::build(args),
        Command::New(args) => new::new(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(Reported(code)) = e.downcast_ref::<Reported>() {
                return ExitCode::from(*code);
            }
            if is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            let _ = writeln!(std::io::stderr(), "error: {}", chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, `outer: inner: ...`. A cause that an error
/// already prints in its own message (as some libraries do) is not repeated.
fn chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

/// A closed stdout (e.g. `weir consume ... | head`) is not an error.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().filter_map(|c| c.downcast_ref::<std::io::Error>()).any(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}

#[cfg(test)]
mod tests {
    use super::chain;

    #[test]
    fn an_error_chain_prints_each_cause_once() {
        let io = std::io::Error::other("Connection refused");
        let e = anyhow::Error::new(io).context("IO error: Connection refused").context("NATS: connecting to x");
        assert_eq!(chain(&e), "NATS: connecting to x: IO error: Connection refused");
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(chain(&e), "outer: inner");
    }
}
