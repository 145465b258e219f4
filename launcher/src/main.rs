//! `tessera`: the command-line front end. Thin glue over the library crates.

/// `eprintln!` that never panics: a launcher whose stderr was closed (its
/// reader went away) must still drain, stop its workers and exit.
macro_rules! note {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

mod bench_cmd;
mod cli;
mod device;
mod error_line;
mod generate_cmd;
mod launch;
mod load;
mod npy;
mod perplexity_cmd;
mod plan_cmd;
mod serve;
mod worker_cmd;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    let result = match cli.command {
        cli::Command::Generate(args) => generate_cmd::run(args),
        cli::Command::Perplexity(args) => perplexity_cmd::run(args),
        cli::Command::Bench(args) => bench_cmd::run(args),
        cli::Command::Launch(args) => launch::run(args),
        cli::Command::Plan(args) => plan_cmd::run(args),
        cli::Command::Worker(args) => worker_cmd::run(args),
    };
    if let Err(e) = result {
        // The whole context chain on one line: "loading X: file Y: reason".
        note!("error: {}", error_line::one_line(&e));
        std::process::exit(1);
    }
}
