//! Configuration: the sizes fixed at start ([`StartParams`]) and the settings that can
//! change at run time ([`Settings`]), which hook paths read with single relaxed loads.

#![forbid(unsafe_code)]

use crate::protocol::{
    ConfigBlock, CF_ALL, CF_CONTAINMENT, CF_VERIFIER_IRQL, MAX_TARGETS, NAME_LEN, PROTOCOL_VERSION,
};
use crate::rules::{Action, RuleId, RULE_COUNT};
use crate::sync::{AtomicU32, AtomicU8, Ordering};
use crate::table::MAX_STACK_DEPTH;

/// Sizes of the memory allocated once at start (from the service's registry parameters on
/// Windows, from the command line in the host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartParams {
    /// Live mappings the table can hold (default 64 Ki; 1 Mi works).
    pub capacity: usize,
    /// Violation records the journal holds (default 4096).
    pub journal_records: usize,
    /// Stack frames allocated per mapping and per record, 0..=16 (default 8).
    pub max_stack_depth: usize,
    /// Recent unmaps remembered for double-unmap detection (default 16 Ki).
    pub graveyard: usize,
    /// Untracked mapping bases remembered when the table is full (default 4096).
    pub untracked: usize,
    /// Region counters per cache class in the cache-conflict filter (default 16 Ki).
    pub conflict_buckets: usize,
}

impl Default for StartParams {
    fn default() -> Self {
        StartParams {
            capacity: 64 * 1024,
            journal_records: 4096,
            max_stack_depth: 8,
            graveyard: 16 * 1024,
            untracked: 4096,
            conflict_buckets: 16 * 1024,
        }
    }
}

/// One of the sizes in [`StartParams`], with the range iosv supports. The scenario's
/// `[host]` table, `iosvctl --capacity` and friends, and the driver's registry parameters
/// all check a size with [`SizeParam::check`], so a value is accepted or refused the same
/// way wherever it is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeParam {
    /// [`StartParams::capacity`].
    Capacity,
    /// [`StartParams::journal_records`].
    JournalRecords,
    /// [`StartParams::max_stack_depth`].
    MaxStackDepth,
    /// [`StartParams::graveyard`].
    Graveyard,
    /// [`StartParams::untracked`].
    Untracked,
    /// [`StartParams::conflict_buckets`].
    ConflictBuckets,
}

impl SizeParam {
    /// Every size, in [`StartParams`] field order.
    pub const ALL: [SizeParam; 6] = [
        SizeParam::Capacity,
        SizeParam::JournalRecords,
        SizeParam::MaxStackDepth,
        SizeParam::Graveyard,
        SizeParam::Untracked,
        SizeParam::ConflictBuckets,
    ];

    /// The key of the scenario's `[host]` table (`capacity`, `journal_records`, ...).
    pub const fn key(self) -> &'static str {
        match self {
            SizeParam::Capacity => "capacity",
            SizeParam::JournalRecords => "journal_records",
            SizeParam::MaxStackDepth => "max_stack_depth",
            SizeParam::Graveyard => "graveyard",
            SizeParam::Untracked => "untracked",
            SizeParam::ConflictBuckets => "conflict_buckets",
        }
    }

    /// The smallest and largest value iosv supports (both inclusive).
    pub const fn range(self) -> (usize, usize) {
        match self {
            SizeParam::Capacity => (16, 16 * 1024 * 1024),
            SizeParam::JournalRecords => (1, 1024 * 1024),
            SizeParam::MaxStackDepth => (0, MAX_STACK_DEPTH),
            SizeParam::Graveyard => (1, 1024 * 1024),
            SizeParam::Untracked => (16, 1024 * 1024),
            SizeParam::ConflictBuckets => (1, 1024 * 1024),
        }
    }

    /// `value` if it is in [`SizeParam::range`], else an error naming the range.
    pub fn check(self, value: u64) -> Result<usize, SizeError> {
        let (lo, hi) = self.range();
        match usize::try_from(value) {
            Ok(v) if v >= lo && v <= hi => Ok(v),
            _ => Err(SizeError { param: self, value }),
        }
    }

    /// `value` clamped into [`SizeParam::range`].
    pub fn clamp(self, value: usize) -> usize {
        let (lo, hi) = self.range();
        value.max(lo).min(hi)
    }
}

