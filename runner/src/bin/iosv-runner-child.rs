//! The child process of `iosv_runner::parent::start` for this crate's own tests (iosvctl
//! re-executes itself instead): `iosv-runner-child __iosv-run-child SOCKET IMAGE ...`.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.split_first() {
        #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
        Some((first, rest)) if first == iosv_runner::CHILD_ARG => {
            std::process::exit(iosv_runner::child::main(rest))
        }
        _ => {
            eprintln!("iosv-runner-child: internal helper of iosvctl run; not for direct use");
            std::process::exit(2)
        }
    }
}
