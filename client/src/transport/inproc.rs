//! A host in this very process: requests go straight to [`Host::control`], through the
//! same bytes the device and the socket carry. `iosvctl lab` reads its results this way.

use super::{CallResult, RawReply, Transport};
use iosv_host::Host;
use std::sync::Arc;

/// Transport over an in-process [`Host`].
#[derive(Clone)]
pub struct InProcess {
    host: Arc<Host>,
}

impl InProcess {
    /// A transport to `host`.
    pub fn new(host: Arc<Host>) -> InProcess {
        InProcess { host }
    }
}

impl Transport for InProcess {
    fn call(&mut self, code: u32, input: &[u8], output_capacity: usize) -> CallResult {
        let mut output = vec![0u8; output_capacity];
        let reply = self.host.control(code, input, &mut output);
        Ok(RawReply::from_control(reply, output))
    }

    fn describe(&self) -> String {
        "in-process host".to_string()
    }
}