/// A size out of its supported range. Displays as `KEY must be between LO and HI, not V`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeError {
    /// The size.
    pub param: SizeParam,
    /// The value refused.
    pub value: u64,
}

impl core::fmt::Display for SizeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let (lo, hi) = self.param.range();
        write!(
            f,
            "{} must be between {lo} and {hi}, not {}",
            self.param.key(),
            self.value
        )
    }
}

impl StartParams {
    /// The value of one size.
    pub fn get(&self, p: SizeParam) -> usize {
        match p {
            SizeParam::Capacity => self.capacity,
            SizeParam::JournalRecords => self.journal_records,
            SizeParam::MaxStackDepth => self.max_stack_depth,
            SizeParam::Graveyard => self.graveyard,
            SizeParam::Untracked => self.untracked,
            SizeParam::ConflictBuckets => self.conflict_buckets,
        }
    }

    /// Sets one size (unchecked; see [`StartParams::validate`]).
    pub fn set(&mut self, p: SizeParam, value: usize) {
        match p {
            SizeParam::Capacity => self.capacity = value,
            SizeParam::JournalRecords => self.journal_records = value,
            SizeParam::MaxStackDepth => self.max_stack_depth = value,
            SizeParam::Graveyard => self.graveyard = value,
            SizeParam::Untracked => self.untracked = value,
            SizeParam::ConflictBuckets => self.conflict_buckets = value,
        }
    }

    /// The first size out of its supported range, if any.
    pub fn validate(&self) -> Result<(), SizeError> {
        for p in SizeParam::ALL {
            let v = u64::try_from(self.get(p)).unwrap_or(u64::MAX);
            p.check(v)?;
        }
        Ok(())
    }

    /// The parameters with every size clamped to what iosv supports (for sizes that come
    /// from where nobody can be told, such as the registry at boot).
    pub fn clamped(self) -> StartParams {
        let mut out = self;
        for p in SizeParam::ALL {
            out.set(p, p.clamp(self.get(p)));
        }
        out
    }
}

/// Run-time settings. Hook paths read them; SET_CONFIG writes them.
pub struct Settings {
    actions: [AtomicU8; RULE_COUNT],
    flags: AtomicU32,
    stack_depth: AtomicU32,
    max_stack_depth: u32,
}

/// Image names of the drivers to hook when they load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Targets {
    names: [[u8; NAME_LEN]; MAX_TARGETS],
    count: usize,
}

impl Targets {
    /// Adds a name; false if full or empty.
    pub fn add(&mut self, name: &[u8]) -> bool {
        if name.is_empty() || self.contains(name) {
            return !name.is_empty();
        }
        match self.names.get_mut(self.count) {
            Some(slot) => {
                *slot = crate::protocol::wire_name(name);
                self.count = self.count.saturating_add(1);
                true
            }
            None => false,
        }
    }

    /// True if no target is configured.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// True if `name` is a target (case-insensitive).
    pub fn contains(&self, name: &[u8]) -> bool {
        self.iter().any(|t| crate::drivers::names_equal(t, name))
    }

    /// The names.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.names
            .iter()
            .take(self.count)
            .map(crate::protocol::name_bytes)
    }
}

impl Settings {
    /// Defaults: every rule `report`, containment on, DDI IRQL ceiling, full stack depth.
    pub fn new(max_stack_depth: usize) -> Settings {
        let max = u32::try_from(max_stack_depth.min(MAX_STACK_DEPTH)).unwrap_or(0);
        Settings {
            actions: core::array::from_fn(|_| AtomicU8::new(Action::Report as u8)),
            flags: AtomicU32::new(CF_CONTAINMENT),
            stack_depth: AtomicU32::new(max),
            max_stack_depth: max,
        }
    }

