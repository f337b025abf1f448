//! The control requests tests make of a [`Host`], through the typed client
//! ([`iosv_client::client::Client`]) over its in-process transport: the same requests, replies and
//! checks `iosvctl` uses. The client has no "add one target" or "read everything" call,
//! so those few compositions live here.

use iosv::protocol::{ConfigBlock, MappingRecord, StatsReply, ViolationRecord, MAX_TARGETS};
use iosv_client::client::{Client, ClientError, MappingFilter, VIOLATIONS_PER_CALL};
use iosv_client::transport::inproc::InProcess;
use iosv_host::Host;
use std::sync::Arc;

/// A client of `host` (HELLO said).
pub fn client(host: &Arc<Host>) -> Client<InProcess> {
    Client::connect(InProcess::new(Arc::clone(host))).expect("HELLO to the in-process host")
}

/// Reads the configuration, lets `edit` change it, and writes it back.
pub fn configure(host: &Arc<Host>, edit: impl FnOnce(&mut ConfigBlock)) -> Result<(), ClientError> {
    let mut c = client(host);
    let mut block = c.get_config()?;
    edit(&mut block);
    c.set_config(&block)
}

/// Adds `name` to the drivers iosv hooks when they load (if it is not one already).
pub fn add_target(host: &Arc<Host>, name: &str) -> Result<(), ClientError> {
    let mut full = false;
    configure(host, |b| {
        let n = b.target_count as usize;
        let present =
            b.targets.iter().take(n).any(|t| {
                iosv::drivers::names_equal(iosv::protocol::name_bytes(t), name.as_bytes())
            });
        if present {
            return;
        }
        match b.targets.get_mut(n) {
            Some(slot) => {
                *slot = iosv::protocol::wire_name(name.as_bytes());
                b.target_count += 1;
            }
            None => full = true,
        }
    })?;
    if full {
        return Err(ClientError::Invalid(format!(
            "at most {MAX_TARGETS} targets; no room for {name}"
        )));
    }
    Ok(())
}

/// The global counters (GET_STATS).
pub fn stats(host: &Arc<Host>) -> Result<StatsReply, ClientError> {
    Ok(client(host).stats()?.header)
}

/// Every violation record the journal still holds (READ_VIOLATIONS from cursor 0 to the
/// tail), and how many were lost to overflow on the way.
pub fn violations(host: &Arc<Host>) -> Result<(Vec<ViolationRecord>, u64), ClientError> {
    let mut c = client(host);
    let (mut records, mut lost, mut cursor) = (Vec::new(), 0u64, 0u64);
    loop {
        let mut batch = c.read_violations(cursor, VIOLATIONS_PER_CALL)?;
        lost += batch.lost;
        let empty = batch.records.is_empty();
        records.append(&mut batch.records);
        if empty && batch.next_cursor == cursor || batch.next_cursor >= batch.tail {
            return Ok((records, lost));
        }
        cursor = batch.next_cursor;
    }
}

/// Every live mapping iosv tracks (LIST_MAPPINGS over the whole table), and how many
/// entries were skipped because they changed under the walk.
pub fn mappings(host: &Arc<Host>) -> Result<(Vec<MappingRecord>, u64), ClientError> {
    let list = client(host).list_mappings(&MappingFilter::default())?;
    Ok((list.records, list.skipped))
}
