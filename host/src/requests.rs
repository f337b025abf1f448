//! The control requests the host makes of its own verifier: the scenario runner changes
//! the configuration (targets, actions, containment), clears, attaches and detaches.
//!
//! They go through [`iosv::control::control`], the same entry point (and the same
//! validation) as the device's dispatch routine, because that is how these changes reach
//! iosv.sys in the kernel: the engine has no other way to change its configuration, and a
//! scenario's refused change must fail exactly as a client's would. They are not a client:
//! the typed client is `iosv_client::Client` (which depends on this crate, so the host
//! cannot use it), and tests drive the host through it over its in-process transport.
//! What the host only *reads* of its own verifier (the audit) it reads from the engine
//! directly ([`audit`](crate::audit)).

use crate::{Host, HostError};
use iosv::protocol::{
    AttachReply, ClearRequest, ConfigBlock, DriverNameRequest, GetConfigRequest, Status,
    IOCTL_ATTACH, IOCTL_CLEAR, IOCTL_DETACH, IOCTL_GET_CONFIG, IOCTL_SET_CONFIG, PROTOCOL_VERSION,
};
use std::string::String;
use zerocopy::{FromBytes, IntoBytes};

/// Sends request `code` with `input`, the reply into `output`.
fn request(host: &Host, code: u32, input: &[u8], output: &mut [u8]) -> Result<(), HostError> {
    match host.control(code, input, output).status {
        Status::Success => Ok(()),
        s => Err(HostError::Control(s)),
    }
}

/// Reads the configuration (GET_CONFIG), lets `edit` change it, and writes it back
/// (SET_CONFIG).
pub(crate) fn configure(host: &Host, edit: impl FnOnce(&mut ConfigBlock)) -> Result<(), HostError> {
    let req = GetConfigRequest {
        version: PROTOCOL_VERSION,
        reserved: 0,
    };
    let mut block = ConfigBlock::default();
    request(host, IOCTL_GET_CONFIG, req.as_bytes(), block.as_mut_bytes())?;
    edit(&mut block);
    request(host, IOCTL_SET_CONFIG, block.as_bytes(), &mut [])
}

/// Adds `name` to the drivers iosv hooks when they load.
pub(crate) fn add_target(host: &Host, name: &str) -> Result<(), HostError> {
    let mut full = false;
    configure(host, |b| {
        let wire = iosv::protocol::wire_name(name.as_bytes());
        let n = b.target_count as usize;
        let present =
            b.targets.iter().take(n).any(|t| {
                iosv::drivers::names_equal(iosv::protocol::name_bytes(t), name.as_bytes())
            });
        if !present {
            match b.targets.get_mut(n) {
                Some(slot) => {
                    *slot = wire;
                    b.target_count = b.target_count.saturating_add(1);
                }
                None => full = true,
            }
        }
    })?;
    if full {
        return Err(HostError::TargetsFull(String::from(name)));
    }
    Ok(())
}

/// CLEAR with `what` (`CLR_*` bits).
pub(crate) fn clear(host: &Host, what: u32) -> Result<(), HostError> {
    let req = ClearRequest {
        version: PROTOCOL_VERSION,
        what,
    };
    request(host, IOCTL_CLEAR, req.as_bytes(), &mut [])
}

impl Host {
    /// IOCTL_ATTACH for `name`, through the control endpoint. Returns the slots hooked.
    pub fn attach(&self, name: &str) -> Result<u32, HostError> {
        self.attach_request(IOCTL_ATTACH, name)
    }

    /// IOCTL_DETACH for `name`, through the control endpoint. Returns the slots restored.
    pub fn detach(&self, name: &str) -> Result<u32, HostError> {
        self.attach_request(IOCTL_DETACH, name)
    }

    /// IOCTL_ATTACH or IOCTL_DETACH (`code`) for `name`; the slots of the reply.
    fn attach_request(&self, code: u32, name: &str) -> Result<u32, HostError> {
        let req = DriverNameRequest {
            version: PROTOCOL_VERSION,
            reserved: 0,
            name: iosv::protocol::wire_name(name.as_bytes()),
        };
        let mut out = AttachReply::default();
        request(self, code, req.as_bytes(), out.as_mut_bytes())?;
        Ok(AttachReply::read_from_bytes(out.as_bytes()).map_or(0, |a| a.slots))
    }
}
