//! How a command ended when it did not fail, and its exit status. With
//! [`AppError`](crate::error::AppError) (exit 2) these are all of `iosvctl`'s exit codes,
//! listed for users in `iosvctl --help` ([`crate::cli`]) and the README.

/// How a command ended, when it did not fail. When several apply, the one with the
/// highest [`Outcome::exit_code`] other than 1 wins over 1: an unclean audit over lost
/// records over violations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing at or above `--fail-on` (exit 0).
    Clean,
    /// A violation at or above `--fail-on` (exit 1).
    Violations,
    /// Violation records were lost to journal overflow: the results are incomplete,
    /// whatever they say (exit 3).
    RecordsLost,
    /// `lab`: the audit found iosv's reports or live table differ from what the run did
    /// (exit 4).
    AuditUnclean,
    /// `run`: driver code crashed or bug-checked (exit 5).
    DriverCrashed,
    /// `run`: the driver called a routine the host does not implement (exit 6).
    Unimplemented,
    /// `run`: a driver routine did not return within the watchdog's time (exit 7).
    DriverHung,
    /// `run` (and `lab` with an image): the image could not be loaded, or its
    /// DriverEntry failed (exit 8).
    LoadFailed,
}

impl Outcome {
    /// The process exit status.
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Clean => 0,
            Outcome::Violations => 1,
            Outcome::RecordsLost => 3,
            Outcome::AuditUnclean => 4,
            Outcome::DriverCrashed => 5,
            Outcome::Unimplemented => 6,
            Outcome::DriverHung => 7,
            Outcome::LoadFailed => 8,
        }
    }
}
