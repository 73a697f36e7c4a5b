//! `hoard`: back up and restore directories into restic-format repositories.

fn main() {
    std::process::exit(hoard_cli::main());
}
