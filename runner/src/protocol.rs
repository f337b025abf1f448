//! The line protocol from the child (the simulated machine) to the parent, on the child's
//! standard output. One message per line, a keyword and its text:
//!
//! | line | meaning |
//! |---|---|
//! | `image NAME BASE SIZE` | the image is mapped at BASE (hex), SIZE bytes |
//! | `module NAME BASE SIZE` | another image is mapped (iosv's kernel component, `--verifier`): crash reports name offsets in it too |
//! | `enter ROUTINE` | the child is about to call driver routine ROUTINE (the watchdog restarts) |
//! | `note TEXT` | something the user should see (e.g. a failed IRP) |
//! | `audit TEXT` | the verifier's live table and the simulated Mm's ground truth differ, or the Mm was corrupted (one line per problem) |
//! | `leave` | the driver routine returned: no driver code runs until the next `enter` (the watchdog waits) |
//! | `wait TEXT` | the host waits for the driver between its routines (TEXT: for what, e.g. an IRP it returned pending): the watchdog runs until `waited` |
//! | `waited` | that wait is over |
//! | `lab TEXT` | a scenario child's output line for the parent to print (opaque to the runner) |
//! | `lab+ TEXT` | the first pieces of a `lab` line longer than [`LAB_PIECE`] bytes: the parent joins them with the `lab` line that ends it |
//! | `fail TEXT` | a scenario child's scenario failed (a step failed); TEXT says where and why |
//! | `ready` | the run is complete and the verifier serves its control codes on the socket |
//! | `crash TEXT` | driver code faulted; TEXT says signal, address, module+offset |
//! | `unimplemented TEXT` | the driver called a routine the host lacks; TEXT names it |
//! | `loadfail TEXT` | the image could not be loaded |
//! | `entryfail STATUS` | the image's DriverEntry failed with STATUS (hex): the child goes on to `ready` and serves the reports collected so far (a scenario child stops its scenario at the `load` step); the run then ends with exit 8 |
//!
//! The child's standard input stays open while the parent reads reports; the child exits
//! when it closes.

/// The longest piece of a `lab` line the child sends in one protocol line (within the
/// parent's line bound, `parent::MAX_LINE`); a longer `lab` line goes as `lab+` pieces.
pub const LAB_PIECE: usize = 8 * 1024;

/// A message from the child, parsed from one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// `image NAME BASE SIZE`.
    Image {
        /// File name.
        name: String,
        /// Load address.
        base: u64,
        /// Bytes mapped.
        size: u64,
    },
    /// `module NAME BASE SIZE`.
    Module {
        /// File name.
        name: String,
        /// Load address.
        base: u64,
        /// Bytes mapped.
        size: u64,
    },
    /// `enter ROUTINE`.
    Enter(String),
    /// `leave`.
    Leave,
    /// `wait TEXT`.
    Wait(String),
    /// `waited`.
    Waited,
    /// `lab TEXT`.
    Lab(String),
    /// `lab+ TEXT`.
    LabMore(String),
    /// `fail TEXT`.
    Fail(String),
    /// `note TEXT`.
    Note(String),
    /// `audit TEXT`.
    Audit(String),
    /// `ready`.
    Ready,
    /// `crash TEXT`.
    Crash(String),
    /// `unimplemented TEXT`.
    Unimplemented(String),
    /// `loadfail TEXT`.
    LoadFail(String),
    /// `entryfail STATUS`: DriverEntry's NTSTATUS.
    EntryFail(u32),
}

impl Message {
    /// Parses one line (without its newline); `None` for an unknown keyword.
    #[must_use]
    pub fn parse(line: &str) -> Option<Self> {
        let (word, text) = line.split_once(' ').unwrap_or((line, ""));
        let text = text.to_string();
        Some(match word {
            "image" | "module" => {
                // From the right: the file name may contain spaces.
                let mut parts = text.rsplitn(3, ' ');
                let hex = |t: Option<&str>| {
                    t.and_then(|t| u64::from_str_radix(t.trim_start_matches("0x"), 16).ok())
                };
                let size = hex(parts.next())?;
                let base = hex(parts.next())?;
                let name = parts.next().filter(|n| !n.is_empty())?.to_string();
                if word == "image" {
                    Self::Image { name, base, size }
                } else {
                    Self::Module { name, base, size }
                }
            }
            "enter" => Self::Enter(text),
            "leave" => Self::Leave,
            "wait" => Self::Wait(text),
            "waited" => Self::Waited,
            "lab" => Self::Lab(text),
            "lab+" => Self::LabMore(text),
            "fail" => Self::Fail(text),
            "note" => Self::Note(text),
            "ready" => Self::Ready,
            "audit" => Self::Audit(text),
            "crash" => Self::Crash(text),
            "unimplemented" => Self::Unimplemented(text),
            "loadfail" => Self::LoadFail(text),
            "entryfail" => {
                Self::EntryFail(u32::from_str_radix(text.trim().trim_start_matches("0x"), 16).ok()?)
            }
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Message;

    #[test]
    fn lines_parse() {
        assert_eq!(
            Message::parse("enter DriverEntry"),
            Some(Message::Enter("DriverEntry".into()))
        );
        assert_eq!(Message::parse("ready"), Some(Message::Ready));
        assert_eq!(Message::parse("leave"), Some(Message::Leave));
        assert_eq!(
            Message::parse("wait an IRP"),
            Some(Message::Wait("an IRP".into()))
        );
        assert_eq!(Message::parse("waited"), Some(Message::Waited));
        assert_eq!(
            Message::parse("lab out {\"kind\":\"lab\"}"),
            Some(Message::Lab("out {\"kind\":\"lab\"}".into()))
        );
        assert_eq!(
            Message::parse("lab+ out {\"ki"),
            Some(Message::LabMore("out {\"ki".into()))
        );
        assert_eq!(
            Message::parse("lab out "),
            Some(Message::Lab("out ".into()))
        );
        assert_eq!(
            Message::parse("fail x.toml:3:1: step `stop` failed"),
            Some(Message::Fail("x.toml:3:1: step `stop` failed".into()))
        );
        assert_eq!(
            Message::parse("crash SIGSEGV at x"),
            Some(Message::Crash("SIGSEGV at x".into()))
        );
        assert_eq!(Message::parse("bogus 1"), None);
        assert_eq!(
            Message::parse("entryfail 0xc0000182"),
            Some(Message::EntryFail(0xC000_0182))
        );
        assert_eq!(Message::parse("entryfail nonsense"), None);
        assert_eq!(
            Message::parse("module iosv.sys 0x180000000 0x29000"),
            Some(Message::Module {
                name: "iosv.sys".into(),
                base: 0x1_8000_0000,
                size: 0x29000
            })
        );
        assert_eq!(
            Message::parse("image a.sys 0x140000000 0x8000"),
            Some(Message::Image {
                name: "a.sys".into(),
                base: 0x1_4000_0000,
                size: 0x8000
            })
        );
        assert_eq!(Message::parse("image a.sys zz 1"), None);
        assert_eq!(Message::parse("image 0x1 0x2"), None);
        assert_eq!(
            Message::parse("image my driver.sys 0x1000 0x2000"),
            Some(Message::Image {
                name: "my driver.sys".into(),
                base: 0x1000,
                size: 0x2000
            })
        );
    }
}
