//! The `payrail` command line. Errors become `anyhow` here, at the edge, and nowhere else; each
//! command is a file under `src/cli/`.

mod cli;

fn main() -> anyhow::Result<()> {
    cli::main()
}
