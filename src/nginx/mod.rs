//! `graygate import-nginx FILE`: an nginx config in, graygate's YAML out.
//!
//! [`lexer`] and [`parse`] read nginx's grammar as nginx does (quotes, escapes, comments,
//! `include` with globs) with `FILE:LINE:COL` errors; [`import`] walks the tree with nginx's
//! inheritance and names every directive it cannot carry over.

pub mod import;
pub mod lexer;
pub mod parse;

use std::path::Path;
use std::process::ExitCode;

/// Prints the YAML on stdout and the notes on stderr. Exit 0: everything carried over (or
/// only tuning dropped); 2: some directive would behave differently; 1: unreadable input.
pub fn run(file: &Path) -> ExitCode {
    let tree = match parse::parse_file(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("graygate: {e}");
            return ExitCode::FAILURE;
        }
    };
    let imported = import::import(&tree);
    println!("# graygate config imported from {}", file.display());
    print!("{}", imported.yaml);
    for n in &imported.notes {
        eprintln!("graygate: {n}");
    }
    if imported.changes_behaviour() {
        eprintln!(
            "graygate: some directives were not translated and change behaviour (see above); exit 2"
        );
        return ExitCode::from(2);
    }
    ExitCode::SUCCESS
}
