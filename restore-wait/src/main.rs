use std::process::ExitCode;

fn main() -> ExitCode {
    let opts = match restore_wait::Options::parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(restore_wait::EXIT_USAGE as u8);
        }
    };
    let outcome = restore_wait::wait(&opts, std::thread::sleep);
    if outcome.code == restore_wait::EXIT_DONE {
        println!("{}", outcome.message);
    } else {
        eprintln!("{}", outcome.message);
        restore_wait::write_termination_log(&opts.termination_log, &outcome.message);
    }
    ExitCode::from(outcome.code as u8)
}