    /// The action of `rule`.
    pub fn action(&self, rule: RuleId) -> Action {
        self.actions
            .get(rule.index())
            .and_then(|a| Action::from_u8(a.load(Ordering::Relaxed)))
            .unwrap_or(Action::Report)
    }

    /// Sets the action of `rule`.
    pub fn set_action(&self, rule: RuleId, action: Action) {
        if let Some(a) = self.actions.get(rule.index()) {
            a.store(action as u8, Ordering::Relaxed);
        }
    }

    /// True if unmap violations are contained.
    pub fn containment(&self) -> bool {
        self.flags.load(Ordering::Relaxed) & CF_CONTAINMENT != 0
    }

    /// True if the unmap ceiling is APC_LEVEL (Driver Verifier's), not DISPATCH_LEVEL.
    pub fn verifier_irql(&self) -> bool {
        self.flags.load(Ordering::Relaxed) & CF_VERIFIER_IRQL != 0
    }

    /// Frames captured per map and per violation now.
    pub fn stack_depth(&self) -> usize {
        self.stack_depth.load(Ordering::Relaxed) as usize
    }

    /// The settings as a wire block (targets filled in by the caller).
    pub fn to_block(&self, targets: &Targets) -> ConfigBlock {
        let mut b = ConfigBlock {
            version: PROTOCOL_VERSION,
            flags: self.flags.load(Ordering::Relaxed),
            stack_depth: self.stack_depth.load(Ordering::Relaxed),
            ..Default::default()
        };
        for (dst, rule) in b.actions.iter_mut().zip(RuleId::ALL) {
            *dst = self.action(rule) as u8;
        }
        for (dst, name) in b.targets.iter_mut().zip(targets.iter()) {
            *dst = crate::protocol::wire_name(name);
        }
        b.target_count = u32::try_from(targets.count).unwrap_or(0);
        b
    }

    /// Checks a wire block without applying it.
    pub fn validate(&self, b: &ConfigBlock) -> Result<Targets, ConfigError> {
        if b.flags & !CF_ALL != 0 {
            return Err(ConfigError::ReservedBits);
        }
        if b.stack_depth > self.max_stack_depth {
            return Err(ConfigError::StackDepth);
        }
        for (i, a) in b.actions.iter().enumerate() {
            if i >= RULE_COUNT {
                if *a != 0 {
                    return Err(ConfigError::ReservedBits);
                }
            } else if Action::from_u8(*a).is_none() {
                return Err(ConfigError::Action);
            }
        }
        let count = b.target_count as usize;
        if count > MAX_TARGETS {
            return Err(ConfigError::Targets);
        }
        let mut targets = Targets::default();
        for (i, name) in b.targets.iter().enumerate() {
            if i >= count {
                if name.iter().any(|c| *c != 0) {
                    return Err(ConfigError::ReservedBits);
                }
                continue;
            }
            let bytes = crate::protocol::name_bytes(name);
            let tail_clean = name
                .get(bytes.len()..)
                .is_some_and(|t| t.iter().all(|c| *c == 0));
            if bytes.is_empty() || !tail_clean || !bytes.iter().all(|c| c.is_ascii_graphic()) {
                return Err(ConfigError::Targets);
            }
            targets.add(bytes);
        }
        Ok(targets)
    }

    /// Applies a block that [`Settings::validate`] accepted.
    pub fn apply(&self, b: &ConfigBlock) {
        for (rule, a) in RuleId::ALL.iter().zip(b.actions.iter()) {
            if let Some(action) = Action::from_u8(*a) {
                self.set_action(*rule, action);
            }
        }
        self.flags.store(b.flags & CF_ALL, Ordering::Relaxed);
        self.stack_depth
            .store(b.stack_depth.min(self.max_stack_depth), Ordering::Relaxed);
    }
}

/// Why a configuration block was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigError {
    /// Undefined flag bits, action slots past the last rule, or target slots past
    /// `target_count` are not zero.
    ReservedBits,
    /// `stack_depth` exceeds what was allocated at start.
    StackDepth,
    /// An action value is not 0..=3.
    Action,
    /// A target name is empty, not printable ASCII, not NUL-padded, or too many.
    Targets,
}
